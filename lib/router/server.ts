/**
 * The privacy router (inference.local): the only process that holds provider keys.
 *
 * Per request: identify the sandbox from the listener/socket the request came in on (never from
 * anything the sandbox can set), read and parse the body (bounded), pick the route by model alias,
 * check limits, then walk the route's targets: drop every client credential, add the target's key
 * on the upstream leg only, forward with undici (a keep-alive Pool per upstream origin, redirects
 * never followed), fall back on 429/5xx/connect error/timeout before anything was sent to the
 * client, stream SSE chunk by chunk through the redactor, and audit the call.
 */
import http from 'node:http'
import { createHash, timingSafeEqual } from 'node:crypto'
import { chmodSync, existsSync, readFileSync, unlinkSync, watch, type FSWatcher } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { performance } from 'node:perf_hooks'
import { once, EventEmitter } from 'node:events'
import { Pool, errors as undiciErrors, type Dispatcher } from 'undici'
import { Readable } from 'node:stream'
import { createGunzip, createBrotliDecompress, createInflate } from 'node:zlib'
import pino from 'pino'
import { compileConfig, ConfigError, hashText, matchCidr, type ApiFamily, type CompiledConfig, type ListenerSpec, type Price, type Route, type Target } from './config.js'
import { openKeyStore, keyHint, fingerprint, type KeyStore } from './keys.js'
import { Redactor } from './redact.js'
import { apiError, sseError, type ApiError, type ErrorKind } from './errors.js'
import { Limiter, cost, type Hold } from './limits.js'
import { RouterMetrics } from './metrics.js'
import { AuditLog, type AuditRecord } from './audit.js'
import { SseEventFilter, SseUsageScanner, usageFromJsonBuffer, type Usage } from './usage.js'

export interface RouterOptions {
  /** Path of router.yaml. */
  config: string
  /** Main listeners (HOST:PORT, [V6]:PORT or a unix socket path); identity by source address. */
  listen?: string[]
  /** Control listener: a unix socket path (recommended) or HOST:PORT. */
  control?: string | null
  /**
   * Bearer token the control listener requires (Authorization: Bearer TOKEN) on every endpoint
   * but a bare /healthz. Mandatory for a HOST:PORT control listener (start refuses without it);
   * optional on a unix socket, whose 0600 mode already limits it to the router's user.
   */
  controlToken?: string | null
  keys?: string | null
  audit?: string | null
  state?: string | null
  /** Watch the config's directory and reload on change (default true). */
  watch?: boolean
  /** With watch: also compare the files' hashes every pollMs (default 2000), a backstop for missed events. */
  pollMs?: number
  /** Log destination (default stderr); everything written passes through the redactor. */
  logDestination?: { write(s: string): unknown }
  logLevel?: string
  env?: NodeJS.ProcessEnv
  /** Override the audit sink (tests). */
  auditDestination?: { write(s: string): unknown }
  /** Collect default process metrics (default true). */
  defaultMetrics?: boolean
}

const ENDPOINTS: Record<string, { family: ApiFamily | 'any'; needsModel: boolean }> = {
  '/chat/completions': { family: 'openai', needsModel: true },
  '/completions': { family: 'openai', needsModel: true },
  '/embeddings': { family: 'openai', needsModel: true },
  '/responses': { family: 'openai', needsModel: true },
  '/messages': { family: 'anthropic', needsModel: true },
  '/messages/count_tokens': { family: 'anthropic', needsModel: true },
}

/** output tokens held for a call that names no maximum (see holdFor) */
export const DEFAULT_HELD_OUTPUT_TOKENS = 4096

/**
 * What a call is expected to cost at most, held against its sandbox's tpm and spend while it runs
 * (lib/router/limits.ts): its body's bytes / 4 as input tokens (generous for text in JSON), plus the
 * output it asks for at most (max_tokens, max_completion_tokens or max_output_tokens; none for
 * embeddings and token counts) or DEFAULT_HELD_OUTPUT_TOKENS when it names none; priced as the
 * route's first target.
 */
export function holdFor(bodyBytes: number, body: Record<string, unknown>, path: string, price: Price | undefined): Hold {
  const input = Math.ceil(bodyBytes / 4)
  let output = 0
  if (path !== '/embeddings' && path !== '/messages/count_tokens') {
    const asked = [body.max_tokens, body.max_completion_tokens, body.max_output_tokens].find((v) => typeof v === 'number' && Number.isFinite(v) && v >= 0) as number | undefined
    output = asked !== undefined ? Math.ceil(asked) : DEFAULT_HELD_OUTPUT_TOKENS
  }
  return { tokens: input + output, usd: cost(price, input, output) }
}

/** Client headers forwarded upstream; everything else (credentials, cookies, identity, hop-by-hop) is dropped. */
const FORWARD_REQ = new Set(['anthropic-version', 'anthropic-beta', 'openai-beta', 'accept', 'user-agent', 'idempotency-key', 'x-request-id'])
/** Upstream response headers passed back (values redacted). */
const FORWARD_RES_EXACT = new Set(['content-type', 'x-request-id', 'request-id', 'openai-processing-ms', 'openai-version', 'retry-after', 'retry-after-ms', 'cache-control'])
// and every header starting with x-ratelimit- or anthropic-ratelimit- (responseHeaders)

interface Listener {
  spec: ListenerSpec
  server: http.Server
  address: string
}

class ClientError extends Error {
  constructor(
    readonly kind: ErrorKind,
    message: string,
    readonly retryAfterS?: number,
  ) {
    super(message)
  }
}

function parseListen(s: string): { path: string } | { host: string; port: number } {
  if (s.startsWith('/') || s.startsWith('./') || s.startsWith('unix:')) return { path: s.replace(/^unix:/, '') }
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(s) ?? /^([^:]+):(\d+)$/.exec(s)
  if (!m) throw new Error(`cannot parse listen address "${s}": use HOST:PORT, [IPV6]:PORT or an absolute unix socket path`)
  return { host: m[1]!, port: Number(m[2]) }
}

