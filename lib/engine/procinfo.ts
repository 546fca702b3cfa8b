/**
 * Which process opened a TCP connection to the gate: find the client's socket in its network
 * namespace (the engine's own first, or for a registered sandbox address last), take its inode, and
 * find the process holding `socket:[inode]` in /proc/PID/fd, searching the processes of that
 * namespace first, newest first.
 * The socket is asked of the kernel by its addresses (an exact NETLINK_SOCK_DIAG lookup,
 * lib/kernel/sockdiag.ts) where that works, else found in /proc/PID/net/tcp{,6}, whose read walks
 * the namespace's whole connection hash (see kernelLookup()).
 * Kept between lookups: which namespace each live pid was in (so a walk reads the namespace links
 * of new processes only), and per client address where its last connection was found (Hint), so a
 * program's next connection is looked for there first. Neither is ever the answer: a stale entry can
 * only make a lookup miss, which then walks /proc with every link read afresh, and the owner is
 * always a process whose descriptor is that socket at the time of the lookup.
 * Measured on the 2-vCPU, 24 GiB test host, in the gate's event loop, a client opening one
 * connection after another: ~0.18 ms per lookup from a sandbox namespace (~0.39 ms reading its
 * table instead; 0.7 ms before hints), ~0.2 ms from the engine's own namespace (~9 ms reading the
 * host's table); an engine's first lookup ~4 ms (it learns which process is in which namespace;
 * prepareLookups() loads the addon beforehand, or that adds ~10 ms).
 * Synchronous: the async fs API is 20x slower through the threadpool. The gate looks each client
 * connection up once, within a time budget (lib/engine/engine.ts identify()).
 */
import fs from 'node:fs'
import { isIP } from 'node:net'
import { parseIP } from './ip.js'
import { tcpSocketInode } from '../kernel/sockdiag.js'

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

/** the process holding `socket:[inode]`, and at which descriptor */
interface Owner extends PeerProcess {
  fd: string
}

function found(pid: number, fd: string): Owner {
  let binary: string | null = null
  try {
    binary = fs.readlinkSync(`/proc/${pid}/exe`)
  } catch {
    /* exited or not ours to read */
  }
  return { pid, binary, fd }
}

function holds(pid: number, fd: string, want: string): boolean {
  try {
    return fs.readlinkSync(`/proc/${pid}/fd/${fd}`) === want
  } catch {
    return false // closed meanwhile, or the process is gone
  }
}

