/**
 * Client-process lookups answered by another process.
 *
 * A confined engine (its own Landlock domain, as `cordon up` runs it) may not read the /proc/PID/fd
 * and /proc/PID/ns links of a process outside its domain: the kernel treats those reads as ptrace
 * access, and Landlock refuses it. So it cannot name the process behind a client connection itself.
 * The supervisor, which is not confined, can: serveLookups() answers the same question
 * (findPeerProcess, lib/engine/procinfo.ts) on a unix socket only the engine is given, and the
 * engine asks through RemoteLookup (`cordon engine --identify-via SOCKET`).
 *
 * Protocol: one JSON object per line each way. The engine sends
 *   {"id":N,"client":"10.0.0.2","clientPort":41000,"gate":"169.254.77.1","gatePort":3128,"elsewhere":true}
 * and gets {"id":N,"pid":1234,"binary":"/usr/bin/curl"} or {"id":N,"pid":null}. The answer names only
 * a process whose descriptor is that very socket when the server looked (findPeerProcess); a
 * malformed or oversized line closes the connection. The engine bounds each wait (timeoutMs): a
 * late, missing or refused answer is an unknown client, never a held decision.
 */
import net from 'node:net'
import fs from 'node:fs'
import { isIP } from 'node:net'
import { findPeerProcess, prepareLookups, type PeerProcess } from './procinfo.js'

/** longest request line the server reads (a request is ~120 bytes) */
const MAX_LINE = 1024

export interface LookupQuery {
  client: string
  clientPort: number
  gate: string
  gatePort: number
  /** the client lives in another network namespace (a registered sandbox address) */
  elsewhere: boolean
}

function validQuery(q: unknown): q is LookupQuery & { id: number } {
  if (typeof q !== 'object' || q === null) return false
  const o = q as Record<string, unknown>
  const port = (p: unknown) => Number.isInteger(p) && (p as number) > 0 && (p as number) < 65536
  return (
    Number.isSafeInteger(o.id) &&
    typeof o.client === 'string' && isIP(o.client.replace(/^::ffff:/, '')) !== 0 &&
    typeof o.gate === 'string' && isIP(o.gate.replace(/^::ffff:/, '')) !== 0 &&
    port(o.clientPort) && port(o.gatePort) && typeof o.elsewhere === 'boolean'
  )
}

export interface LookupServer {
  path: string
  /** queries answered, with a process found or not */
  answered: { found: number; unknown: number }
  close(): Promise<void>
}

/**
 * Answer lookups on a unix socket at `path` (mode 0600; an old socket file there is replaced).
 * `find` is findPeerProcess unless a test supplies another.
 */
export async function serveLookups(path: string, find: (q: LookupQuery) => PeerProcess | null = defaultFind): Promise<LookupServer> {
  prepareLookups()
  try {
    fs.unlinkSync(path)
  } catch {
    /* none */
  }
  const answered = { found: 0, unknown: 0 }
  const conns = new Set<net.Socket>()
  const server = net.createServer((s) => {
    conns.add(s)
    s.once('close', () => conns.delete(s))
    s.on('error', () => s.destroy())
    onLines(s, MAX_LINE, (line) => {
      let q: unknown
      try {
        q = JSON.parse(line)
      } catch {
        q = null
      }
      if (!validQuery(q)) return false // not our engine speaking: say nothing
      let found: PeerProcess | null = null
      try {
        found = find(q)
      } catch {
        /* an unreadable /proc: unknown */
      }
      answered[found ? 'found' : 'unknown']++
      s.write(JSON.stringify(found ? { id: q.id, pid: found.pid, binary: found.binary } : { id: q.id, pid: null }) + '\n')
    })
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    const old = process.umask(0o177) // the socket is created 0600: no other user may ask
    try {
      server.listen(path, () => {
        server.off('error', reject)
        resolve()
      })
    } finally {
      process.umask(old)
    }
  })
  fs.chmodSync(path, 0o600)
  return {
    path,
    answered,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of conns) s.destroy()
        server.close(() => resolve())
      }),
  }
}

/** Call `line` for each newline-terminated line `s` receives; destroy `s` when `line` returns false
 * or the unterminated rest grows beyond `max` characters. */
function onLines(s: net.Socket, max: number, line: (l: string) => boolean | void): void {
  let buf = ''
  s.setEncoding('utf8')
  s.on('data', (chunk: string) => {
    buf += chunk
    let nl: number
    while ((nl = buf.indexOf('\n')) >= 0) {
      const l = buf.slice(0, nl)
      buf = buf.slice(nl + 1)
      if (line(l) === false) return void s.destroy()
    }
    if (buf.length > max) s.destroy()
  })
}

function defaultFind(q: LookupQuery): PeerProcess | null {
  return findPeerProcess(q.client, q.clientPort, q.gate, q.gatePort, q.elsewhere)
}

/**
 * The engine's side: one connection to the lookup socket, opened when first needed and again after
 * it fails; queries in flight are matched to answers by id. lookup() resolves null (an unknown
 * client) when the answer does not come within timeoutMs, or the socket cannot be reached.
 */
export class RemoteLookup {
  private sock: net.Socket | null = null
  private nextId = 1
  /** queries waiting for their answer, and the socket each was written to */
  private readonly waiting = new Map<number, { sock: net.Socket; finish: (p: PeerProcess | null) => void }>()

  /** lookups waiting for their answer */
  get inFlight(): number {
    return this.waiting.size
  }

  constructor(
    readonly path: string,
    readonly timeoutMs = 100,
  ) {}

  private connect(): net.Socket {
    if (this.sock && !this.sock.destroyed) return this.sock
    const s = net.connect(this.path)
    this.sock = s
    s.unref() // a lookup socket alone does not keep the engine running
    onLines(s, 64 * 1024, (line) => {
      let a: { id?: unknown; pid?: unknown; binary?: unknown } | null = null
      try {
        a = JSON.parse(line)
      } catch {
        /* ignored: the waiting query times out */
      }
      const w = a && typeof a.id === 'number' ? this.waiting.get(a.id) : undefined
      if (!w || !a) return
      w.finish(Number.isSafeInteger(a.pid) && (a.pid as number) > 0 ? { pid: a.pid as number, binary: typeof a.binary === 'string' ? a.binary : null } : null)
    })
    const fail = () => {
      if (this.sock === s) this.sock = null
      for (const w of [...this.waiting.values()]) if (w.sock === s) w.finish(null)
    }
    s.on('error', fail)
    s.on('close', fail)
    return s
  }

  lookup(q: LookupQuery): Promise<PeerProcess | null> {
    return new Promise((resolve) => {
      const id = this.nextId++
      const finish = (p: PeerProcess | null) => {
        if (!this.waiting.delete(id)) return
        clearTimeout(timer)
        resolve(p)
      }
      const timer = setTimeout(() => finish(null), this.timeoutMs)
      try {
        const sock = this.connect()
        this.waiting.set(id, { sock, finish })
        sock.write(JSON.stringify({ id, ...q }) + '\n')
      } catch {
        resolve(null)
        clearTimeout(timer)
      }
    })
  }

  close(): void {
    this.sock?.destroy()
    this.sock = null
  }
}
