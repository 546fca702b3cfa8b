/**
 * Which process opened a TCP connection to the gate: find the client socket in /proc/net/tcp{,6}
 * (of our own network namespace first, then of every other namespace visible through
 * /proc/PID/net), take its inode, and find the process holding `socket:[inode]` in /proc/PID/fd.
 * Nothing is cached: pids and inodes are reused, so a cache would name the wrong process.
 * Costs a walk of /proc (synchronous: ~1k fds take ~10-20 ms; the async API is 20x slower through
 * the threadpool), newest processes first; the gate does it only for decisions an operator looks
 * at (ask, deny) and rate-limits it.
 */
import fs from 'node:fs'
import { isIP } from 'node:net'
import { parseIP } from './ip.js'

export interface PeerProcess {
  pid: number
  binary: string | null
}

/** /proc/net/tcp address "0100007F:1F90" (little-endian words on x86/arm64) */
function hexAddr(addr: string, port: number, v6: boolean): string {
  const a = parseIP(addr)!
  const bytes = v6 ? a : a.subarray(12)
  let out = ''
  for (let w = 0; w < bytes.length; w += 4) {
    for (let i = 3; i >= 0; i--) out += bytes[w + i]!.toString(16).padStart(2, '0')
  }
  return `${out.toUpperCase()}:${port.toString(16).toUpperCase().padStart(4, '0')}`
}

function findInode(table: string, local: string, remote: string): number | null {
  const lines = table.split('\n')
  for (let i = 1; i < lines.length; i++) {
    const f = lines[i]!.trim().split(/\s+/)
    if (f.length < 10) continue
    if (f[1] === local && f[2] === remote) {
      const inode = Number(f[9])
      return inode > 0 ? inode : null
    }
  }
  return null
}

function tables(prefix: string): string[] {
  const out: string[] = []
  for (const t of ['tcp', 'tcp6']) {
    try {
      out.push(fs.readFileSync(`${prefix}/net/${t}`, 'utf8'))
    } catch {
      /* absent */
    }
  }
  return out
}

function pids(): number[] {
  const ents = fs.readdirSync('/proc')
  return ents
    .filter((e) => /^\d+$/.test(e))
    .map(Number)
    .sort((a, b) => b - a)
}

function ownerOf(inode: number, candidates: number[]): PeerProcess | null {
  const want = `socket:[${inode}]`
  for (const pid of candidates) {
    let fds: string[]
    try {
      fds = fs.readdirSync(`/proc/${pid}/fd`)
    } catch {
      continue
    }
    for (const fd of fds) {
      try {
        if (fs.readlinkSync(`/proc/${pid}/fd/${fd}`) === want) {
          let binary: string | null = null
          try {
            binary = fs.readlinkSync(`/proc/${pid}/exe`)
          } catch {
            /* exited or not ours to read */
          }
          return { pid, binary }
        }
      } catch {
        /* fd closed meanwhile */
      }
    }
  }
  return null
}

/**
 * clientAddr:clientPort is the peer of the gate's socket, gateAddr:gatePort its local side.
 */
export function findPeerProcess(
  clientAddr: string,
  clientPort: number,
  gateAddr: string,
  gatePort: number,
): PeerProcess | null {
  const ca = clientAddr.replace(/^::ffff:/, '')
  const ga = gateAddr.replace(/^::ffff:/, '')
  if (!isIP(ca) || !isIP(ga)) return null
  const keys: Array<[string, string]> = []
  if (isIP(ca) === 4) {
    keys.push([hexAddr(ca, clientPort, false), hexAddr(ga, gatePort, false)])
    // an IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d in tcp6
    keys.push([hexAddr(`::ffff:${ca}`, clientPort, true), hexAddr(`::ffff:${ga}`, gatePort, true)])
  } else keys.push([hexAddr(ca, clientPort, true), hexAddr(ga, gatePort, true)])
  const search = (ts: string[]) => {
    for (const t of ts) for (const [l, r] of keys) {
      const ino = findInode(t, l, r)
      if (ino) return ino
    }
    return null
  }
  const all = pids()
  let inode = search(tables('/proc/self'))
  if (!inode) {
    // the client may live in another network namespace (a sandbox): read each namespace's table once
    const ns = (p: string) => {
      try {
        return fs.readlinkSync(p)
      } catch {
        return ''
      }
    }
    const self = ns('/proc/self/ns/net')
    const seen = new Set<string>([self])
    for (const pid of all) {
      const n = ns(`/proc/${pid}/ns/net`)
      if (!n || seen.has(n)) continue
      seen.add(n)
      inode = search(tables(`/proc/${pid}`))
      if (inode) break
    }
  }
  if (!inode) return null
  return ownerOf(inode, all)
}