async function listenOn(server: http.Server, where: string, mode?: number): Promise<string> {
  const p = parseListen(where)
  if ('path' in p) {
    if (existsSync(p.path)) unlinkSync(p.path)
    server.listen(p.path)
    await once(server, 'listening')
    if (mode !== undefined) chmodSync(p.path, mode)
    return p.path
  }
  server.listen(p.port, p.host)
  await once(server, 'listening')
  const a = server.address()
  if (a && typeof a === 'object') return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`
  return where
}

function classify(err: unknown): 'timeout' | 'connect' | 'aborted' | 'other' {
  const e = err as { code?: string; name?: string; cause?: { code?: string } }
  if (e?.name === 'AbortError' || e?.code === 'UND_ERR_ABORTED' || e?.code === 'ABORT_ERR') return 'aborted'
  if (err instanceof undiciErrors.HeadersTimeoutError || err instanceof undiciErrors.BodyTimeoutError || err instanceof undiciErrors.ConnectTimeoutError) return 'timeout'
  const code = e?.code ?? e?.cause?.code
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'ETIMEDOUT') return 'timeout'
  if (code && /^(ECONNREFUSED|ECONNRESET|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ENETUNREACH|EPIPE|UND_ERR_SOCKET|UND_ERR_CLOSED)$/.test(code)) return 'connect'
  return 'other'
}

export class PrivacyRouter {
  config!: CompiledConfig
  readonly redactor = new Redactor()
  readonly metrics: RouterMetrics
  readonly log: pino.Logger
  readonly limiter: Limiter
  readonly audit: AuditLog
  private pools = new Map<string, Pool>()
  private listeners = new Map<string, Listener>()
  private control: http.Server | null = null
  controlAddress: string | null = null
  private controlTokenHash: Buffer | null = null
  private watchers: FSWatcher[] = []
  private reloadTimer: NodeJS.Timeout | null = null
  private pollTimer: NodeJS.Timeout | null = null
  private watchedHash: string | null = null
  private keysHash = ''
  private lastRejected = ''
  private inflight = 0
  private closing = false

  private constructor(private readonly opts: RouterOptions) {
    const sink = opts.logDestination ?? pino.destination({ dest: 2, sync: false })
    this.log = pino({ name: 'cordon-router', level: opts.logLevel ?? 'info' }, { write: (s: string) => sink.write(this.redactor.string(s)) })
    this.metrics = new RouterMetrics(opts.defaultMetrics ?? true, () => this.inflight)
    this.limiter = new Limiter(opts.state ?? null)
    this.audit = new AuditLog(opts.audit ?? null, this.redactor, opts.auditDestination)
    this.audit.onError = (e) => this.log.error({ err: e.message }, 'audit write failed: the record of this call may be lost')
  }

  /** Load the config (throws ConfigError with file:line problems), open the listeners. */
  static async start(opts: RouterOptions): Promise<PrivacyRouter> {
    const r = new PrivacyRouter(opts)
    try {
      const { cfg, keysHash } = r.loadFresh()
      r.install(cfg, keysHash)
      for (const l of opts.listen ?? []) await r.openListener({ listen: l })
      await r.syncListeners()
      if (opts.control) {
        if (opts.controlToken !== undefined && opts.controlToken !== null && opts.controlToken.trim().length < 16) {
          throw new Error('the control token is shorter than 16 characters; generate one with `openssl rand -hex 32 > FILE` and pass --control-token-file FILE')
        }
        if (!('path' in parseListen(opts.control)) && !opts.controlToken) {
          throw new Error(
            `refusing to open the control listener on ${opts.control} (TCP) without authentication: anything that can reach that port could read status and metrics and trigger reloads. ` +
              'Give --control-token-file FILE (or set CORDON_ROUTER_TOKEN) with a random token (`openssl rand -hex 32`), or use a unix socket path for --control.',
          )
        }
        r.controlTokenHash = opts.controlToken ? createHash('sha256').update(opts.controlToken.trim()).digest() : null
        r.control = http.createServer((req, res) => void r.handleControl(req, res))
        r.controlAddress = await listenOn(r.control, opts.control, 0o600)
      }
      if (opts.watch !== false) r.startWatching()
    } catch (e) {
      await r.close()
      throw e
    }
    r.log.info({ listeners: r.addresses(), control: r.controlAddress, routes: r.config.routes.map((x) => x.name), config: r.config.hash.slice(0, 12) }, 'router started')
    return r
  }

  addresses(): string[] {
    return [...this.listeners.values()].map((l) => l.address)
  }

  private loadFresh(): { cfg: CompiledConfig; keysHash: string } {
    const file = resolve(this.opts.config)
    let store: KeyStore | null = null
    let keysHash = ''
    if (this.opts.keys) {
      if (existsSync(this.opts.keys)) {
        keysHash = hashText(readFileSync(this.opts.keys))
        store = openKeyStore(this.opts.keys)
      } else {
        store = openKeyStore(this.opts.keys, false)
      }
    }
    let text: string
    try {
      text = readFileSync(file, 'utf8')
    } catch (e) {
      throw new ConfigError(`cannot read router config ${file}: ${(e as NodeJS.ErrnoException).code}; pass --config PATH to an existing router.yaml`, file, [])
    }
    const cfg = compileConfig(text, this.opts.config, { keyStore: store, env: this.opts.env ?? process.env })
    return { cfg, keysHash }
  }

  private install(cfg: CompiledConfig, keysHash: string): void {
    for (const k of cfg.keys) this.redactor.add(k)
    for (const r of cfg.routes) for (const t of r.targets) if (t.keyError) this.log.warn({ route: r.name, target: t.label }, `no usable key: ${t.keyError}`)
    this.config = cfg
    this.keysHash = keysHash
    this.audit.syncMs = cfg.auditSyncMs
    // close pools no route uses any more; close() lets requests in flight on them finish
    const origins = new Set(cfg.routes.flatMap((r) => r.targets.map((t) => t.origin)))
    for (const [o, p] of this.pools) {
      if (!origins.has(o)) {
        this.pools.delete(o)
        void p.close().catch(() => {})
      }
    }
  }

  /** Continue the audit in a file opened anew at its path (after logrotate renamed it). */
  reopenAudit(): boolean {
    const ok = this.audit.reopen()
    if (ok) this.log.info('audit log reopened')
    return ok
  }

  /**
   * Re-read the config and keys. Invalid: the old config stays and the error (with file:line) is
   * returned. In-flight requests keep the config object they started with.
   */
  async reload(reason = 'control'): Promise<{ ok: true; changed: boolean; hash: string } | { ok: false; error: string }> {
    let fresh: { cfg: CompiledConfig; keysHash: string }
    try {
      fresh = this.loadFresh()
    } catch (e) {
      const msg = (e as Error).message
      this.metrics.reloads.inc({ result: 'rejected' })
      if (this.lastRejected !== msg || reason === 'control') this.log.error({ reason }, msg)
      this.lastRejected = msg
      return { ok: false, error: msg }
    }
    this.lastRejected = ''
    const changed = fresh.cfg.hash !== this.config.hash || fresh.keysHash !== this.keysHash
    if (changed) {
      this.install(fresh.cfg, fresh.keysHash)
      try {
        await this.syncListeners()
      } catch (e) {
        this.log.error({ err: (e as Error).message }, 'could not open a listener from the new config')
      }
      this.metrics.reloads.inc({ result: 'applied' })
      this.log.info({ reason, config: fresh.cfg.hash.slice(0, 12), routes: fresh.cfg.routes.map((r) => r.name) }, 'config reloaded')
    } else this.metrics.reloads.inc({ result: 'unchanged' })
    return { ok: true, changed, hash: this.config.hash }
  }

  /**
   * Reload when the config or key store changes. Watches the DIRECTORIES and accepts events of any
   * name: a Kubernetes ConfigMap/Secret update re-points the `..data` symlink, so the only events
   * are named `..data_tmp`/`..data`, never router.yaml; editors rename temp files over the original.
   * Every event (debounced) and a slow poll (missed or coalesced events, symlinks into other
   * directories, filesystems without inotify) compare the files' content hashes, and only a change
   * reloads. Reading mid-swap fails quietly and the next check tries again.
   */
  private startWatching(): void {
    const files = [resolve(this.opts.config), ...(this.opts.keys ? [resolve(this.opts.keys)] : [])]
    const fingerprint = (): string | null => {
      const parts: string[] = []
      for (const f of files) {
        try {
          parts.push(hashText(readFileSync(f)))
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ENOENT') return null // unreadable now (mid-swap): decide later
          parts.push('-')
        }
      }
      return parts.join(':')
    }
    this.watchedHash = fingerprint()
    const check = () => {
      if (this.closing) return
      const h = fingerprint()
      if (h === null || h === this.watchedHash) return
      this.watchedHash = h
      void this.reload('file changed')
    }
    for (const d of new Set(files.map((f) => dirname(f)))) {
      try {
        const w = watch(d, { persistent: false }, () => {
          if (this.reloadTimer) clearTimeout(this.reloadTimer)
          this.reloadTimer = setTimeout(check, 100)
          this.reloadTimer.unref()
        })
        w.on('error', (e) => this.log.warn({ dir: d, err: e.message }, 'config watch failed; the config is still polled every few seconds, or reload through the control socket'))
        this.watchers.push(w)
      } catch (e) {
        this.log.warn({ dir: d, err: (e as Error).message }, 'cannot watch the config directory; the config is still polled every few seconds, or reload through the control socket')
      }
    }
    this.pollTimer = setInterval(check, this.opts.pollMs ?? 2000)
    this.pollTimer.unref()
  }

  private async openListener(spec: ListenerSpec): Promise<void> {
    const server = http.createServer({ keepAliveTimeout: 65_000, requestTimeout: 0, headersTimeout: 60_000 }, (req, res) => void this.handle(req, res, spec))
    const address = await listenOn(server, spec.listen, 'path' in parseListen(spec.listen) ? 0o666 : undefined)
    this.listeners.set(spec.listen, { spec, server, address })
  }

  private async syncListeners(): Promise<void> {
    const wanted = new Map(this.config.listeners.map((l) => [l.listen, l]))
    const cli = new Set(this.opts.listen ?? [])
    for (const [k, l] of this.listeners) {
      if (cli.has(k)) continue
      const w = wanted.get(k)
      if (!w) {
        this.listeners.delete(k)
        l.server.close()
      } else l.spec = w // identity changes apply to new requests on the same socket
    }
    for (const [k, spec] of wanted) if (!this.listeners.has(k)) await this.openListener(spec)
  }

  private pool(origin: string): Pool {
    let p = this.pools.get(origin)
    if (!p) {
      p = new Pool(origin, { connections: 1024, keepAliveTimeout: 30_000, connect: { timeout: 10_000 } })
      this.pools.set(origin, p)
    }
    return p
  }

  // ---------------------------------------------------------------- request path

  private identify(req: http.IncomingMessage, spec: ListenerSpec, cfg: CompiledConfig): string {
    if (spec.sandbox) return spec.sandbox
    if (spec.identityHeader) {
      const v = req.headers[spec.identityHeader]
      if (typeof v === 'string' && /^[A-Za-z0-9_.:-]{1,128}$/.test(v)) return v
      throw new ClientError('permission', `this listener identifies sandboxes by the ${spec.identityHeader} header set by the egress gate, and the request had none`)
    }
    const addr = req.socket.remoteAddress ?? 'unix'
    const id = matchCidr(cfg, addr)
    if (id) return id
    if (cfg.unmapped === 'reject') throw new ClientError('permission', `source address ${addr} is not mapped to a sandbox in the router config (sandboxes.<id>.addresses)`)
    return `addr:${addr.startsWith('::ffff:') ? addr.slice(7) : addr}`
  }

  private send(res: http.ServerResponse, e: ApiError): void {
    if (res.headersSent) {
      res.end()
      return
    }
    res.writeHead(e.status, { ...e.headers, 'content-length': Buffer.byteLength(e.body) })
    res.end(e.body)
  }

  private readBody(req: http.IncomingMessage, max: number): Promise<Buffer> {
    const cl = req.headers['content-length']
    if (cl !== undefined && Number(cl) > max) return Promise.reject(new ClientError('too_large', `request body of ${cl} bytes exceeds the router's limit of ${max} bytes (max_body_bytes in router.yaml)`))
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = []
      let size = 0
      const onData = (c: Buffer) => {
        size += c.length
        if (size > max) {
          req.off('data', onData)
          req.pause()
          reject(new ClientError('too_large', `request body exceeds the router's limit of ${max} bytes (max_body_bytes in router.yaml)`))
          return
        }
        chunks.push(c)
      }
      req.on('data', onData)
      req.once('end', () => resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)))
      req.once('error', reject)
      req.once('close', () => {
        if (!req.complete) reject(new ClientError('invalid_request', 'client closed the connection before the request body ended'))
      })
    })
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse, spec: ListenerSpec): Promise<void> {
    const t0 = performance.now()
    const cfg = this.config
    let url = req.url ?? '/'
    if (url.charCodeAt(0) !== 47) {
      // absolute-form request line (a proxy passed `POST http://inference.local/v1/...` on as is)
      const m = /^https?:\/\/[^/?#]*(.*)$/i.exec(url)
      url = m ? m[1] || '/' : url
    }
    const q = url.indexOf('?')
    let path = q < 0 ? url : url.slice(0, q)
    const query = q < 0 ? '' : url.slice(q)
    if (path.startsWith('/v1/')) path = path.slice(3)
    else if (path === '/v1') path = '/'
    const anthropicHint = path.startsWith('/messages') || req.headers['anthropic-version'] !== undefined
    let family: ApiFamily = anthropicHint ? 'anthropic' : 'openai'
    let sandbox = '?'
    const rid = requestId(req.headers['x-cordon-request-id'])
    // one object shape for every record (a conditional spread here would put each record in
    // dictionary mode); request_id is dropped from the JSON when undefined
    const rec: AuditRecord = {
      time: isoNow(),
      sandbox,
      request_id: rid,
      route: null,
      model: null,
      upstream_model: null,
      target: null,
      path: path,
      stream: false,
      status: 0,
      tokens_in: null,
      tokens_out: null,
      cost_usd: null,
      ttfb_ms: null,
      total_ms: 0,
      fallback: [],
    }
    // the response is not finished (end) before the call's audit record is written (and, with
    // audit.sync_ms 0, fdatasync'd): end() is held here and released by the audit commit below
    const realEnd = res.end
    let heldEnd: unknown[] | null = null
    res.end = function (this: http.ServerResponse, ...args: unknown[]) {
      heldEnd = args
      return this
    } as typeof res.end
    this.inflight++
    try {
      sandbox = this.identify(req, spec, cfg)
      rec.sandbox = sandbox
      if ((path === '/models' || path.startsWith('/models/')) && req.method === 'GET') {
        this.models(res, cfg, family, path)
        rec.status = res.statusCode
        return
      }
      const ep = ENDPOINTS[path]
      if (!ep) throw new ClientError('not_found', `unknown path ${req.method} /v1${path}: inference.local serves POST /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses, /v1/messages and GET /v1/models`)
      if (ep.family !== 'any') family = ep.family
      if (req.method !== 'POST') throw new ClientError('not_found', `/v1${path} accepts POST only, not ${req.method}`)
      const raw = await this.readBody(req, cfg.maxBodyBytes)
      let body: Record<string, unknown>
      try {
        body = JSON.parse(raw.toString('utf8'))
      } catch (e) {
        throw new ClientError('invalid_request', `request body is not valid JSON: ${(e as Error).message}`)
      }
      if (!body || typeof body !== 'object' || Array.isArray(body)) throw new ClientError('invalid_request', 'request body must be a JSON object')
      const model = body.model
      if (model !== undefined && typeof model !== 'string') throw new ClientError('invalid_request', '"model" must be a string')
      rec.model = model ?? null
      const route = model ? cfg.byModel.get(model) : cfg.defaultRoute
      if (!route) {
        const avail = [...cfg.byModel.keys()].join(', ')
        throw new ClientError(model ? 'not_found' : 'invalid_request', model ? `model "${model}" is not served by this router; available models: ${avail}` : `request has no "model"; available models: ${avail}`)
      }
      rec.route = route.name
      if (route.family !== family) {
        throw new ClientError('invalid_request', `model "${model}" (route ${route.name}) speaks the ${route.family} API; call ${route.family === 'anthropic' ? 'POST /v1/messages' : 'POST /v1/chat/completions or /v1/responses'} instead of /v1${path}`)
      }
      const limits = cfg.sandboxes.get(sandbox)?.limits ?? cfg.defaultLimits
      // under a token or spend limit the call holds an estimate of its cost until it ends (limits.ts)
      const hold = limits.tpm || limits.spend ? holdFor(raw.length, body, path, cfg.prices.get(route.targets[0]!.model)) : undefined
      const rej = this.limiter.admit(sandbox, limits, hold)
      if (rej) {
        this.metrics.rejections.inc({ sandbox, kind: rej.kind })
        throw new ClientError(rej.kind, rej.message, rej.retryAfterS)
      }
      rec.stream = body.stream === true
      if (cfg.auditPrompts) rec.prompt = body.messages ?? body.input ?? body.prompt ?? null
      try {
        await this.forward(req, res, cfg, route, path + query, body, rec, t0, sandbox, limits)
      } finally {
        // its usage, if any, is recorded by now (account()); failed, aborted or not, it holds nothing more
        this.limiter.release(sandbox, hold)
      }
    } catch (e) {
      if (e instanceof ClientError) {
        const err = apiError(family, e.kind, this.redactor.string(e.message), { retryAfterS: e.retryAfterS })
        if (e.kind === 'too_large') err.headers['connection'] = 'close'
        this.send(res, err)
        rec.status = err.status
        rec.error = e.message
      } else {
        const msg = this.redactor.string((e as Error)?.message ?? String(e))
        this.log.error({ request_id: rid, err: msg, path }, 'request failed')
        this.send(res, apiError(family, 'internal', `router error: ${msg}`))
        rec.status = 500
        rec.error = msg
      }
    } finally {
      this.inflight--
      const total = performance.now() - t0
      rec.total_ms = Math.round(total * 1000) / 1000
      const route = rec.route ?? '-'
      const m = this.metrics.call(route, sandbox, rec.status)
      m.requests++
      m.duration.observe(total / 1000)
      if (rec.ttfb_ms !== null) m.ttfb.observe(rec.ttfb_ms / 1000)
      // one line per call: info when it failed or fell back, debug otherwise (the audit has all)
      const notable = rec.status >= 400 || rec.fallback.length > 0 || rec.client_aborted === true
      if (notable ? this.log.isLevelEnabled('info') : this.log.isLevelEnabled('debug')) {
        this.log[notable ? 'info' : 'debug'](
          { request_id: rid, sandbox, route: rec.route, target: rec.target, path, status: rec.status, total_ms: rec.total_ms, fallback: rec.fallback.length ? rec.fallback : undefined, err: rec.error },
          'call',
        )
      }
      this.audit.commit(rec, () => {
        res.end = realEnd
        if (heldEnd) (realEnd as (...a: unknown[]) => unknown).apply(res, heldEnd)
        else if (!res.writableEnded) (realEnd as () => unknown).call(res)
      })
    }
  }

  private models(res: http.ServerResponse, cfg: CompiledConfig, family: ApiFamily, path: string): void {
    const ids = [...cfg.byModel.keys()]
    const one = path.startsWith('/models/') ? decodeURIComponent(path.slice(8)) : null
    if (one !== null && !cfg.byModel.has(one)) {
      this.send(res, apiError(family, 'not_found', `model "${one}" is not served by this router; available models: ${ids.join(', ')}`))
      return
    }
    const created = Math.floor(cfg.loadedAt / 1000)
    const mk = (id: string) =>
      family === 'anthropic'
        ? { type: 'model', id, display_name: id, created_at: new Date(cfg.loadedAt).toISOString() }
        : { id, object: 'model', created, owned_by: `cordon:${cfg.byModel.get(id)!.name}` }
    const body = JSON.stringify(
      one !== null ? mk(one) : family === 'anthropic' ? { data: ids.map(mk), has_more: false, first_id: ids[0] ?? null, last_id: ids[ids.length - 1] ?? null } : { object: 'list', data: ids.map(mk) },
    )
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
    res.end(body)
  }

  private upstreamHeaders(req: http.IncomingMessage, t: Target, len: number): Record<string, string> {
    const h: Record<string, string> = {}
    const rh = req.headers
    for (const k in rh) {
      const v = rh[k]
      if (typeof v === 'string' && FORWARD_REQ.has(k)) h[k] = v
    }
    Object.assign(h, t.headers)
    if (t.family === 'anthropic' && !h['anthropic-version']) h['anthropic-version'] = '2023-06-01'
    h['content-type'] = 'application/json'
    h['content-length'] = String(len)
    h['accept-encoding'] = 'identity'
    if (t.key) {
      if (t.auth === 'bearer') h['authorization'] = `Bearer ${t.key}`
      else if (t.auth === 'x-api-key') h['x-api-key'] = t.key
      else if (t.auth === 'api-key') h['api-key'] = t.key
    }
    return h
  }

  private responseHeaders(up: Record<string, string | string[] | undefined>, route: Route, targetIndex: number): Record<string, string> {
    const out: Record<string, string> = {}
    for (const k in up) {
      const v = up[k]
      if (v === undefined) continue
      if (FORWARD_RES_EXACT.has(k) || k.startsWith('x-ratelimit-') || k.startsWith('anthropic-ratelimit-')) out[k] = this.redactor.string(Array.isArray(v) ? v.join(', ') : v)
    }
    out['x-cordon-route'] = route.name
    out['x-cordon-target'] = String(targetIndex)
    return out
  }

  private async forward(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    cfg: CompiledConfig,
    route: Route,
    rest: string,
    body: Record<string, unknown>,
    rec: AuditRecord,
    t0: number,
    sandbox: string,
    limits: CompiledConfig['defaultLimits'],
  ): Promise<void> {
    // undici accepts an EventEmitter as signal: cheaper than an AbortController per request
    const ac = new Aborter()
    let clientGone = false
    const onClose = () => {
      if (!res.writableFinished) {
        clientGone = true
        ac.abort()
      }
    }
    res.on('close', onClose)
    const isStream = body.stream === true
    const chatLike = rest.startsWith('/chat/completions') || rest.startsWith('/completions')
    const noKey: Target[] = []
    let lastFailure: { kind: ErrorKind; message: string } | null = null
    try {
      for (let i = 0; i < route.targets.length; i++) {
        const t = route.targets[i]!
        const last = i === route.targets.length - 1
        if (t.auth !== 'none' && !t.key) {
          noKey.push(t)
          rec.fallback.push({ target: t.label, reason: 'no_key' })
          continue
        }
        const payload: Record<string, unknown> = { ...body, model: t.model }
        let filterUsage = false
        if (isStream && chatLike && t.family === 'openai' && t.streamUsage) {
          const so = body.stream_options as { include_usage?: boolean } | undefined
          if (!so?.include_usage) {
            payload.stream_options = { ...(so ?? {}), include_usage: true }
            filterUsage = true
          }
        }
        const buf = Buffer.from(JSON.stringify(payload))
        let up: UpstreamAnswer
        try {
          const opts = {
            method: 'POST' as const,
            path: t.basePath + rest,
            headers: this.upstreamHeaders(req, t, buf.length),
            body: buf,
            headersTimeout: t.timeoutMs,
            bodyTimeout: t.timeoutMs,
          }
          // a non-streamed call is read whole anyway: collect it in a dispatch handler (no
          // Readable, no async iterator per call); a streamed one needs the body as a stream
          up = isStream ? await this.pool(t.origin).request({ ...opts, signal: ac }) : await requestBuffered(this.pool(t.origin), opts, ac)
        } catch (e) {
          if (clientGone) {
            rec.client_aborted = true
            rec.status = 499
            return
          }
          const c = classify(e)
          const reason = c === 'timeout' ? 'timeout' : c === 'connect' ? 'connect' : 'error'
          this.metrics.upstreamErrors.inc({ route: route.name, target: t.label, reason })
          const msg = this.redactor.string(`${t.label}: ${reason === 'timeout' ? `no response within ${t.timeoutMs} ms` : (e as Error).message}`)
          lastFailure = { kind: reason === 'timeout' ? 'timeout' : 'upstream', message: `upstream ${msg}` }
          rec.fallback.push({ target: t.label, reason })
          if (!last && (route.fallbackOn.has(reason as 'timeout' | 'connect') || reason === 'error')) {
            this.metrics.fallbacks.inc({ route: route.name })
            continue
          }
          break
        }
        const st = up.statusCode
        const cond = st === 429 ? '429' : st >= 500 ? '5xx' : null
        if (st >= 300 && st < 400) {
          discard(up)
          this.metrics.upstreamErrors.inc({ route: route.name, target: t.label, reason: 'redirect' })
          rec.fallback.push({ target: t.label, reason: 'redirect', status: st })
          lastFailure = { kind: 'upstream', message: `upstream ${t.label} answered with a redirect (${st}); the router does not follow redirects, check base_url` }
          break
        }
        if (cond) this.metrics.upstreamErrors.inc({ route: route.name, target: t.label, reason: String(st) })
        if (cond && !last && route.fallbackOn.has(cond)) {
          discard(up)
          rec.fallback.push({ target: t.label, reason: cond, status: st })
          this.metrics.fallbacks.inc({ route: route.name })
          continue
        }
        // committed to this target
        rec.target = t.label
        rec.upstream_model = t.model
        const headers = this.responseHeaders(up.headers, route, i)
        const ct = String(up.headers['content-type'] ?? '')
        const enc = String(up.headers['content-encoding'] ?? 'identity').toLowerCase()
        if (enc !== 'identity' && enc !== '') {
          // the router asked for identity; an upstream that compresses anyway is decoded here so
          // redaction and usage accounting see the real bytes
          const dec = enc === 'gzip' || enc === 'x-gzip' ? createGunzip() : enc === 'br' ? createBrotliDecompress() : enc === 'deflate' ? createInflate() : null
          if (!dec) {
            discard(up)
            lastFailure = { kind: 'upstream', message: `upstream ${t.label} answered with content-encoding ${enc}, which the router cannot decode` }
            rec.fallback.push({ target: t.label, reason: 'encoding' })
            break
          }
          if ('body' in up) {
            up.body.on('error', (e) => dec.destroy(e))
            ;(up as { body: unknown }).body = up.body.pipe(dec)
          } else {
            const whole = up.whole
            up = { statusCode: up.statusCode, headers: up.headers, whole: whole.then((b) => readAll(Readable.from([b]).pipe(dec))) }
          }
        }
        if ('body' in up && st < 300 && ct.includes('text/event-stream')) {
          await this.pipeStream(up, res, headers, rec, t0, route, filterUsage, ac)
        } else {
          // buffered (non-streamed, or an error answer): read all, then send; an error while
          // reading is still before anything reached the client, so it may fall back
          let out: Buffer
          try {
            out = await ('whole' in up ? up.whole : readAll(up.body))
          } catch (e) {
            if (clientGone) {
              rec.client_aborted = true
              rec.status = 499
              return
            }
            const c = classify(e)
            const reason = c === 'timeout' ? 'timeout' : 'connect'
            this.metrics.upstreamErrors.inc({ route: route.name, target: t.label, reason })
            rec.fallback.push({ target: t.label, reason })
            lastFailure = { kind: reason === 'timeout' ? 'timeout' : 'upstream', message: this.redactor.string(`upstream ${t.label}: response body failed: ${(e as Error).message}`) }
            rec.target = null
            rec.upstream_model = null
            if (!last && route.fallbackOn.has(reason)) {
              this.metrics.fallbacks.inc({ route: route.name })
              continue
            }
            break
          }
          if (st < 300 && ct.includes('json')) {
            const u = usageFromJsonBuffer(out)
            if (u) this.account(rec, u, cfg, t, route, sandbox, limits)
          }
          out = this.redactor.buffer(out)
          headers['content-length'] = String(out.length)
          rec.ttfb_ms = round(performance.now() - t0)
          res.writeHead(st, headers)
          res.end(out)
          rec.status = st
        }
        if (rec.stream && rec.tokens_in !== null) this.account(rec, { input: rec.tokens_in, output: rec.tokens_out ?? 0 }, cfg, t, route, sandbox, limits, true)
        return
      }
      // every target failed or had no key
      if (noKey.length === route.targets.length) {
        const t = noKey[0]!
        const hint = keyHint(t.keyRef, route.name, t.keyRef?.store ?? (t.provider === 'openai-compatible' ? route.name : t.provider))
        throw new ClientError('no_key', t.keyError ? `${hint} (${t.keyError})` : hint)
      }
      const f = lastFailure ?? { kind: 'upstream' as ErrorKind, message: 'no upstream target could serve the request' }
      throw new ClientError(f.kind, `${f.message}${rec.fallback.length > 1 ? ` (tried ${rec.fallback.map((s) => `${s.target}: ${s.reason}`).join('; ')})` : ''}`)
    } finally {
      res.off('close', onClose)
    }
  }

  private account(rec: AuditRecord, u: Usage, cfg: CompiledConfig, t: Target, route: Route, sandbox: string, limits: CompiledConfig['defaultLimits'], fromStream = false): void {
    if (!fromStream) {
      rec.tokens_in = u.input
      rec.tokens_out = u.output
    }
    const usd = cost(cfg.prices.get(t.model), u.input, u.output)
    rec.cost_usd = cfg.prices.has(t.model) ? Math.round(usd * 1e8) / 1e8 : null
    this.limiter.record(sandbox, limits, u.input + u.output, usd)
    const m = this.metrics.usage(route.name, sandbox)
    m.tokensIn += u.input
    m.tokensOut += u.output
    if (usd > 0) m.spendUsd += usd
  }

  private async pipeStream(
    up: StreamedAnswer,
    res: http.ServerResponse,
    headers: Record<string, string>,
    rec: AuditRecord,
    t0: number,
    route: Route,
    filterUsage: boolean,
    ac: Aborter,
  ): Promise<void> {
    headers['cache-control'] = 'no-cache'
    headers['x-accel-buffering'] = 'no'
    res.writeHead(up.statusCode, headers)
    rec.status = up.statusCode
    const scanner = new SseUsageScanner()
    const filter = filterUsage ? new SseEventFilter(scanner) : null
    const red = this.redactor.stream()
    const write = async (b: Buffer) => {
      if (!b.length) return
      if (rec.ttfb_ms === null) rec.ttfb_ms = round(performance.now() - t0)
      if (!res.write(b)) await Promise.race([once(res, 'drain'), once(res, 'close')])
    }
    try {
      for await (const chunk of up.body as AsyncIterable<Buffer>) {
        if (filter) await write(red.push(Buffer.from(filter.push(chunk))))
        else {
          scanner.push(chunk)
          await write(red.push(chunk))
        }
        if (res.destroyed) break
      }
      if (filter) await write(red.push(Buffer.from(filter.end())))
      await write(red.end())
      res.end()
    } catch (e) {
      if (ac.aborted || res.destroyed) {
        rec.client_aborted = true
      } else {
        // the stream began: no fallback now; tell the client in-band and end
        const c = classify(e)
        this.metrics.upstreamErrors.inc({ route: route.name, target: rec.target ?? '-', reason: `stream_${c}` })
        rec.error = this.redactor.string(`stream broke after it began: ${(e as Error).message}`)
        try {
          await write(red.end())
          res.end(sseError(route.family, this.redactor.string(`upstream stream failed after it began (${c}); the response is incomplete`)))
        } catch {
          res.destroy()
        }
      }
    } finally {
      if (res.destroyed && !res.writableFinished) rec.client_aborted = true
      if (!(up.body as { destroyed?: boolean }).destroyed) (up.body as { destroy(): void }).destroy()
      const u = scanner.usage
      if (u) {
        rec.tokens_in = u.input
        rec.tokens_out = u.output
      }
    }
  }

  // ---------------------------------------------------------------- control socket

  private async handleControl(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const json = (status: number, obj: unknown) => {
      const b = this.redactor.string(JSON.stringify(obj, null, 2))
      res.writeHead(status, { 'content-type': 'application/json' })
      res.end(b + '\n')
    }
    try {
      const path = (req.url ?? '/').split('?')[0]
      if (this.controlTokenHash && !this.controlAuthorized(req)) {
        // a bare liveness answer stays open for probes; nothing else without the token
        if (req.method === 'GET' && (path === '/healthz' || path === '/health')) {
          json(200, { ok: true })
          return
        }
        const b = JSON.stringify({ error: 'the router control endpoint requires Authorization: Bearer TOKEN (the token of --control-token-file or CORDON_ROUTER_TOKEN)' })
        res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': 'Bearer realm="cordon-router-control"' })
        res.end(b + '\n')
        return
      }
      if (req.method === 'GET' && path === '/metrics') {
        const text = await this.metrics.registry.metrics()
        res.writeHead(200, { 'content-type': this.metrics.registry.contentType })
        res.end(this.redactor.string(text))
      } else if (req.method === 'GET' && (path === '/healthz' || path === '/health')) {
        json(200, { ok: true, inflight: this.inflight, config: this.config.hash })
      } else if (req.method === 'GET' && path === '/status') {
        json(200, this.status())
      } else if (req.method === 'POST' && path === '/reload') {
        const r = await this.reload('control')
        json(r.ok ? 200 : 422, r)
      } else {
        json(404, { error: `unknown control endpoint ${req.method} ${path}: GET /metrics, /healthz, /status; POST /reload` })
      }
    } catch (e) {
      json(500, { error: this.redactor.string((e as Error).message) })
    }
  }

  private controlAuthorized(req: http.IncomingMessage): boolean {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '')
    if (!m || !this.controlTokenHash) return false
    return timingSafeEqual(createHash('sha256').update(m[1]!).digest(), this.controlTokenHash)
  }

  status(): unknown {
    const cfg = this.config
    return {
      config: { file: cfg.file, hash: cfg.hash, loaded_at: new Date(cfg.loadedAt).toISOString() },
      listeners: [...this.listeners.values()].map((l) => ({ address: l.address, sandbox: l.spec.sandbox ?? null, identity_header: l.spec.identityHeader ?? null })),
      inflight: this.inflight,
      routes: cfg.routes.map((r) => ({
        name: r.name,
        models: r.models,
        api: r.family,
        default: r.isDefault,
        fallback_on: [...r.fallbackOn],
        targets: r.targets.map((t) => ({
          provider: t.provider,
          base_url: t.baseUrl.href,
          model: t.model,
          key: t.key ? { set: true, fingerprint: fingerprint(t.key) } : { set: false, problem: t.keyError ?? 'no key reference' },
          timeout_ms: t.timeoutMs,
        })),
      })),
      sandboxes: Object.fromEntries([...cfg.sandboxes.values()].map((s) => [s.id, { addresses: s.addresses, limits: s.limits }])),
      usage: this.limiter.snapshot(),
    }
  }

  async close(): Promise<void> {
    if (this.closing) return
    this.closing = true
    for (const w of this.watchers) w.close()
    if (this.reloadTimer) clearTimeout(this.reloadTimer)
    if (this.pollTimer) clearInterval(this.pollTimer)
    const servers = [...this.listeners.values()].map((l) => l.server)
    if (this.control) servers.push(this.control)
    await Promise.all(
      servers.map(
        (s) =>
          new Promise<void>((r) => {
            s.close(() => r())
            s.closeIdleConnections?.()
          }),
      ),
    )
    this.listeners.clear()
    await Promise.all([...this.pools.values()].map((p) => p.close().catch(() => {})))
    this.pools.clear()
    this.limiter.close()
    await this.audit.close()
  }
}

