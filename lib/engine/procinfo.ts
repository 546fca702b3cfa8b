/**
 * Which process opened a TCP connection to the gate: find the client socket in /proc/PID/net/tcp{,6}
 * of its network namespace (the engine's own first, or for a registered sandbox address last), take
 * its inode, and find the process holding `socket:[inode]` in /proc/PID/fd, searching the processes
 * of that namespace first, newest first.
 * The only thing kept between lookups is which namespace each live pid was in (so a lookup reads the
 * namespace links of new processes only); a stale entry (a reused pid) can only make a lookup miss,
 * which is then repeated with every link read afresh. The answer itself is never cached: the owner is
 * always a process whose descriptor is that socket at the time of the lookup.
 * Measured on the 2-vCPU, 24 GiB test host: ~0.3 ms for a client in a sandbox namespace with a TCP
 * hash of its own (lib/sandbox/netns.ts; the first lookup of an engine ~3-5 ms), ~2.5 ms when the
 * namespace shares the host's hash (each table read walks its 262,144 buckets: ~1.4 ms); for a client
 * in the engine's own namespace every host process is searched (~2-15 ms). Synchronous: the async
 * API is 20x slower through the threadpool. The gate looks each client connection up once, within a
 * time budget (lib/engine/engine.ts identify()).
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
  // in `tcp`, or in `tcp6` as ::ffff:a.b.c.d when it is a dual-stack socket. A table read walks the
  // namespace's connection hash: the host's (~1.4 ms on a 24 GiB host), which a namespace shares
  // unless it has one of its own (lib/sandbox/netns.ts gives sandboxes one); so `tcp6` is read only
  // when `tcp` does not have the socket
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
  const all = pids()
  const live = new Set(all)
  for (const pid of nsOfPid.keys()) if (!live.has(pid)) nsOfPid.delete(pid)
  // first with the namespaces remembered from earlier lookups (only new processes' are read), then,
  // if that misses (a pid reused by a process of another namespace), with every one read afresh; a
  // stale entry can only cause a miss, never a wrong answer: the owner is the process whose
  // descriptor really is that socket
  return lookup(search, all, elsewhere, false) ?? lookup(search, all, elsewhere, true)
}

/** pid -> its network namespace ("net:[inode]"), as last read; pruned to live pids at each lookup */
const nsOfPid = new Map<number, string>()

function nsLink(p: string): string {
  try {
    return fs.readlinkSync(p)
  } catch {
    return ''
  }
}

function lookup(search: (prefix: string) => number | null, all: number[], elsewhere: boolean, fresh: boolean): PeerProcess | null {
  const netnsOf = (pid: number) => {
    let n = fresh ? undefined : nsOfPid.get(pid)
    if (n === undefined) nsOfPid.set(pid, (n = nsLink(`/proc/${pid}/ns/net`)))
    return n
  }
  const self = nsLink('/proc/self/ns/net')
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