function ownerOf(inode: number, candidates: number[]): Owner | null {
  const want = `socket:[${inode}]`
  for (const pid of candidates) {
    let fds: string[]
    try {
      fds = fs.readdirSync(`/proc/${pid}/fd`)
    } catch {
      continue
    }
    // newest descriptors first: a client's connection to the gate is usually one of its latest
    for (let i = fds.length - 1; i >= 0; i--) if (holds(pid, fds[i]!, want)) return found(pid, fds[i]!)
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
  // in `tcp`, or in `tcp6` as ::ffff:a.b.c.d when it is a dual-stack socket (the kernel's family-4
  // lookup finds both). A table read walks the namespace's connection hash: the host's (1.4-7 ms
  // measured on the 24 GiB host, depending on the day's VM), which a namespace shares
  // unless it has one of its own (lib/sandbox/netns.ts gives sandboxes one); so `tcp6` is read only
  // when `tcp` does not have the socket
  const fam = isIP(ca) as 4 | 6
  let keys: Array<['tcp' | 'tcp6', string, string]> | null = null
  const tableKeys = () => {
    if (keys) return keys
    keys = []
    if (fam === 4) {
      keys.push(['tcp', hexAddr(ca, clientPort, false), hexAddr(ga, gatePort, false)])
      keys.push(['tcp6', hexAddr(`::ffff:${ca}`, clientPort, true), hexAddr(`::ffff:${ga}`, gatePort, true)])
    } else keys.push(['tcp6', hexAddr(ca, clientPort, true), hexAddr(ga, gatePort, true)])
    return keys
  }
  // the kernel's exact lookup (kernelLookup()) where it works, else the tables; each process's
  // namespace is asked at most once per lookup (a hint that finds the socket but not its owner
  // leaves the walk below its answer: the host's table costs milliseconds)
  const client = { addr: addrBytes(ca, fam), port: clientPort }
  const gate = { addr: addrBytes(ga, fam), port: gatePort }
  const diag = fam === isIP(ga) && kernelLookup(fam, gate, client)
  const read = new Map<string, number | null>()
  const search = (prefix: string) => {
    let ino = read.get(prefix)
    if (ino !== undefined) return ino
    ino = null
    let asked = false
    if (diag) {
      try {
        ino = tcpSocketInode(prefix === '/proc/self' ? '' : `${prefix}/ns/net`, fam, client, gate) || null
        stats.kernel++
        asked = true
      } catch {
        /* that namespace cannot be entered from here: its tables instead */
      }
    }
    if (!asked) {
      stats.tables++
      for (const [name, l, r] of tableKeys()) if ((ino = findInode(table(prefix, name), l, r))) break
    }
    read.set(prefix, ino)
    return ino
  }
  // where this address's last connection was found: its namespace and its owner are tried first,
  // each checked afresh (see Hint)
  const hint = hints.get(ca)
  if (hint) {
    const hit = viaHint(hint, search)
    if (hit) {
      stats.hinted++
      return remember(ca, hit.where, hit.owner)
    }
  }
  stats.walked++
  const all = pids()
  const live = new Set(all)
  for (const pid of nsOfPid.keys()) if (!live.has(pid)) nsOfPid.delete(pid)
  // first with the namespaces remembered from earlier lookups (only new processes' are read), then,
  // if that misses (a pid reused by a process of another namespace), with every one read afresh; a
  // stale entry can only cause a miss, never a wrong answer: the owner is the process whose
  // descriptor really is that socket
  const r = lookup(search, all, elsewhere, false) ?? lookup(search, all, elsewhere, true)
  return r ? remember(ca, r.where, r.owner) : null
}

/**
 * Where a client address's last connection was found: the namespace ("net:[inode]"), a process in
 * it through which that namespace is asked (the owner itself when it is in that namespace), and the
 * owner and the descriptor that held the socket. A program that opens connection after connection
 * from one sandbox then costs one socket lookup and one or two readlinks, not a walk of /proc. Every
 * part is checked at use: the namespace is asked only if that process is still in it, and
 * the answer is a process whose descriptor is the new connection's socket at the time of the
 * lookup (a socket's inode is unique on the host), so a stale hint can only miss, and a miss falls
 * back to the full walk. At most MAX_HINTS addresses are remembered (oldest dropped first).
 */
interface Hint extends Where {
  owner: number
  fd: string
}

/** a network namespace ("net:[inode]") and a process through which it is asked ('self': ours) */
interface Where {
  ns: string
  nsPid: number | 'self'
}
const hints = new Map<string, Hint>()
const MAX_HINTS = 256

/**
 * How lookups were answered, for tests and benchmarks: by a hint or by a walk of /proc, and how
 * many namespaces were asked for the socket through the kernel's lookup and how many by their tables.
 */
export const stats = { hinted: 0, walked: 0, kernel: 0, tables: 0 }

function addrBytes(a: string, fam: 4 | 6): Uint8Array {
  const b = parseIP(a)!
  return fam === 4 ? b.subarray(12) : b
}

/**
 * Whether to find sockets by the kernel's exact lookup (NETLINK_SOCK_DIAG, lib/kernel/sockdiag.ts:
 * ~25 us in our own namespace, ~50 us in another, against ~0.15 ms for a sandbox's table and
 * milliseconds for the host's). The kernel says "no such socket" also when it has no inet_diag, so
 * the lookup is trusted only once it has found a socket this process holds: the gate's own side of
 * the connection being looked up. Until then each lookup asks that first and reads the tables if
 * the answer is no. An error in that first ask (no addon, an addon without the call) turns it off
 * for the process, as setKernelLookup(false) does; an error asking another namespace (a seccomp
 * filter refusing setns, a process gone) means that namespace's tables are read instead.
 */
let kernelState: 'untried' | 'works' | 'off' = 'untried'
function kernelLookup(fam: 4 | 6, gate: { addr: Uint8Array; port: number }, client: { addr: Uint8Array; port: number }): boolean {
  if (kernelState !== 'untried') return kernelState === 'works'
  try {
    if (tcpSocketInode('', fam, gate, client) > 0) kernelState = 'works'
  } catch {
    kernelState = 'off'
  }
  return kernelState === 'works'
}

/**
 * Load what the kernel's lookup needs (the addon) now, not inside the first client's request (~10 ms
 * on the test host). Failing here is not an error: lookups then read the tables.
 */
export function prepareLookups(): void {
  try {
    tcpSocketInode('', 4, { addr: new Uint8Array(4), port: 0 }, { addr: new Uint8Array(4), port: 0 })
  } catch {
    /* no addon, or no netlink here: the first lookup finds out again and reads the tables */
  }
}

/** tests and benchmarks: force the table reads (false), or go back to trying the kernel's lookup */
export function setKernelLookup(on: boolean): void {
  kernelState = on ? 'untried' : 'off'
}

function remember(addr: string, where: Where, owner: Owner): PeerProcess {
  hints.delete(addr)
  if (hints.size >= MAX_HINTS) hints.delete(hints.keys().next().value!)
  // the owner's own namespace link is the one to use next time when the owner lives in that namespace
  const nsPid = where.nsPid === 'self' || where.nsPid === owner.pid || nsLink(`/proc/${owner.pid}/ns/net`) !== where.ns ? where.nsPid : owner.pid
  hints.set(addr, { ns: where.ns, nsPid, owner: owner.pid, fd: owner.fd })
  return { pid: owner.pid, binary: owner.binary }
}

function viaHint(h: Hint, search: (prefix: string) => number | null): { where: Where; owner: Owner } | null {
  const prefix = h.nsPid === 'self' ? '/proc/self' : `/proc/${h.nsPid}`
  if (nsLink(`${prefix}/ns/net`) !== h.ns) return null // that process left the namespace, or is gone
  const inode = search(prefix)
  if (!inode) return null
  const want = `socket:[${inode}]`
  const owner = holds(h.owner, h.fd, want) ? found(h.owner, h.fd) : ownerOf(inode, [h.owner])
  return owner ? { where: { ns: h.ns, nsPid: h.nsPid }, owner } : null
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

function lookup(
  search: (prefix: string) => number | null,
  all: number[],
  elsewhere: boolean,
  fresh: boolean,
): { where: Where; owner: Owner } | null {
  const netnsOf = (pid: number) => {
    let n = fresh ? undefined : nsOfPid.get(pid)
    if (n === undefined) nsOfPid.set(pid, (n = nsLink(`/proc/${pid}/ns/net`)))
    return n
  }
  const self = nsLink('/proc/self/ns/net')
  let where: Where = { ns: self, nsPid: 'self' }
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
        where = { ns: n, nsPid: pid }
        break
      }
    }
  }
  if (!inode && elsewhere) inode = search('/proc/self') // a stale registration: the client is ours after all
  if (!inode) return null
  // almost always a process of the socket's network namespace holds it (one that changed namespace
  // after opening it, or was passed the descriptor, is looked for after): for a sandbox's socket
  // its few processes are searched first, not the host's
  const inNs = all.filter((pid) => netnsOf(pid) === where.ns)
  const owner = ownerOf(inode, inNs) ?? ownerOf(inode, all.filter((pid) => netnsOf(pid) !== where.ns))
  return owner ? { where, owner } : null
}