class Aborter extends EventEmitter {
  aborted = false
  abort(): void {
    if (this.aborted) return
    this.aborted = true
    this.emit('abort')
  }
}

type StreamedAnswer = Awaited<ReturnType<Pool['request']>>
/** A non-streamed upstream answer: status and headers, and the whole body once it has arrived. */
interface BufferedAnswer {
  statusCode: number
  headers: Record<string, string | string[] | undefined>
  whole: Promise<Buffer>
}
type UpstreamAnswer = StreamedAnswer | BufferedAnswer

/** Drop an answer the router will not forward (a fallback, a redirect). A buffered answer needs
 * nothing: its body is collected and released with it (requestBuffered already handles its errors). */
function discard(up: UpstreamAnswer): void {
  if ('body' in up) up.body.dump().catch(() => {})
}

/**
 * POST through the pool with a dispatch handler that collects the body: resolves at the response
 * headers (errors before them reject: connect, headers timeout, abort), and `whole` resolves with
 * the body at its end (errors after the headers reject `whole`: body timeout, reset). The same
 * timeouts and abort signal as Pool.request, without a Readable per call.
 */
function requestBuffered(pool: Pool, opts: Dispatcher.DispatchOptions, signal: Aborter): Promise<BufferedAnswer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let started = false
    let controller: Dispatcher.DispatchController | null = null
    let endWhole: (b: Buffer) => void = () => {}
    let failWhole: (e: Error) => void = () => {}
    const whole = new Promise<Buffer>((a, b) => {
      endWhole = a
      failWhole = b
    })
    whole.catch(() => {}) // a caller that discards the answer does not await it
    const onAbort = () => controller?.abort(new undiciErrors.RequestAbortedError())
    signal.once('abort', onAbort)
    pool.dispatch(opts, {
      onRequestStart(c: Dispatcher.DispatchController) {
        controller = c
        if (signal.aborted) c.abort(new undiciErrors.RequestAbortedError())
      },
      onResponseStart(_c: Dispatcher.DispatchController, statusCode: number, headers: Record<string, string | string[] | undefined>) {
        if (statusCode < 200) return // 1xx informational: the answer follows
        started = true
        resolve({ statusCode, headers, whole })
      },
      onResponseData(_c: Dispatcher.DispatchController, chunk: Buffer) {
        chunks.push(chunk)
      },
      onResponseEnd() {
        signal.off('abort', onAbort)
        endWhole(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks))
      },
      onResponseError(_c: Dispatcher.DispatchController, err: Error) {
        signal.off('abort', onAbort)
        if (started) failWhole(err)
        else reject(err)
      },
    })
  })
}

function readAll(body: NodeJS.ReadableStream): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    body.on('data', (c: Buffer) => chunks.push(c))
    body.once('end', () => resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)))
    body.once('error', reject)
  })
}

/**
 * The client's `x-cordon-request-id` (set by the agent to correlate its log with ours), bounded to
 * 128 printable ASCII characters. It is logged and audited here and never forwarded upstream
 * (FORWARD_REQ does not list it).
 */
function requestId(v: string | string[] | undefined): string | undefined {
  const s = Array.isArray(v) ? v[0] : v
  if (!s) return undefined
  return s.slice(0, 128).replace(/[^\x21-\x7e]/g, '_')
}

/** ISO time of now; the part up to the second is formatted once per second */
let isoSec = -1
let isoPrefix = ''
function isoNow(): string {
  const ms = Date.now()
  const sec = Math.floor(ms / 1000)
  if (sec !== isoSec) [isoSec, isoPrefix] = [sec, new Date(sec * 1000).toISOString().slice(0, 20)]
  return `${isoPrefix}${String(ms % 1000).padStart(3, '0')}Z`
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000
}
