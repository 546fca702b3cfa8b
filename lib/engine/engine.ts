/**
 * The policy engine: egress gate (HTTP forward proxy + CONNECT tunnels), operator approvals,
 * hot reload and the audit trail. The control API (control.ts) drives it from outside the sandbox.
 *
 * The gate decides on the absolute URI or CONNECT target, never on a Host header (and rewrites
 * Host to the decided authority), resolves names itself, checks every resolved address and
 * connects to the address it checked: there is no second resolution to rebind.
 */
import http from 'node:http'
import net from 'node:net'
import os from 'node:os'
import fs from 'node:fs'
import path from 'node:path'
import dns from 'node:dns'
import { randomBytes } from 'node:crypto'
import { Registry, Counter, Gauge } from 'prom-client'
import { Agent, type Dispatcher } from 'undici'
import type { Readable } from 'node:stream'
import * as kernelRelay from '../kernel/relay.js'
import { AuditLog, type AuditRecord, type SyncMode } from './audit.js'
import { parseIP, formatIP, specialRange } from './ip.js'
import {
  type CompiledNetwork,
  type Rule,
  type SessionRules,
  type Target,
  type NameDecision,
  checkAddress,
  decideName,
  normalizeHost,
  normalizePath,
  parseRule,
} from './rules.js'
import { type LoadedPolicy, PolicyLoadError, loadNetworkPolicy, persistAllowRule, sha256, atomicWrite } from './policy.js'
import { findPeerProcess, prepareLookups, type PeerProcess } from './procinfo.js'
import { RemoteLookup } from './lookup-service.js'

export interface HostPort {
  host: string
  port: number
}

export type Lookup = (host: string) => Promise<Array<{ address: string; family: number }>>

export type Identify = 'all' | 'sandboxes' | 'flagged' | 'none'

export interface EngineOptions {
  policyFile: string
  listen: HostPort
  router?: HostPort | null
  gateway?: HostPort | null
  /** extra always-reachable names (name -> address), like inference.local */
  services?: Record<string, HostPort>
  audit?: string | null
  auditSync?: SyncMode
  stateDir?: string | null
  /** names resolved from this map only (tests, pinning); others through the system resolver */
  hosts?: Record<string, string[]>
  lookup?: Lookup
  askTimeoutMs?: number
  presetDir?: string
  /** label for traffic whose source address is not a registered sandbox */
  sandboxId?: string
  /** directory where lib/sandbox/netns.ts registers sandbox addresses (file name = address) */
  netnsRegistry?: string
  /**
   * whose decisions name the client's pid and binary (a /proc walk, once per connection): every
   * client's (all); a registered sandbox's every decision and anyone else's deny/ask decisions
   * (sandboxes, the default); deny/ask only (flagged); nobody's (none)
   */
  identify?: Identify
  /** the client lookups' time budget, ms (default 100); it refills at identifyShare of the time that passes */
  identifyBudgetMs?: number
  /** the share of the gate's time the client lookups may spend, 0..1 (default 0.05) */
  identifyShare?: number
  /**
   * look client processes up through the lookup service on this unix socket (lib/engine/
   * lookup-service.ts: a confined engine may not read other domains' /proc links) instead of /proc
   */
  identifyVia?: string
  /** how long a connection's first decision waits for the lookup service's answer, ms (default 100) */
  identifyViaTimeoutMs?: number
  watch?: boolean
  headersTimeoutMs?: number
  requestTimeoutMs?: number
  tunnelIdleMs?: number
  /** who moves an established tunnel's bytes: the kernel (splice relay, the default) or Node */
  relay?: 'splice' | 'node'
  /** extra addresses to treat as the host's own (tests) */
  extraOwnAddresses?: string[]
  /** also serve SOCKS5 (CONNECT, no authentication) here, for TCP that is not HTTP */
  socks?: HostPort | null
  /** also serve the gate on this unix socket (for the non-root relay, lib/sandbox/relay.ts) */
  listenUnix?: string | null
}

export interface PendingInfo {
  id: string
  host: string
  port: number
  method: string | null
  path: string | null
  via: string
  pid: number | null
  binary: string | null
  sandbox: string
  client: string
  first: string
  last: string
  count: number
  waiting: number
  expires: string
}

interface Pending extends PendingInfo {
  waiters: Set<(ok: boolean, why: string) => void>
  timer: NodeJS.Timeout | null
}

export interface SessionApproval {
  id: string
  action: 'allow' | 'deny'
  rule: string
  host: string
  port: number
  time: string
  persisted: boolean
}

interface ConnState {
  sandbox: string
  client: string
  clientAddr: string
  clientPort: number
  localAddr: string
  localPort: number
  sock: net.Socket
  /** per-connection resolution and "already durably logged" cache, valid for one policy generation */
  cache: Map<string, { gen: number; address: string; key: string }>
  /** set inside a CONNECT to one of cordon's services: every request goes to this origin */
  origin?: string
  /** the client process, once looked up (identify()); null: not found or not looked up by choice */
  peer?: PeerProcess | null
  /** a lookup through the lookup service in flight (--identify-via) */
  peerLookup?: Promise<PeerProcess | null>
  /** the client address is a registered sandbox's (its namespace is not the engine's) */
  registered: boolean
}

interface Outcome {
  id: string
  action: 'allow' | 'deny'
  status: number
  reason: string
  rule: string | null
  address: string | null
  port: number
  service: string | null
  pendingId: string | null
}

export interface ReloadResult {
  ok: boolean
  changed: boolean
  hash: string
  errors?: string[]
  generation: number
}

/** distinct destinations held for the operator at once; more are denied at once (memory bound) */
const MAX_PENDING = 256

/** the sandbox identity the gate vouches for on requests to cordon's services */
const SANDBOX_HEADER = 'x-cordon-sandbox'

/** request headers not passed upstream: hop-by-hop (RFC 9110 7.6.1), the proxy's own, and the
 * sandbox identity (only the gate sets it) */
const DROP_REQUEST = new Set([
  'proxy-connection',
  'keep-alive',
  'proxy-authorization',
  'proxy-authenticate',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'host',
  'expect', // Node's server already answered 100-continue to the client; undici refuses it upstream
  SANDBOX_HEADER,
])

/** hop-by-hop response headers the gate does not pass back to the client */
const DROP_RESPONSE = new Set(['keep-alive', 'transfer-encoding', 'proxy-authenticate', 'proxy-connection', 'te', 'trailer', 'upgrade'])

/**
 * A raw header list [name, value, ...] without Connection, the headers in `drop`, and the headers
 * the message's own Connection header names (they are hop-by-hop too). Names keep their case.
 */
function endToEnd(raw: string[], drop: Set<string>): string[] {
  let named: string[] = []
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() === 'connection') named = named.concat(raw[i + 1]!.toLowerCase().split(',').map((x) => x.trim()))
  }
  const out: string[] = []
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i]!.toLowerCase()
    if (k === 'connection' || drop.has(k) || named.includes(k)) continue
    out.push(raw[i]!, raw[i + 1]!)
  }
  return out
}

/** ISO time of now; the part up to the second is formatted once per second (toISOString on every
 * record was the costliest line of the request path) */
let isoSec = -1
let isoPrefix = ''
function now(): string {
  const ms = Date.now()
  const sec = Math.floor(ms / 1000)
  if (sec !== isoSec) [isoSec, isoPrefix] = [sec, new Date(sec * 1000).toISOString().slice(0, 20)]
  return `${isoPrefix}${String(ms % 1000).padStart(3, '0')}Z`
}

// decision ids: a random per-process prefix and a counter (unique across restarts, no syscall per id)
const ID_PREFIX = randomBytes(3).toString('hex')
let idCounter = 0
function newId(prefix = ''): string {
  return `${prefix}${ID_PREFIX}${(idCounter++).toString(36)}`
}

/**
 * The agent's correlation label (`x-cordon-request-id`, set by lib/agent from the gateway
 * message it is working on). Logged as `request_id` in the decision record so `cordon logs` can
 * tie an egress decision to a chat message and the router's records. It is NOT trusted for
 * anything: the sandbox chooses it freely, no decision reads it, and it is forwarded upstream
 * untouched like any other end-to-end header. Only a well-formed value is logged (bounded
 * length and charset, so it cannot forge or bloat audit lines); anything else is left out.
 */
