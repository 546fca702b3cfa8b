/**
 * Which process opened a TCP connection to the gate: find the client socket in /proc/net/tcp{,6}
 * (of our own network namespace first, then of every other namespace visible through
 * /proc/PID/net), take its inode, and find the process holding `socket:[inode]` in /proc/PID/fd.
 * Nothing is cached: pids and inodes are reused, so a cache would name the wrong process.
 * Only the processes in the socket's network namespace are searched first, newest first: for a
 * client in a sandbox's namespace that is the sandbox's few processes (~0.1-0.3 ms); for a client in
 * the engine's own namespace it is every host process (synchronous: ~1k fds take ~3-20 ms; the async
 * API is 20x slower through the threadpool). The gate looks up each client connection once and
 * keeps a time budget for these walks (lib/engine/engine.ts identify()).
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
  // a busy host's table has thousands of lines (TIME_WAIT included): find the one entry by its
  // "local remote " text rather than splitting them all
  const at = table.indexOf(` ${local} ${remote} `)
  if (at < 0) return null
  const end = table.indexOf('\n', at)
  const f = table.slice(at, end < 0 ? undefined : end).trim().split(/\s+/)
  // local remote st tx:rx tr:when retrnsmt uid timeout inode
  const inode = f.length >= 9 ? Number(f[8]) : 0
  return inode > 0 ? inode : null
}

function table(prefix: string, name: 'tcp' | 'tcp6'): string {
  try {
    return fs.readFileSync(`${prefix}/net/${name}`, 'utf8')
  } catch {
    return '' // absent (no IPv6)
  }
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
  /** the client is known to live in another network namespace (a registered sandbox address): the
   * engine's own table is read last, not first */
  elsewhere = false,
): PeerProcess | null {
  const ca = clientAddr.replace(/^::ffff:/, '')
  const ga = gateAddr.replace(/^::ffff:/, '')
  if (!isIP(ca) || !isIP(ga)) return null
  // the client's socket: local = the client's address, remote = the gate's. An IPv4 client's socket is
  // in `tcp`, or in `tcp6` as ::ffff:a.b.c.d when it is a dual-stack socket; each table read walks
  // the kernel's whole (host-wide) connection hash, ~1-2 ms on a host with many sockets, so `tcp6` is
  // read only when `tcp` does not have it
  const keys: Array<['tcp' | 'tcp6', string, string]> = []
  if (isIP(ca) === 4) {
    keys.push(['tcp', hexAddr(ca, clientPort, false), hexAddr(ga, gatePort, false)])
    keys.push(['tcp6', hexAddr(`::ffff:${ca}`, clientPort, true), hexAddr(`::ffff:${ga}`, gatePort, true)])
  } else keys.push(['tcp6', hexAddr(ca, clientPort, true), hexAddr(ga, gatePort, true)])
  const search = (prefix: string) => {
    for (const [name, l, r] of keys) {
      const ino = findInode(table(prefix, name), l, r)
      if (ino) return ino
    }
    return null
  }
  const ns = (p: string) => {
    try {
      return fs.readlinkSync(p)
    } catch {
      return ''
    }
  }
  const all = pids()
  const self = ns('/proc/self/ns/net')
  const nsOf = new Map<number, string>()
  const netnsOf = (pid: number) => {
    let n = nsOf.get(pid)
    if (n === undefined) nsOf.set(pid, (n = ns(`/proc/${pid}/ns/net`)))
    return n
  }
  let where = self
  let inode = elsewhere ? null : search('/proc/self')
  if (!inode) {
    // the client may live in another network namespace (a sandbox): read each namespace's table once
    const seen = new Set<string>([self])
    for (const pid of all) {
      const n = netnsOf(pid)
      if (!n || seen.has(n)) continue
      seen.add(n)
      inode = search(`/proc/${pid}`)
      if (inode) {
        where = n
        break
      }
    }
  }
  if (!inode && elsewhere) inode = search('/proc/self') // a stale registration: the client is ours after all
  if (!inode) return null
  // almost always a process of the socket's network namespace holds it (one that changed namespace
  // after opening it, or was passed the descriptor, is looked for after): for a sandbox's socket
  // its few processes are searched first, not the host's
  const inNs = all.filter((pid) => netnsOf(pid) === where)
  return ownerOf(inode, inNs) ?? ownerOf(inode, all.filter((pid) => netnsOf(pid) !== where))
}