const REQUEST_ID_RE = /^[A-Za-z0-9._:@-]{1,128}$/
function requestIdOf(req: http.IncomingMessage): string | null {
  const v = req.headers['x-cordon-request-id']
  return typeof v === 'string' && REQUEST_ID_RE.test(v) ? v : null
}

function splitHostPort(s: string): HostPort | null {
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(s) ?? /^([^:]+):(\d{1,5})$/.exec(s)
  if (!m) return null
  const port = Number(m[2])
  if (port > 65535) return null
  return { host: m[1]!, port }
}

export function parseHostPort(s: string, what: string): HostPort {
  const hp = splitHostPort(s) ?? (/^:?(\d{1,5})$/.test(s) ? { host: '127.0.0.1', port: Number(s.replace(':', '')) } : null)
  if (!hp) throw new Error(`${what}: expected HOST:PORT (e.g. 127.0.0.1:3128), got "${s}"`)
  return hp
}

const CONNECT_OK = Buffer.from('HTTP/1.1 200 Connection Established\r\n\r\n')
const EMPTY = Buffer.alloc(0)
const DONE = Promise.resolve()

/** What a tunnel sends first once its upstream is connected. */
interface TunnelStart {
  /** to the client (the CONNECT 200 line, the SOCKS5 reply) */
  toClient: Buffer
  /** to the upstream (bytes the client sent after its CONNECT, the rebuilt Upgrade request) */
  toUpstream: Buffer
}

/** how long a refused client may keep its side of the connection open before the engine closes it */
const REFUSED_GRACE_MS = 2_000

/**
 * Answer and let go: end our side with the answer, read and drop whatever the client still sends
 * (closing a socket with unread bytes would reset the connection, and a client that pipelined bytes
 * behind its request could lose the answer before reading it), and close the socket whole after a
 * short grace if the client keeps its side open: a refused client must not hold an engine descriptor.
 */
function refuseAndRelease(sock: net.Socket, answer: string | Buffer): void {
  sock.end(answer)
  sock.resume()
  const t = setTimeout(() => sock.destroy(), REFUSED_GRACE_MS)
  t.unref()
  sock.once('close', () => clearTimeout(t))
}

/**
 * SO_SNDBUF (bytes asked; the kernel doubles it) the splice relay gives a tunnel's client socket
 * when the client is on this host. Left to autotuning, that buffer grows toward tcp_wmem's maximum
 * (4 MiB) whenever the upstream delivers faster than the client reads, and the client then reads
 * data written megabytes earlier, long out of its CPU's cache. With 256 KiB in flight a 100 MB
 * download through the gate cost the reading process 55 ms of CPU instead of 81 (direct: 74), and
 * the tunnel ratio went from 0.77 to 0.98 (same-run A/B, bench:engine's topology). A client a few
 * microseconds away needs no more: 256 KiB per 50 us round trip is 5 GB/s.
 */
export const LOCAL_CLIENT_SEND_BUFFER = 128 * 1024

/**
 * The client socket's send buffer for the splice relay: LOCAL_CLIENT_SEND_BUFFER for a TCP client
 * on this host (a loopback address, or a registered sandbox namespace behind its veth); 0 (the
 * kernel's autotuning) for anything else: a client on another machine can have a round trip long
 * enough that a fixed buffer would cap its throughput at buffer / RTT.
 */
export function clientSendBuffer(clientAddr: string, registered: boolean): number {
  if (registered) return LOCAL_CLIENT_SEND_BUFFER
  const a = parseIP(clientAddr)
  return a && specialRange(a)?.kind === 'loopback' ? LOCAL_CLIENT_SEND_BUFFER : 0
}

/**
 * Connect to the checked address and relay bytes both ways once connected and `durable` (the
 * decision's fdatasync, Engine.decideEarly) has resolved: the handshake overlaps the fdatasync.
 * By default the connected pair goes to the splice relay (lib/kernel/relay.ts): the bytes move in
 * the kernel and never through this event loop. Where it cannot take them (relay: 'node', or the
 * relay refuses), Node relays: upstream reads land in one reusable 256 KiB buffer (Node's default
 * is 64 KiB per read: 4x the read syscalls on a bulk download), copied out per write. Either way
 * half-closes pass through and an error tears both sides down; onDone runs once, with the counts.
 * A connect that fails gets onFail(e, false) once `durable` has resolved (its answer to the client
 * waits for the record, as a 200 does); a failure after connecting gets onFail(e, true) at once.
 */
interface RelayOptions {
  /** the checked destination */
  address: string
  port: number
  client: net.Socket
  idleMs: number
  mode: 'splice' | 'node'
  /** the splice relay's tunnels (Engine.tunnels): a handed-over pair is added, and removed at its end */
  tunnels: Set<kernelRelay.Tunnel>
  /** SO_SNDBUF toward the client for the splice relay (clientSendBuffer()); 0: autotuning */
  clientSendBuffer: number
  /** the decision's fdatasync (Engine.decideEarly) */
  durable: Promise<void>
  /** the first bytes each way once relaying starts (the 200 or SOCKS5 success, the early bytes) */
  onConnect: () => TunnelStart
  onFail: (e: NodeJS.ErrnoException, connected: boolean) => void
  onDone: (bytesIn: number, bytesOut: number, err?: string) => void
}

function openRelay(o: RelayOptions): net.Socket {
  const { address, port, client, idleMs, mode, tunnels, durable, onConnect, onFail, onDone } = o
  let bytesIn = 0
  let done = false
  let connected = false
  let handedOver = false
  let relaying = false
  const finish = (err?: string) => {
    if (done || handedOver) return
    done = true
    onDone(bytesIn, up.bytesWritten, err)
  }
  const up: net.Socket = net.connect({
    host: address,
    port,
    noDelay: true,
    // the upstream's FIN ends only its direction (passed on to the client below); without this
    // Node ends our side too and cuts an upload still in progress
    allowHalfOpen: true,
    onread: {
      buffer: Buffer.allocUnsafe(256 * 1024),
      callback: (n: number, buf: Uint8Array) => {
        bytesIn += n
        if (!client.write(Buffer.from(buf.subarray(0, n)))) {
          client.once('drain', () => up.resume())
          return false
        }
        return true
      },
    },
  } as net.NetConnectOpts)
  up.pause() // nothing is read from the upstream before it is known who relays
  up.once('connect', () => {
    connected = true
    void durable.then(relay)
  })
  // once connected and the decision is on stable storage: nothing moves before both
  const relay = () => {
    if (done || up.destroyed || client.destroyed) return // ended while the fdatasync ran (its close handlers report it)
    relaying = true
    const first = onConnect()
    if (mode === 'splice' && kernelRelay.canHandOver(client, up)) {
      try {
        const tunnel = kernelRelay.handOver(
          client,
          up,
          first.toClient,
          first.toUpstream,
          idleMs,
          (end) => {
            tunnels.delete(tunnel)
            onDone(end.bytesIn, end.bytesOut, end.error || undefined)
          },
          o.clientSendBuffer,
        )
        handedOver = true
        tunnels.add(tunnel)
        return
      } catch {
        // the relay could not take this pair (fd limit, no relay thread): Node relays it
      }
    }
    client.write(first.toClient)
    if (first.toUpstream.length) up.write(first.toUpstream)
    client.pipe(up) // client -> upstream, ends upstream on the client's FIN
    up.resume()
  }
  up.on('end', () => client.end())
  up.setTimeout(idleMs, () => {
    finish('idle timeout')
    up.destroy()
    client.destroy()
  })
  up.on('error', (e: NodeJS.ErrnoException) => {
    finish(`upstream error ${e.code ?? e.message}`)
    if (connected) return onFail(e, true)
    // the refusal (502, SOCKS5 failure) answers the client on the decision's behalf: like the 200,
    // it waits until the decision is on stable storage (onFail releases the client)
    void durable.then(() => {
      if (!client.destroyed) onFail(e, false)
    })
  })
  up.on('close', (hadError: boolean) => {
    finish()
    if (hadError && connected) client.destroy()
  })
  client.on('close', (hadError: boolean) => {
    if (handedOver) return
    if (!relaying) finish('client went away') // during the connect or the decision's fdatasync
    // a client that sent its FIN and closed: what it sent may still be queued for a slow upstream
    // (pipe() ended `up` on that FIN); let it drain, then close (the idle timeout bounds the wait)
    if (!hadError && up.writableEnded && !up.writableFinished && !up.destroyed) {
      up.once('finish', () => up.destroy())
      return
    }
    up.destroy()
  })
  // Engine.stop() ends a tunnel Node relays (or one still connecting) through this event, so its
  // end record says why, as the splice relay's Tunnel.close(reason) does for the tunnels it holds
  client.once('cordon:stop', (reason: string) => {
    finish(reason)
    up.destroy()
    client.destroy()
  })
  return up
}

/** remote client lookups (--identify-via) waiting at once; more new connections are skipped */
const REMOTE_IN_FLIGHT = 16

export class Engine {
  readonly opts: EngineOptions
  policy!: LoadedPolicy
  generation = 0
  lastReload: { time: string; ok: boolean; errors?: string[]; trigger: string } | null = null
  readonly audit: AuditLog
  readonly session: SessionRules = { allow: [], deny: [] }
  readonly approvals: SessionApproval[] = []
  readonly pending = new Map<string, Pending>()
  private readonly services = new Map<string, HostPort>()
  private server: http.Server | null = null
  private socksServer: net.Server | null = null
  private unixServer: net.Server | null = null
  /** keep-alive pools to upstream origins for plain HTTP */
  private readonly upstream: Agent
  /** --identify-via: the lookup service that names client processes for this engine */
  private readonly remoteLookup: RemoteLookup | null
  /** upstream headers/body idle timeout for plain HTTP, ms */
  private readonly upstreamTimeoutMs: number
  private watcher: fs.FSWatcher | null = null
  private pollTimer: NodeJS.Timeout | null = null
  private reloadTimer: NodeJS.Timeout | null = null
  private ownAddrs = new Set<string>()
  private ownAddrsAt = 0
  private readonly conns = new WeakMap<net.Socket, ConnState>()
  private readonly sockets = new Set<net.Socket>()
  /** tunnels the splice relay holds (their Node sockets are gone) */
  private readonly tunnels = new Set<kernelRelay.Tunnel>()
  readonly metrics = new Registry()
  private readonly mDecisions: Counter<'decision' | 'via'>
  private readonly mBytes: Counter<'direction'>
  private readonly mActive: Gauge
  private readonly mReloads: Counter<'result'>
  private readonly mPending: Gauge
  private readonly mLookups: Counter<'result'>
  readonly startedAt = now()

  constructor(opts: EngineOptions) {
    this.opts = opts
    this.idBudgetCap = opts.identifyBudgetMs ?? 100
    this.idShare = opts.identifyShare ?? 0.05
    if (!(this.idShare >= 0 && this.idShare <= 1)) throw new Error(`identifyShare must be between 0 and 1 (got ${opts.identifyShare})`)
    this.idBudgetMs = this.idBudgetCap
    this.audit = new AuditLog(opts.audit ?? null, opts.auditSync ?? 'always')
    this.upstream = new Agent({ connections: 256, keepAliveTimeout: 60_000 }) // undici sets TCP_NODELAY on its sockets
    this.remoteLookup = opts.identifyVia && opts.identify !== 'none' ? new RemoteLookup(opts.identifyVia, opts.identifyViaTimeoutMs ?? 100) : null
    this.upstreamTimeoutMs = Math.min(opts.tunnelIdleMs ?? 3_600_000, 3_600_000)
    if (opts.router) this.services.set('inference.local', opts.router)
    if (opts.gateway) this.services.set('gateway.local', opts.gateway)
    for (const [k, v] of Object.entries(opts.services ?? {})) this.services.set(normalizeHost(k), v)
    this.mDecisions = new Counter({ name: 'cordon_engine_decisions_total', help: 'gate decisions', labelNames: ['decision', 'via'], registers: [this.metrics] })
    this.mBytes = new Counter({ name: 'cordon_engine_bytes_total', help: 'bytes relayed', labelNames: ['direction'], registers: [this.metrics] })
    const tunnels = this.tunnels
    this.mActive = new Gauge({ name: 'cordon_engine_connections_active', help: 'open client connections Node holds (see tunnels_relayed for the rest)', registers: [this.metrics] })
    new Gauge({
      name: 'cordon_engine_tunnels_relayed',
      help: 'tunnels whose bytes the kernel moves (the splice relay holds their connections)',
      registers: [this.metrics],
      collect() {
        this.set(tunnels.size)
      },
    })
    this.mReloads = new Counter({ name: 'cordon_engine_reloads_total', help: 'policy reloads', labelNames: ['result'], registers: [this.metrics] })
    this.mPending = new Gauge({ name: 'cordon_engine_pending', help: 'requests waiting for an operator', registers: [this.metrics] })
    this.mLookups = new Counter({ name: 'cordon_engine_peer_lookups_total', help: 'client process lookups through /proc (found, unknown, or skipped: time budget spent)', labelNames: ['result'], registers: [this.metrics] })
  }

  // ---------------------------------------------------------------- lifecycle

  async start(): Promise<HostPort> {
    this.policy = loadNetworkPolicy(this.opts.policyFile, this.opts.presetDir)
    this.generation = 1
    this.loadState()
    if (this.opts.identify !== 'none' && !this.remoteLookup) prepareLookups()
    await this.audit.commit({
      time: now(),
      type: 'start',
      policy: this.opts.policyFile,
      hash: this.policy.hash,
      pid: process.pid,
      restored_approvals: this.approvals.length,
      restored_pending: this.pending.size,
    })
    const server = http.createServer({
      maxHeaderSize: 16 * 1024,
      requireHostHeader: false,
      noDelay: true,
      keepAlive: true,
      headersTimeout: this.opts.headersTimeoutMs ?? 15_000,
      requestTimeout: this.opts.requestTimeoutMs ?? 300_000,
      connectionsCheckingInterval: Math.min(1_000, this.opts.headersTimeoutMs ?? 15_000),
    } as http.ServerOptions)
    server.keepAliveTimeout = 5_000
    server.maxConnections = 10_000 // beyond this new clients are closed at once (bounded memory)
    server.on('connection', (s: net.Socket) => this.onConnection(s))
    server.on('request', (req, res) => void this.onRequest(req, res))
    server.on('connect', (req: http.IncomingMessage, sock: net.Socket, head: Buffer) => void this.onTunnel(req, sock, head, 'connect'))
    server.on('upgrade', (req: http.IncomingMessage, sock: net.Socket, head: Buffer) => void this.onTunnel(req, sock, head, 'upgrade'))
    server.on('clientError', (err: NodeJS.ErrnoException, sock: net.Socket) => this.onClientError(err, sock))
    this.server = server
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(this.opts.listen.port, this.opts.listen.host, () => {
        server.off('error', reject)
        resolve()
      })
    })
    if (this.opts.socks) await this.startSocks(this.opts.socks)
    if (this.opts.listenUnix) {
      // the same HTTP server serves connections accepted on a unix socket
      const path_ = this.opts.listenUnix
      fs.mkdirSync(path.dirname(path_), { recursive: true, mode: 0o755 })
      try {
        fs.unlinkSync(path_)
      } catch {
        /* none */
      }
      const us = net.createServer((c) => server.emit('connection', c))
      this.unixServer = us
      await new Promise<void>((resolve, reject) => {
        us.once('error', reject)
        us.listen(path_, () => resolve())
      })
      fs.chmodSync(path_, 0o666) // any sandbox user may reach the gate; the rules apply as on TCP
    }
    if (this.opts.watch !== false) this.startWatch()
    const a = server.address() as net.AddressInfo
    return { host: a.address, port: a.port }
  }

  socksAddress(): HostPort | null {
    const a = this.socksServer?.address() as net.AddressInfo | null | undefined
    return a ? { host: a.address, port: a.port } : null
  }

  // ---------------------------------------------------------------- SOCKS5 (RFC 1928), CONNECT only

  private async startSocks(listen: HostPort): Promise<void> {
    // half-open: a client's FIN ends only its direction (the relays pass it on), so a client that
    // shuts down its write side still receives the whole answer; onSocks ends a client that
    // half-closes before its tunnel starts
    const srv = net.createServer({ noDelay: true, allowHalfOpen: true }, (s) => this.onSocks(s))
    srv.maxConnections = 10_000
    this.socksServer = srv
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject)
      srv.listen(listen.port, listen.host, () => {
        srv.off('error', reject)
        resolve()
      })
    })
  }

  private onSocks(s: net.Socket): void {
    this.onConnection(s)
    const conn = this.conns.get(s)!
    s.on('error', () => undefined)
    let buf = Buffer.alloc(0)
    let stage: 'greet' | 'request' | 'busy' = 'greet'
    const hs = setTimeout(() => s.destroy(), this.opts.headersTimeoutMs ?? 15_000)
    const reply = (rep: number) => Buffer.from([5, rep, 0, 1, 0, 0, 0, 0, 0, 0])
    const refuse = (answer: Buffer | string) => {
      stage = 'busy' // nothing more is parsed
      s.off('data', onData)
      clearTimeout(hs)
      refuseAndRelease(s, answer)
    }
    const onData = (c: Buffer) => {
      buf = Buffer.concat([buf, c])
      if (buf.length > 600) return void s.destroy()
      if (stage === 'greet') {
        if (buf.length < 2) return
        if (buf[0] !== 5) {
          return void refuse('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 57\r\n\r\ncordon egress gate: this port speaks SOCKS5 (socks5h://)\n')
        }
        const n = buf[1]!
        if (buf.length < 2 + n) return
        const methods = buf.subarray(2, 2 + n)
        buf = buf.subarray(2 + n)
        if (!methods.includes(0)) return void refuse(Buffer.from([5, 0xff]))
        s.write(Buffer.from([5, 0]))
        stage = 'request'
      }
      if (stage === 'request') {
        if (buf.length < 5) return
        const atyp = buf[3]!
        let host: string
        let off: number
        if (atyp === 1) {
          if (buf.length < 10) return
          host = `${buf[4]}.${buf[5]}.${buf[6]}.${buf[7]}`
          off = 8
        } else if (atyp === 3) {
          const len = buf[4]!
          if (buf.length < 5 + len + 2) return
          host = buf.subarray(5, 5 + len).toString('latin1')
          off = 5 + len
        } else if (atyp === 4) {
          if (buf.length < 22) return
          const a = new Uint8Array(16)
          a.set(buf.subarray(4, 20))
          host = formatIP(a)
          off = 20
        } else {
          return void refuse(reply(8))
        }
        const port = buf.readUInt16BE(off)
        const rest = buf.subarray(off + 2)
        stage = 'busy'
        clearTimeout(hs)
        s.off('data', onData)
        s.pause()
        if (buf[1] !== 1) return void refuse(reply(7)) // only CONNECT
        if (port === 0) return void refuse(reply(1))
        void this.socksConnect(s, conn, { host: normalizeHost(host), port, tunnel: true }, rest, reply, refuse)
      }
    }
    s.on('data', onData)
    // the server is half-open (startSocks): a FIN during the greeting or the request would
    // otherwise leave the socket open until the handshake timer; from the request on (busy) the
    // FIN belongs to the tunnel, and the relay passes it on
    s.on('end', () => {
      if (stage !== 'busy') s.end()
    })
    s.once('close', () => clearTimeout(hs))
  }

  private async socksConnect(s: net.Socket, conn: ConnState, t: Target, rest: Buffer, reply: (rep: number) => Buffer, refuse: (answer: Buffer) => void): Promise<void> {
    const started = performance.now()
    const { out: o, durable } = await this.decideEarly(t, conn, 'socks')
    if (o.action === 'deny') {
      await durable
      return void refuse(reply(o.status === 502 ? 4 : 2))
    }
    if (s.destroyed) return this.endRecord(o, started, 0, 0, 'client went away')
    openRelay({
      ...this.relayFor(conn, o, durable),
      client: s,
      idleMs: this.opts.tunnelIdleMs ?? 3_600_000,
      onConnect: () => ({ toClient: reply(0), toUpstream: rest }),
      onFail: (e, connected) => {
        if (!connected) refuse(reply(e.code === 'ECONNREFUSED' ? 5 : 4))
        else s.destroy()
      },
      onDone: (bin, bout, err) => this.endRecord(o, started, bin, bout, err),
    })
  }

  /** what every tunnel's relay takes from the engine and the decision (openRelay) */
  private relayFor(conn: ConnState, o: Outcome, durable: Promise<void>): Pick<RelayOptions, 'address' | 'port' | 'mode' | 'tunnels' | 'clientSendBuffer' | 'durable'> {
    return { address: o.address!, port: o.port, mode: this.opts.relay ?? 'splice', tunnels: this.tunnels, clientSendBuffer: clientSendBuffer(conn.clientAddr, conn.registered), durable }
  }

  private stopping: Promise<void> | null = null

  address(): HostPort {
    const a = this.server!.address() as net.AddressInfo
    return { host: a.address, port: a.port }
  }

  /**
   * Stop: accept nothing more, end everything in flight (each end record says `engine stopping`),
   * then close the audit log with a `stop` record. Every wait is bounded, and nothing is left in
   * the splice relay: a process that exits (process.exit) while the relay still holds a tunnel
   * never ends, because Node's exit joins the thread pool thread the relay runs on.
   * Also safe on an engine whose start() failed half-way, and idempotent: a second call (a second
   * signal, a test's teardown) waits for the first.
   */
  stop(): Promise<void> {
    return (this.stopping ??= this.stopNow())
  }

  private async stopNow(): Promise<void> {
    const reason = 'engine stopping'
    const within = async (p: Promise<unknown>, ms: number) => {
      let timer: NodeJS.Timeout | undefined
      await Promise.race([p, new Promise((r) => (timer = setTimeout(r, ms)))])
      clearTimeout(timer)
    }
    this.watcher?.close()
    if (this.pollTimer) clearInterval(this.pollTimer)
    if (this.reloadTimer) clearTimeout(this.reloadTimer)
    for (const p of this.pending.values()) if (p.timer) clearTimeout(p.timer)
    // first stop listening, all at once: a connection accepted while the engine stops (an agent
    // that reconnects at once) would be one nobody ends: server.close() would wait for it, and a
    // tunnel it opened could reach the relay after the relay was emptied
    const listening = [this.socksServer, this.unixServer, this.server]
      .filter((s): s is net.Server => s !== null)
      .map((s) => new Promise<void>((r) => s.close(() => r())))
    // requests waiting for the operator are refused with the reason (each gets its deny record);
    // the pending entries stay for the operator (with --state they are there after a restart)
    for (const p of this.pending.values()) {
      const waiters = [...p.waiters]
      p.waiters.clear()
      for (const w of waiters) w(false, reason)
    }
    // plain-HTTP requests: their upstream legs fail with the reason (their end records carry it)
    await within(this.upstream.destroy(new Error(reason)).catch(() => undefined), 500)
    const closed = new Set<kernelRelay.Tunnel>()
    const endTunnels = () => {
      for (const t of this.tunnels) {
        if (closed.has(t)) continue
        closed.add(t)
        t.close(reason)
      }
      for (const s of this.sockets) s.emit('cordon:stop', reason) // tunnels Node relays (openRelay)
      for (const s of this.sockets) s.destroy()
    }
    endTunnels()
    this.server?.closeAllConnections()
    await within(Promise.all(listening), 2_000)
    // the relay reports the tunnels it closed from its own thread, and sockets report their close
    // (end records, requests that waited for the operator settle): wait, briefly, for all of them
    for (let i = 0; i < 100 && (this.tunnels.size > 0 || this.sockets.size > 0); i++) {
      endTunnels()
      await new Promise((r) => setTimeout(r, 10))
    }
    await new Promise((r) => setImmediate(r))
    this.remoteLookup?.close()
    // an engine whose start failed before its start record has no trail to close
    if (this.audit.records > 0) this.audit.append({ time: now(), type: 'stop', pid: process.pid })
    this.audit.close()
  }

  // ---------------------------------------------------------------- policy / reload

  /** Continue the audit trail in a file opened anew at its path (after logrotate moved it); audited in the new file. */
  reopenAudit(trigger: string): boolean {
    const ok = this.audit.reopen()
    if (ok) this.audit.append({ time: now(), type: 'reopen', trigger, pid: process.pid, policy_hash: this.policy.hash })
    return ok
  }

  reload(trigger: string): ReloadResult {
    let next: LoadedPolicy
    try {
      next = loadNetworkPolicy(this.opts.policyFile, this.opts.presetDir)
    } catch (e) {
      const errors = e instanceof PolicyLoadError ? e.message.split('\n') : [(e as Error).message]
      this.lastReload = { time: now(), ok: false, errors, trigger }
      this.mReloads.inc({ result: 'rejected' })
      this.audit.append({ time: now(), type: 'reload', ok: false, trigger, errors, kept: this.policy.hash })
      return { ok: false, changed: false, hash: this.policy.hash, errors, generation: this.generation }
    }
    const changed = next.hash !== this.policy.hash
    if (changed) {
      this.policy = next
      this.generation++
    }
    this.lastReload = { time: now(), ok: true, trigger }
    this.mReloads.inc({ result: changed ? 'applied' : 'unchanged' })
    this.audit.append({ time: now(), type: 'reload', ok: true, trigger, changed, hash: next.hash, generation: this.generation })
    return { ok: true, changed, hash: next.hash, generation: this.generation }
  }

  /** Watch the directory (editors and Kubernetes swap files and symlinks) and compare hashes. */
  private startWatch(): void {
    const dir = path.dirname(path.resolve(this.opts.policyFile))
    const check = () => {
      let h: string
      try {
        h = sha256(fs.readFileSync(this.opts.policyFile))
      } catch {
        return // mid-swap or removed: keep the policy in force
      }
      if (h !== this.policy.hash && h !== this.lastRejectedHash) {
        const r = this.reload('watch')
        this.lastRejectedHash = r.ok ? null : h
      }
    }
    // the audit log may live in this directory too: its appends (one per request) are not policy
    // changes, and re-arming the 50 ms timer for each would hold the check off for as long as
    // traffic flows (leaving only the 2 s poll)
    const auditName = this.audit.file && path.dirname(path.resolve(this.audit.file)) === dir ? path.basename(this.audit.file) : null
    const schedule = (_event: string, name: string | null) => {
      if (name !== null && name === auditName) return
      if (this.reloadTimer) clearTimeout(this.reloadTimer)
      this.reloadTimer = setTimeout(check, 50)
      this.reloadTimer.unref()
    }
    try {
      this.watcher = fs.watch(dir, { persistent: false }, schedule)
      this.watcher.on('error', () => undefined)
    } catch {
      /* fall back to polling only */
    }
    this.pollTimer = setInterval(check, 2_000)
    this.pollTimer.unref()
  }
  private lastRejectedHash: string | null = null

  // ---------------------------------------------------------------- state (session approvals, pending)

  private statePath(): string | null {
    return this.opts.stateDir ? path.join(this.opts.stateDir, 'engine-state.json') : null
  }

  private saveState(): void {
    const p = this.statePath()
    if (!p) return
    fs.mkdirSync(path.dirname(p), { recursive: true, mode: 0o700 })
    const pending = [...this.pending.values()].map(({ waiters: _w, timer: _t, ...rest }) => rest)
    atomicWrite(p, JSON.stringify({ version: 1, saved: now(), approvals: this.approvals, pending }, null, 1) + '\n')
  }

  private loadState(): void {
    const p = this.statePath()
    if (!p || !fs.existsSync(p)) return
    let st: { approvals?: SessionApproval[]; pending?: PendingInfo[] }
    try {
      st = JSON.parse(fs.readFileSync(p, 'utf8'))
    } catch (e) {
      throw new Error(`${p}: the engine state file is not valid JSON (${(e as Error).message}); move it aside to start without the saved approvals`)
    }
    for (const a of st.approvals ?? []) this.addSessionRule(a)
    for (const info of st.pending ?? []) {
      const pend: Pending = { ...info, waiting: 0, waiters: new Set(), timer: null }
      this.armPendingTimer(pend)
      this.pending.set(pend.id, pend)
    }
    this.mPending.set(this.pending.size)
  }

  private addSessionRule(a: SessionApproval): void {
    const rule = parseRule(a.rule, `approval:${a.id}`, a.action)
    this.approvals.push(a)
    if (a.action === 'allow') this.session.allow.push(rule)
    else this.session.deny.push(rule)
  }

  // ---------------------------------------------------------------- approvals

  listPending(): PendingInfo[] {
    return [...this.pending.values()].map(({ waiters, timer: _t, ...rest }) => ({ ...rest, waiting: waiters.size }))
  }

  private armPendingTimer(p: Pending): void {
    const ms = Math.max(0, Date.parse(p.expires) - Date.now())
    p.timer = setTimeout(() => this.expirePending(p.id), ms)
    p.timer.unref()
  }

  private expirePending(id: string): void {
    const p = this.pending.get(id)
    if (!p) return
    this.pending.delete(id)
    this.mPending.set(this.pending.size)
    this.audit.append({ time: now(), type: 'pending-expired', pending_id: id, host: p.host, port: p.port, waiting: p.waiters.size })
    for (const w of p.waiters) w(false, `not approved within ${Math.round((this.opts.askTimeoutMs ?? 60_000) / 1000)} s`)
    this.saveState()
  }

  /** Operator decision on a pending request. */
  async resolvePending(id: string, action: 'allow' | 'deny', persist = false, by = 'operator'): Promise<SessionApproval> {
    const p = this.pending.get(id)
    if (!p) {
      const known = [...this.pending.keys()]
      throw Object.assign(new Error(`no pending request "${id}"${known.length ? ` (pending: ${known.join(', ')})` : ' (nothing is pending)'}; list them with \`cordon approvals\``), { status: 404 })
    }
    const host = p.host.includes(':') ? `[${p.host}]` : p.host
    const ruleText = `${host}:${p.port}`
    if (persist && action === 'allow') {
      persistAllowRule(this.opts.policyFile, ruleText)
    }
    const a: SessionApproval = { id, action, rule: ruleText, host: p.host, port: p.port, time: now(), persisted: persist && action === 'allow' }
    await this.audit.commit({ time: now(), type: 'approval', pending_id: id, action, rule: ruleText, persist: a.persisted, by, host: p.host, port: p.port, pid: p.pid, binary: p.binary })
    if (a.persisted) this.reload('approve --persist')
    this.addSessionRule(a)
    if (p.timer) clearTimeout(p.timer)
    this.pending.delete(id)
    this.mPending.set(this.pending.size)
    this.saveState()
    for (const w of p.waiters) w(action === 'allow', action === 'allow' ? `approved by the operator (${id})` : `denied by the operator (${id})`)
    return a
  }

  /** Remove a session approval or denial (by pending id). */
  revoke(id: string): boolean {
    const i = this.approvals.findIndex((a) => a.id === id)
    if (i < 0) return false
    this.approvals.splice(i, 1)
    for (const list of [this.session.allow, this.session.deny]) {
      const j = list.findIndex((r) => r.origin === `approval:${id}`)
      if (j >= 0) list.splice(j, 1)
    }
    this.generation++
    this.audit.append({ time: now(), type: 'revoke', approval_id: id })
    this.saveState()
    return true
  }

  private async ask(t: Target, conn: ConnState, via: string, peer: PeerProcess | null, decisionId: string, requestId: string | null = null): Promise<{ ok: boolean; why: string; pendingId: string }> {
    const key = `${t.host}|${t.port}`
    let p = [...this.pending.values()].find((x) => `${x.host}|${x.port}` === key)
    if (!p && this.pending.size >= MAX_PENDING) {
      return { ok: false, why: `too many destinations are already waiting for the operator (${MAX_PENDING}); answer them with \`cordon approvals\``, pendingId: '' }
    }
    if (!p) {
      const timeout = this.opts.askTimeoutMs ?? 60_000
      p = {
        id: randomBytes(3).toString('hex'),
        host: t.host,
        port: t.port,
        method: t.method ?? null,
        path: t.path ?? null,
        via,
        pid: peer?.pid ?? null,
        binary: peer?.binary ?? null,
        sandbox: conn.sandbox,
        client: conn.client,
        first: now(),
        last: now(),
        count: 0,
        waiting: 0,
        expires: new Date(Date.now() + timeout).toISOString(),
        waiters: new Set(),
        timer: null,
      }
      this.pending.set(p.id, p)
      this.mPending.set(this.pending.size)
      this.armPendingTimer(p)
    }
    p.count++
    p.last = now()
    this.saveState()
    await this.audit.commit({
      time: now(),
      type: 'decision',
      id: decisionId,
      decision: 'pending',
      pending_id: p.id,
      sandbox: conn.sandbox,
      pid: peer?.pid ?? null,
      binary: peer?.binary ?? null,
      client: conn.client,
      via,
      host: t.host,
      port: t.port,
      method: t.method ?? null,
      path: t.path ?? null,
      ...(requestId ? { request_id: requestId } : {}), // correlation label only (see requestIdOf)
    })
    const pend = p
    return new Promise((resolve) => {
      const w = (ok: boolean, why: string) => resolve({ ok, why, pendingId: pend.id })
      pend.waiters.add(w)
      // if the client goes away, stop waiting for it (the pending entry stays for the operator)
      conn.sock.once('close', () => {
        if (pend.waiters.delete(w)) resolve({ ok: false, why: 'client went away', pendingId: pend.id })
      })
    })
  }

  // ---------------------------------------------------------------- decisions

  private ownAddresses(): Set<string> {
    if (Date.now() - this.ownAddrsAt > 5_000) {
      const s = new Set<string>(this.opts.extraOwnAddresses ?? [])
      for (const list of Object.values(os.networkInterfaces())) for (const i of list ?? []) {
        const a = parseIP(i.address)
        if (a) s.add(formatIP(a))
      }
      this.ownAddrs = s
      this.ownAddrsAt = Date.now()
    }
    return this.ownAddrs
  }

  private async resolve(host: string): Promise<string[]> {
    const lit = parseIP(host)
    if (lit) return [formatIP(lit)]
    const fromMap = this.opts.hosts?.[host]
    if (fromMap) return fromMap
    if (this.opts.lookup) return (await this.opts.lookup(host)).map((r) => r.address)
    const r = await dns.promises.lookup(host, { all: true, verbatim: true })
    return r.map((x) => x.address)
  }

  private sandboxFor(addr: string): { id: string; registered: boolean } {
    const a = addr.replace(/^::ffff:/, '')
    if (this.opts.netnsRegistry) {
      try {
        const id = fs.readFileSync(path.join(this.opts.netnsRegistry, a), 'utf8').trim()
        return { id: id || a, registered: true }
      } catch {
        /* not a registered sandbox */
      }
    }
    return { id: this.opts.sandboxId ?? a, registered: false }
  }

  /** time budget for client lookups, ms: refills at idShare (5%) of the time that passes, holds at most idBudgetCap (100) */
  private readonly idBudgetCap: number
  private readonly idShare: number
  private idBudgetMs: number
  private idRefill = performance.now()
  /**
   * The client's pid and binary, by a lookup through the kernel and /proc (procinfo.ts), once per
   * client connection: every decision on the connection names the process the first one found. A
   * lookup is synchronous, so lookups spend from a time budget (5% of the gate's time): a flood of
   * new connections, each from a new process where a lookup walks /proc, cannot stall the gate.
   * While the budget is spent the answer is 'skipped' (the audit record says so) and the connection
   * is looked up again at its next decision.
   * With --identify-via the lookup is asked of the lookup service of a process that may read /proc
   * for it (lib/engine/lookup-service.ts) and this returns a promise; its wall time is debited.
   * Concurrent decisions on one connection share one lookup.
   */
  private identify(conn: ConnState): PeerProcess | null | 'skipped' | Promise<PeerProcess | null> {
    if (conn.peer !== undefined) return conn.peer
    if (conn.peerLookup) return conn.peerLookup
    if (this.opts.identify === 'none' || conn.clientAddr === 'unix') return (conn.peer = null)
    const t0 = performance.now()
    this.idBudgetMs = Math.min(this.idBudgetCap, this.idBudgetMs + (t0 - this.idRefill) * this.idShare)
    this.idRefill = t0
    // the budget is debited when a lookup settles: a burst of new connections would all pass it
    // before the first remote answer, so at most REMOTE_IN_FLIGHT remote lookups wait at a time
    if (this.idBudgetMs <= 0 || (this.remoteLookup && this.remoteLookup.inFlight >= REMOTE_IN_FLIGHT)) {
      this.mLookups.inc({ result: 'skipped' })
      return 'skipped'
    }
    const settle = (found: PeerProcess | null) => {
      this.idBudgetMs -= performance.now() - t0
      this.mLookups.inc({ result: found ? 'found' : 'unknown' })
      conn.peerLookup = undefined
      return (conn.peer = found)
    }
    if (this.remoteLookup) {
      const q = { client: conn.clientAddr, clientPort: conn.clientPort, gate: conn.localAddr, gatePort: conn.localPort, elsewhere: conn.registered }
      return (conn.peerLookup = this.remoteLookup.lookup(q).then(settle))
    }
    let found: PeerProcess | null = null
    try {
      found = findPeerProcess(conn.clientAddr, conn.clientPort, conn.localAddr, conn.localPort, conn.registered)
    } catch {
      /* an unreadable /proc: recorded as unknown */
    }
    return settle(found)
  }

  private denyOutcome(id: string, reason: string, rule: Rule | null, t: Target, status = 403, pendingId: string | null = null): Outcome {
    return { id, action: 'deny', status, reason, rule: rule ? `${rule.text} (${rule.origin})` : null, address: null, port: t.port, service: null, pendingId }
  }

  /** Decide, audit (durably, before it takes effect), and return the outcome. */
  async decide(t: Target, conn: ConnState, via: string, requestId: string | null = null): Promise<Outcome> {
    const { out, durable } = await this.decideEarly(t, conn, via, requestId)
    await durable
    return out
  }

  /**
   * Decide and write the decision to the audit log; `durable` resolves once it is on stable
   * storage. The record is written (it survives the engine being killed) before this returns; a
   * tunnel starts connecting to an allowed destination while the fdatasync runs, and sends its 200
   * and the client's first byte only after `durable` (openRelay). So the fdatasync costs a tunnel
   * nothing where the upstream's handshake takes longer, which on the internet it always does. A
   * machine crash in that window can lose only the record of a connection that carried no byte
   * and got no answer (a failed connect's 502 waits for `durable` as well).
   */
  async decideEarly(t: Target, conn: ConnState, via: string, requestId: string | null = null): Promise<{ out: Outcome; durable: Promise<void> }> {
    const id = newId('d')
    const gen = this.generation
    let out: Outcome
    let peer: PeerProcess | null | 'skipped' | undefined
    let audited = false
    const svc = this.services.get(t.host)
    if (svc) {
      if (t.port !== 80) {
        out = this.denyOutcome(id, `${t.host} is served by cordon over plain HTTP on port 80: use http://${t.host}/ (CONNECT ${t.host}:80 works too)`, null, t, 400)
      } else {
        out = { id, action: 'allow', status: 200, reason: `${t.host} is always reachable`, rule: `service:${t.host}`, address: svc.host, port: svc.port, service: t.host, pendingId: null }
      }
    } else {
      const net = this.policy.network
      let name: NameDecision = decideName(net, this.session, t)
      let pendingId: string | null = null
      if (name.action === 'unlisted' && net.unlisted === 'ask') {
        const p = this.identify(conn)
        peer = p instanceof Promise ? await p : p
        const r = await this.ask(t, conn, via, peer === 'skipped' ? null : peer, id, requestId)
        pendingId = r.pendingId || null
        name = { action: r.ok ? 'allow' : 'deny', rule: null, reason: r.why }
      }
      if (name.action !== 'allow') {
        out = this.denyOutcome(id, name.action === 'deny' ? name.reason : 'no rule allows it', name.rule, t, 403, pendingId)
      } else {
        // resolve (or reuse this connection's resolution for the same generation) and check every address
        const ck = `${t.host}|${t.port}`
        const cached = conn.cache.get(ck)
        let addrs: string[] = []
        let err: string | null = null
        try {
          addrs = cached && cached.gen === gen ? [cached.address] : await this.resolve(t.host)
        } catch (e) {
          err = (e as NodeJS.ErrnoException).code ?? (e as Error).message
        }
        if (addrs.length === 0) {
          out = this.denyOutcome(id, `${t.host} does not resolve${err ? ` (${err})` : ''}`, null, t, 502, pendingId)
        } else {
          // every address the name resolves to must pass: a mixed answer is a rebinding attempt
          const own = this.ownAddresses()
          let chosen: string | null = null
          let bad: { rule: Rule | null; reason: string } | null = null
          for (const a of addrs) {
            const pa = parseIP(a)
            if (!pa) continue
            const d = checkAddress(net, this.session, t, pa, own.has(formatIP(pa)), name)
            if (d.action !== 'allow') {
              bad = d
              break
            }
            chosen ??= formatIP(pa)
          }
          if (!bad && chosen) {
            out = { id, action: 'allow', status: 200, reason: name.reason, rule: name.rule ? `${name.rule.text} (${name.rule.origin})` : pendingId ? `approval:${pendingId}` : null, address: chosen, port: t.port, service: null, pendingId }
          } else {
            out = this.denyOutcome(id, bad?.reason ?? `${t.host} has no usable address`, bad?.rule ?? null, t, 403, pendingId)
          }
        }
      }
    }
    // ---- audit before effect
    const mode = this.opts.identify ?? 'sandboxes'
    if (peer === undefined && (out.action === 'deny' || mode === 'all' || (mode === 'sandboxes' && conn.registered))) {
      const p = this.identify(conn)
      peer = p instanceof Promise ? await p : p
    }
    const who = peer === 'skipped' ? undefined : peer
    const rec: AuditRecord = {
      time: now(),
      type: 'decision',
      id,
      decision: out.action,
      sandbox: conn.sandbox,
      pid: who?.pid ?? null,
      binary: who?.binary ?? null,
      client: conn.client,
      via,
      host: t.host,
      port: t.port,
      address: out.address,
      method: t.method ?? null,
      path: t.path ?? null,
      rule: out.rule,
      reason: out.reason,
    }
    if (peer === 'skipped') rec.peer_lookup = 'skipped' // the /proc walk budget was spent (identify())
    if (out.pendingId) rec.pending_id = out.pendingId
    if (requestId) rec.request_id = requestId // correlation label only (see requestIdOf)
    this.mDecisions.inc({ decision: out.action, via })
    const key = `${out.action}|${out.rule}|${out.address}`
    const ck = `${t.host}|${t.port}`
    const prev = conn.cache.get(ck)
    if (out.action === 'allow' && prev && prev.gen === gen && prev.key === key) {
      // the same decision by the same rule on this connection is already on stable storage
      this.audit.append(rec)
      audited = true
    }
    const durable = audited ? DONE : this.audit.commit(rec)
    // "already on stable storage" only once it is: a pipelined request that repeats this decision
    // before then is committed itself (a repeat, `audited`, finds its entry there already)
    if (!audited && out.action === 'allow' && out.address && !out.service) {
      const entry = { gen, address: out.address, key }
      void durable.then(() => conn.cache.set(ck, entry))
    }
    return { out, durable }
  }

  // ---------------------------------------------------------------- gate: connections

  private onConnection(s: net.Socket): void {
    if (s.remoteAddress !== undefined) s.setNoDelay(true)
    const clientAddr = s.remoteAddress ?? 'unix'
    const sb = this.sandboxFor(clientAddr)
    const conn: ConnState = {
      sandbox: sb.id,
      registered: sb.registered,
      client: `${clientAddr}:${s.remotePort}`,
      clientAddr,
      clientPort: s.remotePort ?? 0,
      localAddr: s.localAddress ?? '',
      localPort: s.localPort ?? 0,
      sock: s,
      cache: new Map(),
    }
    this.conns.set(s, conn)
    this.sockets.add(s)
    this.mActive.inc()
    s.once('close', () => {
      this.sockets.delete(s)
      this.mActive.dec()
    })
  }

  private onClientError(err: NodeJS.ErrnoException, sock: net.Socket): void {
    if (!sock.writable || (err as { code?: string }).code === 'ECONNRESET') {
      sock.destroy()
      return
    }
    let status = 400
    let msg = `cordon egress gate: malformed request (${err.code ?? err.message}). Send an absolute-URI request (GET http://host/path) or CONNECT host:port.`
    if (err.code === 'HPE_HEADER_OVERFLOW') {
      status = 431
      msg = 'cordon egress gate: request headers too large (limit 16 KiB).'
    } else if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT' || err.code === 'HPE_HEADERS_TIMEOUT') {
      status = 408
      msg = 'cordon egress gate: request not received in time.'
    }
    const body = msg + '\n'
    sock.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
    sock.destroySoon?.()
  }

  private denyText(t: Target, o: Outcome): string {
    const hp = `${t.host.includes(':') ? `[${t.host}]` : t.host}:${t.port}`
    const lines = [`cordon egress gate: ${t.tunnel ? 'CONNECT to' : 'request to'} ${hp} denied: ${o.reason}.`]
    if (o.status === 403) {
      if (o.reason.startsWith('denied by the operator')) lines.push('Do not retry this destination: the operator refused it for this session.')
      else if (o.pendingId) lines.push(`An operator can allow it with \`cordon approve ${o.pendingId}\` (then retry), or add "${hp}" to network.allow in the policy.`)
      else lines.push(`An operator can allow it by adding "${hp}" to network.allow in the policy (${path.basename(this.opts.policyFile)}) and running \`cordon policy reload\`.`)
    }
    lines.push(`(decision ${o.id})`)
    return lines.join('\n') + '\n'
  }

  private sendDeny(res: http.ServerResponse, t: Target, o: Outcome): void {
    const body = this.denyText(t, o)
    res.writeHead(o.status, {
      'content-type': 'text/plain; charset=utf-8',
      'content-length': Buffer.byteLength(body),
      'x-cordon-decision': 'deny',
      'x-cordon-decision-id': o.id,
    })
    res.end(body)
  }

  private rawDeny(sock: net.Socket, t: Target, o: Outcome): void {
    const body = this.denyText(t, o)
    refuseAndRelease(
      sock,
      `HTTP/1.1 ${o.status} ${http.STATUS_CODES[o.status]}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nX-Cordon-Decision: deny\r\nX-Cordon-Decision-Id: ${o.id}\r\nConnection: close\r\n\r\n${body}`,
    )
  }

  private endRecord(o: Outcome, started: number, bytesIn: number, bytesOut: number, error?: string): void {
    this.mBytes.inc({ direction: 'in' }, bytesIn)
    this.mBytes.inc({ direction: 'out' }, bytesOut)
    const rec: AuditRecord = {
      time: now(),
      type: 'end',
      decision_id: o.id,
      bytes_in: bytesIn,
      bytes_out: bytesOut,
      duration_ms: Math.round((performance.now() - started) * 1000) / 1000,
    }
    if (error) rec.error = error
    this.audit.appendSoon(rec) // with the next record or within 20 ms: not a decision
  }

  /** Plain HTTP through the proxy: GET http://host/path */
  private async onRequest(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const started = performance.now()
    const conn = this.conns.get(req.socket)!
    // inside a CONNECT to one of cordon's services (serveInTunnel) the target is the tunnel's,
    // whatever the request line names
    const raw = conn.origin ? conn.origin + (req.url ?? '/').replace(/^[a-z]+:\/\/[^/]*/i, '') : (req.url ?? '')
    let url: URL
    try {
      if (!/^http:\/\//i.test(raw)) throw new Error('not absolute')
      url = new URL(raw)
    } catch {
      const body = /^https:\/\//i.test(raw)
        ? `cordon egress gate: send https:// through CONNECT (HTTPS_PROXY), not as an absolute-URI request.\n`
        : `cordon egress gate: this is an HTTP proxy; send absolute-URI requests (GET http://host/path, i.e. set HTTP_PROXY) or CONNECT host:port. Got "${raw.slice(0, 100)}".\n`
      res.writeHead(400, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body) })
      res.end(body)
      return
    }
    const t: Target = {
      host: normalizeHost(url.hostname),
      port: url.port ? Number(url.port) : 80,
      method: req.method ?? 'GET',
      path: normalizePath(url.pathname),
      tunnel: false,
    }
    const o = await this.decide(t, conn, 'http', requestIdOf(req))
    if (o.action === 'deny') {
      req.resume()
      this.sendDeny(res, t, o)
      return
    }
    const headers = endToEnd(req.rawHeaders, DROP_REQUEST)
    headers.push('Host', url.host)
    // cordon's own services learn which sandbox asked from the gate, never from the client: a
    // client's x-cordon-sandbox is always dropped, and the gate sets its own for the router and
    // gateway (their gate-facing listeners trust it: identity_header in router.yaml)
    if (o.service) headers.push(SANDBOX_HEADER, conn.sandbox)
    let bytesOut = 0
    let bytesIn = 0
    let done = false
    const finish = (err?: string) => {
      if (done) return
      done = true
      this.endRecord(o, started, bytesIn, bytesOut, err)
    }
    // the upstream leg: undici's dispatch with a handler that writes straight into the client's
    // response (raw header names kept, backpressure by pausing the upstream read); cheaper per
    // request than http.request + pipe
    // a request has a body when its headers say so (RFC 9112 section 6.3); req.complete cannot tell,
    // node:http emits 'request' before it has parsed the end of a bodiless message
    const hasBody = req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0')
    // the body is read by undici when the upstream connection is ready; counting through a
    // generator (not a 'data' listener, which would start the flow before undici reads)
    const counted = async function* (): AsyncGenerator<Buffer> {
      for await (const c of req as AsyncIterable<Buffer>) {
        bytesOut += c.length
        yield c
      }
    }
    let abort: ((err: Error) => void) | null = null
    let clientGone = false
    const fail = (e: Error & { code?: string }) => {
      const why = e.code && !e.code.startsWith('UND_ERR') ? e.code : e.message
      if (res.headersSent) {
        finish(`upstream error ${why}`)
        res.destroy()
        return
      }
      const body = `cordon egress gate: ${t.host}:${t.port} (${o.address}:${o.port}) failed: ${why}.\n`
      res.writeHead(502, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body) })
      res.end(body)
      finish(`upstream error ${why}`)
    }
    const handler: Dispatcher.DispatchHandler = {
      onConnect: (a: (err?: Error) => void) => {
        abort = a
        if (clientGone) a(new Error('client went away'))
      },
      onHeaders: (statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string) => {
        if (statusCode < 200) return true // 1xx: the final answer follows
        res.writeHead(statusCode, statusText, endToEnd(rawHeaders.map((b) => b.toString('latin1')), DROP_RESPONSE))
        res.on('drain', resume)
        return true
      },
      onData: (chunk: Buffer) => {
        bytesIn += chunk.length
        return res.write(chunk) // false pauses the upstream read until the client drains
      },
      onComplete: () => {
        res.end()
        finish()
      },
      onError: (e: Error) => {
        if (clientGone) return
        fail(e)
      },
    } as unknown as Dispatcher.DispatchHandler
    try {
      this.upstream.dispatch(
        {
          origin: `http://${o.address!.includes(':') ? `[${o.address}]` : o.address}:${o.port}`,
          method: (req.method ?? 'GET') as Dispatcher.HttpMethod,
          path: url.pathname + url.search,
          headers,
          body: hasBody ? (counted() as unknown as Readable) : null, // undici takes async iterables (its types list Readable only)
          headersTimeout: this.upstreamTimeoutMs,
          bodyTimeout: this.upstreamTimeoutMs,
        },
        handler,
      )
    } catch (e) {
      fail(e as Error) // invalid request for undici (a header it refuses): answer 502 with the reason
      return
    }
    res.on('close', () => {
      if (!res.writableFinished) {
        clientGone = true
        abort?.(new Error('client went away'))
        finish('client went away')
      }
    })
  }

  /**
   * `CONNECT inference.local:80` (or gateway.local): agents that tunnel plain HTTP this way get the
   * same treatment as absolute-URI requests. The gate answers 200 and serves the HTTP inside the
   * tunnel itself, so each request there is decided and audited, and carries the x-cordon-sandbox
   * header the router's and gateway's limits rely on (a blind relay would carry the client's
   * bytes, identity included, untouched).
   */
  private serveInTunnel(sock: net.Socket, head: Buffer, t: Target, o: Outcome, started: number): void {
    const read0 = sock.bytesRead
    sock.write(CONNECT_OK)
    const written0 = sock.bytesWritten // the 200 line is ours, not the destination's (as in openRelay)
    let why: string | undefined // set by stop()
    sock.once('cordon:stop', (reason: string) => (why = reason))
    sock.once('close', () => this.endRecord(o, started, sock.bytesWritten - written0, head.length + sock.bytesRead - read0, why))
    if (head.length) sock.unshift(head)
    this.server!.emit('connection', sock) // a fresh HTTP parser on the same socket
    this.conns.get(sock)!.origin = `http://${t.host}:${t.port}`
  }

  /** CONNECT host:port, or an Upgrade (WebSocket) absolute-URI request: decide, then relay bytes. */
  private async onTunnel(req: http.IncomingMessage, sock: net.Socket, head: Buffer, via: 'connect' | 'upgrade'): Promise<void> {
    const started = performance.now()
    const conn = this.conns.get(sock) ?? this.conns.get(req.socket)!
    sock.setNoDelay(true)
    sock.on('error', () => undefined)
    const tunnelIdle = this.opts.tunnelIdleMs ?? 3_600_000
    let t: Target
    let upgradePath = ''
    if (via === 'connect') {
      const hp = splitHostPort(req.url ?? '')
      if (!hp || hp.port === 0) {
        const body = `cordon egress gate: CONNECT needs host:port (e.g. CONNECT example.com:443), got "${(req.url ?? '').slice(0, 100)}".\n`
        refuseAndRelease(sock, `HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
        return
      }
      t = { host: normalizeHost(hp.host), port: hp.port, tunnel: true }
    } else {
      let url: URL
      try {
        if (!/^http:\/\//i.test(req.url ?? '')) throw new Error('x')
        url = new URL(req.url!)
      } catch {
        const body = 'cordon egress gate: an Upgrade request through the proxy needs an absolute URI (GET http://host/path); for wss:// use CONNECT.\n'
        refuseAndRelease(sock, `HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
        return
      }
      t = { host: normalizeHost(url.hostname), port: url.port ? Number(url.port) : 80, method: req.method ?? 'GET', path: normalizePath(url.pathname), tunnel: false }
      upgradePath = url.pathname + url.search
      const lines = [`${req.method} ${upgradePath} HTTP/1.1`, `Host: ${url.host}`]
      const rh = req.rawHeaders
      for (let i = 0; i < rh.length; i += 2) {
        const k = rh[i]!.toLowerCase()
        if (k === 'host' || k === 'proxy-authorization' || k === 'proxy-connection') continue
        lines.push(`${rh[i]}: ${rh[i + 1]}`)
      }
      head = Buffer.concat([Buffer.from(lines.join('\r\n') + '\r\n\r\n'), head])
    }
    // CONNECT: the CONNECT request's own headers (the tunnelled requests inside are opaque)
    const { out: o, durable } = await this.decideEarly(t, conn, via, requestIdOf(req))
    if (o.action === 'deny' || o.service) await durable
    if (o.action === 'deny') {
      this.rawDeny(sock, t, o)
      return
    }
    if (sock.destroyed) {
      this.endRecord(o, started, 0, 0, 'client went away')
      return
    }
    if (via === 'connect' && o.service && t.port === 80) return this.serveInTunnel(sock, head, t, o, started)
    openRelay({
      ...this.relayFor(conn, o, durable),
      client: sock,
      idleMs: tunnelIdle,
      onConnect: () => ({ toClient: via === 'connect' ? CONNECT_OK : EMPTY, toUpstream: head }),
      onFail: (e, connected) => {
        if (!connected) {
          const body = `cordon egress gate: ${t.host}:${t.port} (${o.address}:${o.port}) failed: ${e.code ?? e.message}.\n`
          refuseAndRelease(sock, `HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
        } else sock.destroy()
      },
      onDone: (bin, bout, err) => this.endRecord(o, started, bin, bout, err),
    })
  }
}
