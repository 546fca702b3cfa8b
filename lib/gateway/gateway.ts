/**
 * The gateway process: channel adapters in, durable queues, the agent endpoint (what the sandbox
 * reaches as http://gateway.local), the operator's control API (unix socket, optional HTTP with a
 * bearer token), and a public listener for webhook-style channels. It holds the channel
 * credentials and nothing else; it never connects into the sandbox.
 */
import { createHash, randomUUID } from 'node:crypto'
import { mkdirSync, chmodSync, existsSync, unlinkSync, statSync } from 'node:fs'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import path from 'node:path'
import { pipeline } from 'node:stream/promises'
import { pino, type Logger } from 'pino'
import { Access } from './access.js'
import { Audit } from './audit.js'
import { resolveSecret, type ChannelConfig, type GatewayConfig } from './config.js'
import { HttpError, bearerOk, parseHostPort, readBody, sendJson } from './http.js'
import { Inbox, Outbox } from './queue.js'
import { errorText, redact, redactValue } from './redact.js'
import { REQUEST_ID_HEADER, requestIdFor, requestIdHeader } from './requestid.js'
import { splitText, LIMITS } from './text.js'
import type { Incoming, OutboundReply, Route, StoredInbound } from './types.js'
import { SendError, backoff, sleep, type ChannelAdapter, type ChannelContext, type ChannelState } from './channels/types.js'

// adapters load on demand: each pulls in its channel library (discord.js, @slack/web-api, grammy)
const ADAPTERS: Record<ChannelConfig['type'], () => Promise<new (ctx: ChannelContext) => ChannelAdapter>> = {
  telegram: async () => (await import('./channels/telegram.js')).TelegramAdapter,
  slack: async () => (await import('./channels/slack.js')).SlackAdapter,
  discord: async () => (await import('./channels/discord.js')).DiscordAdapter,
  webhook: async () => (await import('./channels/webhook.js')).WebhookAdapter,
}

export interface GatewayOptions {
  config: GatewayConfig
  /** HOST:PORT of the agent endpoint (port 0 picks one). */
  agentListen: string
  /** Path of the operator's control socket. */
  control?: string
  stateDir: string
  auditFile?: string
  env?: NodeJS.ProcessEnv
  logger?: Logger
}

interface ChannelRuntime {
  name: string
  type: string
  config: ChannelConfig
  adapter: ChannelAdapter
  state: ChannelState
  detail: string
  since: string
  sent: number
  received: number
}

const REPLY_ID = /^[A-Za-z0-9._:@-]{1,200}$/
const MAX_REPLY_CHARS = 200_000
const PUBLIC_BODY_LIMIT = 1024 * 1024
const SEND_CONCURRENCY = 8

export function createLogger(): Logger {
  return pino(
    {
      name: 'cordon-gateway',
      base: { component: 'gateway' },
      hooks: {
        logMethod(args, method) {
          method.apply(this, args.map((a) => (typeof a === 'string' ? redact(a) : redactValue(a))) as Parameters<typeof method>)
        },
      },
    },
    pino.destination({ fd: 2, sync: true }),
  )
}

export function messageId(channel: string, nativeId: string): string {
  return `${channel}.${createHash('sha256').update(`${channel}\u0000${nativeId}`).digest('base64url').slice(0, 22)}`
}

/** The local channel: `cordon chat` over the control socket. Replies wait in memory for the client. */
class LocalAdapter implements ChannelAdapter {
  readonly type = 'local'
  readonly limit = LIMITS.local!
  seq = 0
  replies: { seq: number; conversation: string; text: string; in_reply_to: string | null; id: string }[] = []
  private waiters = new Set<() => void>()
  async start() {}
  async stop() {
    for (const w of [...this.waiters]) w()
  }
  format(t: string) {
    return t
  }
  async send(route: Route, text: string, opts: { replyId: string }) {
    this.replies.push({ seq: ++this.seq, conversation: `local:${route.chat}`, text, in_reply_to: route.message ?? null, id: opts.replyId })
    if (this.replies.length > 1000) this.replies.shift()
    for (const w of [...this.waiters]) w()
  }
  async waitAfter(after: number, ms: number) {
    if (this.replies.some((r) => r.seq > after) || ms <= 0) return
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(t)
        this.waiters.delete(done)
        resolve()
      }
      const t = setTimeout(done, ms)
      this.waiters.add(done)
    })
  }
}

export class Gateway {
  readonly log: Logger
  readonly inbox: Inbox
  readonly outbox: Outbox
  readonly access: Access
  readonly audit: Audit
  readonly channels = new Map<string, ChannelRuntime>()
  private local = new LocalAdapter()
  private agentServer: Server | null = null
  private controlServer: Server | null = null
  private controlHttpServer: Server | null = null
  private publicServer: Server | null = null
  private senders: Promise<void>[] = []
  private stopped = false
  private stopCtl = new AbortController()
  private lastRefusal = new Map<string, number>()
  private agentToken: string | undefined
  private controlToken: string | undefined
  agentUrl = ''
  publicUrl = ''
  controlHttpUrl = ''
  readonly startedAt = new Date().toISOString()

  private constructor(private opts: GatewayOptions) {
    this.log = opts.logger ?? createLogger()
    mkdirSync(opts.stateDir, { recursive: true, mode: 0o700 })
    this.inbox = new Inbox(opts.stateDir)
    this.outbox = new Outbox(opts.stateDir)
    const allow = new Map(opts.config.channels.map((c) => [c.name, new Set(c.allow)]))
    this.access = new Access(opts.stateDir, allow, opts.config.pairing.code_ttl_s, opts.config.pairing.max_pending)
    this.audit = new Audit(opts.auditFile, opts.config.audit.include_text)
  }

  static async start(opts: GatewayOptions): Promise<Gateway> {
    const g = new Gateway(opts)
    try {
      await g.boot()
    } catch (e) {
      await g.stop().catch(() => {})
      throw e
    }
    return g
  }

  private async boot(): Promise<void> {
    const { config } = this.opts
    const baseDir = path.dirname(config.file)
    const env = this.opts.env ?? process.env
    if (config.agent.token) this.agentToken = resolveSecret(config.agent.token, 'agent.token', baseDir, env)
    if (config.control_http) this.controlToken = resolveSecret(config.control_http.token, 'control_http.token', baseDir, env)
    await this.inbox.open()
    await this.outbox.open()
    await this.access.open()

    // channels: construct all first so a bad credential fails the start with a clear error
    for (const c of config.channels.filter((x) => x.enabled)) {
      const rt: ChannelRuntime = { name: c.name, type: c.type, config: c, adapter: null as never, state: 'starting', detail: '', since: new Date().toISOString(), sent: 0, received: 0 }
      const ctx: ChannelContext = {
        name: c.name,
        config: c,
        log: this.log,
        maxAttachmentBytes: config.agent.max_attachment_bytes,
        secret: (key) => {
          const ref = c[key]
          if (!ref) throw new Error(`channel ${c.name}: "${key}" is not configured`)
          return resolveSecret(ref, `channel ${c.name}: ${key}`, baseDir, env)
        },
        receive: (ev) => this.receive(rt, ev),
        malformed: (reason, detail) => {
          this.log.warn({ channel: c.name, ...detail }, `${c.type}: malformed input refused: ${reason}`)
          this.audit.write('inbound', { channel: c.name, outcome: 'malformed', reason })
        },
        setState: (state, detail) => this.setState(rt, state, detail ?? ''),
      }
      const Adapter = await ADAPTERS[c.type]()
      rt.adapter = new Adapter(ctx)
      this.channels.set(c.name, rt)
    }
    const localCfg: ChannelConfig = { name: 'local', type: 'webhook', enabled: true, allow: ['operator'], pairing: false, require_mention: false, max_message_bytes: 1024 * 1024, rate_per_minute: 0 }
    this.channels.set('local', { name: 'local', type: 'local', config: localCfg, adapter: this.local, state: 'healthy', detail: 'operator terminal (cordon chat)', since: this.startedAt, sent: 0, received: 0 })

    for (const p of this.outbox.list()) {
      if (!this.channels.has(p.r.channel)) this.log.warn({ channel: p.r.channel, reply: p.r.id }, 'reply queued for a channel that is not configured; it stays queued')
    }

    await this.listenAgent()
    if (this.opts.control) await this.listenControl(this.opts.control)
    if (this.opts.config.control_http) await this.listenControlHttp(this.opts.config.control_http.listen)
    if (this.opts.config.public_listen) await this.listenPublic(this.opts.config.public_listen)

    for (const rt of this.channels.values()) {
      await rt.adapter.start()
      this.senders.push(this.senderLoop(rt))
    }
    const st = this.inbox.stats()
    this.log.info(
      { agent: this.agentUrl, control: this.opts.control, public: this.publicUrl || undefined, channels: [...this.channels.keys()], inbound_pending: st.pending, outbound_pending: this.outbox.stats().pending },
      'gateway started',
    )
  }

  private setState(rt: ChannelRuntime, state: ChannelState, detail: string): void {
    if (rt.state !== state) {
      const lvl = state === 'unhealthy' ? 'error' : state === 'degraded' ? 'warn' : 'info'
      this.log[lvl]({ channel: rt.name, state, detail }, `channel ${rt.name} is ${state}${detail ? `: ${detail}` : ''}`)
      rt.since = new Date().toISOString()
    }
    rt.state = state
    rt.detail = detail
  }

  // ---- inbound ------------------------------------------------------------------------------
  private async receive(rt: ChannelRuntime, ev: Incoming): Promise<void> {
    const c = rt.config
    const id = messageId(rt.name, ev.nativeId)
    const requestId = requestIdFor(id)
    const conversation = `${rt.name}:${ev.chat}`
    const size = Buffer.byteLength(ev.text)
    const route: Route = { chat: ev.chat, ...(ev.thread ? { thread: ev.thread } : {}), ...(ev.message ? { message: ev.message } : {}) }
    const base = { channel: rt.name, sender: ev.sender.id, conversation, size, message: id, request_id: requestId, text: ev.text }
    if (this.inbox.seen(id)) {
      this.audit.write('inbound', { ...base, outcome: 'duplicate' })
      return
    }
    if (ev.isGroup && c.require_mention && !ev.mentioned) {
      this.audit.write('inbound', { ...base, outcome: 'ignored', reason: 'group message does not mention the bot' })
      return
    }
    if (rt.name !== 'local' && !this.access.isAllowed(rt.name, ev.sender.id)) {
      if (this.access.isDenied(rt.name, ev.sender.id)) {
        this.audit.write('inbound', { ...base, outcome: 'refused', reason: 'sender was denied by the operator' })
        return
      }
      if (!c.pairing) {
        this.audit.write('inbound', { ...base, outcome: 'refused', reason: 'sender not on the allowlist (pairing off)' })
        return
      }
      const p = await this.access.pairingFor(rt.name, ev.sender.id, ev.sender.name, conversation)
      if (!p) {
        this.log.warn({ channel: rt.name, sender: ev.sender.id }, 'pairing refused: too many pending pairings (pairing.max_pending)')
        this.audit.write('inbound', { ...base, outcome: 'refused', reason: 'too many pending pairings' })
        return
      }
      this.audit.write('inbound', { ...base, outcome: 'pairing', new_code: p.fresh })
      if (p.fresh) {
        this.log.info({ channel: rt.name, sender: ev.sender.id, name: ev.sender.name }, `pairing requested by ${ev.sender.name} on ${rt.name}: run "cordon pair list" to see it`)
        await this.notify(rt.name, route, `pair:${rt.name}:${ev.sender.id}:${p.code}`, `This bot only talks to approved people. Your pairing code is ${p.code}. Ask the operator to run: cordon pair approve ${p.code}`)
      }
      return
    }
    if (size > c.max_message_bytes) {
      this.log.warn({ channel: rt.name, sender: ev.sender.id, size, limit: c.max_message_bytes }, `refused a message of ${size} bytes from ${ev.sender.id} on ${rt.name}: over max_message_bytes (${c.max_message_bytes})`)
      this.audit.write('inbound', { ...base, text: undefined, outcome: 'too-large' })
      await this.refuse(rt.name, ev.sender.id, route, `refuse:${id}`, `Message too large (${size} bytes; the limit is ${c.max_message_bytes}). It was not delivered.`)
      return
    }
    if (rt.name !== 'local' && !this.access.takeToken(rt.name, ev.sender.id, c.rate_per_minute)) {
      this.log.warn({ channel: rt.name, sender: ev.sender.id }, `sender ${ev.sender.id} on ${rt.name} is over rate_per_minute (${c.rate_per_minute}); message refused`)
      this.audit.write('inbound', { ...base, outcome: 'rate-limited' })
      await this.refuse(rt.name, ev.sender.id, route, `refuse:${id}`, 'You are sending messages too fast; this one was not delivered. Please wait a minute.')
      return
    }
    const stored: StoredInbound = {
      msg: {
        id,
        request_id: requestId,
        channel: rt.name,
        conversation,
        sender: ev.sender,
        text: ev.text,
        attachments: ev.attachments.map((a, i) => ({
          id: `${id}.${i}`,
          name: a.name,
          ...(a.size !== undefined ? { size: a.size } : {}),
          ...(a.mime ? { mime: a.mime } : {}),
          url: `/v1/attachments/${encodeURIComponent(`${id}.${i}`)}`,
        })),
        received_at: new Date().toISOString(),
        is_group: ev.isGroup,
      },
      route,
      sources: ev.attachments.map((a, i) => ({ id: `${id}.${i}`, channel: rt.name, ref: a.ref })),
    }
    const r = await this.inbox.put(stored)
    rt.received++
    this.audit.write('inbound', { ...base, outcome: r === 'stored' ? 'delivered' : 'duplicate', attachments: ev.attachments.length || undefined })
  }

  /** A refusal to the sender, at most once a minute per sender (no amplification). */
  private async refuse(channel: string, sender: string, route: Route, id: string, text: string): Promise<void> {
    const k = `${channel}\u0000${sender}`
    const last = this.lastRefusal.get(k) ?? 0
    if (Date.now() - last < 60000) return
    this.lastRefusal.set(k, Date.now())
    await this.notify(channel, route, id, text)
  }

  /** A gateway-originated message to a chat (pairing code, refusal), through the durable outbox. */
  private async notify(channel: string, route: Route, id: string, text: string): Promise<void> {
    await this.outbox.put({ id, channel, conversation: `${channel}:${route.chat}`, text, route, created_at: new Date().toISOString() })
  }

  // ---- outbound -----------------------------------------------------------------------------
  /**
   * One loop per channel. Replies are grouped by conversation: each conversation's replies go
   * strictly in order, up to SEND_CONCURRENCY conversations at once. A 429 pauses the whole
   * channel for retry_after; other failures back off (with jitter) that conversation only.
   */
  private async senderLoop(rt: ChannelRuntime): Promise<void> {
    const shared = { failures: 0, pauseUntil: 0 }
    while (!this.stopped) {
      const list = this.outbox.list(rt.name)
      if (!list.length) {
        await this.outbox.wait(1000)
        continue
      }
      const groups = new Map<string, typeof list>()
      for (const p of list) {
        const g = groups.get(p.r.conversation)
        if (g) g.push(p)
        else groups.set(p.r.conversation, [p])
      }
      const queues = [...groups.values()]
      let next = 0
      const worker = async () => {
        while (next < queues.length && !this.stopped) {
          const q = queues[next++]!
          for (const p of q) if (!(await this.sendOne(rt, p, shared))) break
        }
      }
      await Promise.all(Array.from({ length: Math.min(SEND_CONCURRENCY, queues.length) }, worker))
    }
  }

  /** Send every unsent part of one reply. False: a transient failure, try this conversation later. */
  private async sendOne(rt: ChannelRuntime, p: ReturnType<Outbox['list']>[number], shared: { failures: number; pauseUntil: number }): Promise<boolean> {
    const signal = this.stopCtl.signal
    const parts = splitText(rt.adapter.format(p.r.text), rt.adapter.limit)
    let failed: string | null = null
    for (let n = 0; n < parts.length; n++) {
      if (this.stopped) return false
      if (p.sent.has(n)) continue
      const pause = shared.pauseUntil - Date.now()
      if (pause > 0) await sleep(pause, signal)
      try {
        await rt.adapter.send(p.r.route, parts[n]!, { replyId: p.r.id, part: n, parts: parts.length })
        // the last part is recorded by the 'done' record below (one fsync instead of two)
        if (parts.every((_, i) => i === n || p.sent.has(i))) p.sent.add(n)
        else await this.outbox.partSent(p.r.id, n)
        if (shared.failures && rt.type !== 'local') this.setState(rt, 'healthy', 'sending again')
        shared.failures = 0
      } catch (e) {
        const se = e instanceof SendError ? e : new SendError(errorText(e), false)
        if (se.retryAfterMs !== undefined) {
          shared.pauseUntil = Math.max(shared.pauseUntil, Date.now() + se.retryAfterMs)
          this.log.warn({ channel: rt.name, reply: p.r.id, request_id: p.r.request_id, retry_after_ms: se.retryAfterMs }, `${rt.name}: channel rate limit (429); waiting ${Math.ceil(se.retryAfterMs / 1000)}s as retry_after asks`)
          this.audit.write('reply', { channel: rt.name, reply: p.r.id, request_id: p.r.request_id, conversation: p.r.conversation, outcome: 'rate-limited', retry_after_ms: se.retryAfterMs })
          n--
          continue
        }
        if (se.permanent) {
          failed = redact(se.message)
          break
        }
        shared.failures++
        const wait = backoff(shared.failures, 500, 60000)
        this.setState(rt, shared.failures >= 5 ? 'unhealthy' : 'degraded', `send failed: ${redact(se.message)}`)
        this.log.warn({ channel: rt.name, reply: p.r.id, request_id: p.r.request_id, failures: shared.failures, retry_in_ms: wait }, `${rt.name}: send failed, will retry: ${redact(se.message)}`)
        await sleep(wait, signal)
        return false
      }
    }
    if (failed) {
      this.log.warn({ channel: rt.name, reply: p.r.id, request_id: p.r.request_id }, `${rt.name}: reply ${p.r.id} dropped: the channel refused it: ${failed}`)
      this.audit.write('reply', { channel: rt.name, reply: p.r.id, request_id: p.r.request_id, conversation: p.r.conversation, outcome: 'failed', error: failed })
      await this.outbox.finish(p.r.id, failed)
      return true
    }
    rt.sent++
    this.audit.write('reply', { channel: rt.name, reply: p.r.id, request_id: p.r.request_id, conversation: p.r.conversation, in_reply_to: p.r.in_reply_to, parts: parts.length, size: Buffer.byteLength(p.r.text), outcome: 'sent', text: p.r.text })
    await this.outbox.finish(p.r.id)
    return true
  }

  // ---- agent endpoint -----------------------------------------------------------------------
  private listen(server: Server, hp: string | { path: string }): Promise<string> {
    return new Promise((resolve, reject) => {
      server.once('error', reject)
      const done = () => {
        server.off('error', reject)
        const a = server.address()
        resolve(typeof a === 'string' || a === null ? String(a) : `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${(a as AddressInfo).port}`)
      }
      if (typeof hp === 'string') {
        const { host, port } = parseHostPort(hp, 'listen address')
        server.listen(port, host, done)
      } else server.listen(hp.path, done)
    })
  }

  private async listenAgent(): Promise<void> {
    this.agentServer = createServer((req, res) => {
      this.handleAgent(req, res).catch((e) => this.httpFail(res, e, 'agent endpoint'))
    })
    this.agentServer.requestTimeout = 0
    this.agentServer.headersTimeout = 30000
    this.agentServer.keepAliveTimeout = 65000
    this.agentUrl = await this.listen(this.agentServer, this.opts.agentListen)
  }

  private httpFail(res: ServerResponse, e: unknown, where: string): void {
    if (e instanceof HttpError) {
      if (e.status === 413) this.log.warn({ where }, `${where}: ${e.message}`)
      return sendJson(res, e.status, { error: e.message })
    }
    this.log.error({ where, err: errorText(e) }, `${where}: internal error`)
    sendJson(res, 500, { error: 'internal error' })
  }

  private async handleAgent(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://gateway.local')
    const p = url.pathname
    const decode = (s: string) => {
      try {
        return decodeURIComponent(s)
      } catch {
        throw new HttpError(400, `malformed percent-encoding in ${p}`)
      }
    }
    if (p === '/v1/health' && req.method === 'GET') return sendJson(res, 200, { ok: true })
    if (!bearerOk(req, this.agentToken)) return sendJson(res, 401, { error: 'missing or wrong bearer token (set CORDON_GATEWAY_TOKEN)' })
    const cfg = this.opts.config.agent
    if (p === '/v1/messages' && req.method === 'GET') {
      const wait = Math.min(60, Math.max(0, Number(url.searchParams.get('wait') ?? 0) || 0))
      const max = Math.min(cfg.max_batch, Math.max(1, Number(url.searchParams.get('max') ?? cfg.max_batch) || 1))
      const ac = new AbortController()
      res.on('close', () => ac.abort())
      const onStop = () => ac.abort()
      this.stopCtl.signal.addEventListener('abort', onStop)
      try {
        const got = await this.inbox.waitTake(max, cfg.visibility_timeout_s * 1000, wait * 1000, ac.signal)
        if (res.destroyed || ac.signal.aborted) {
          // the client went away while we waited: put what we took back at once
          this.inbox.release(got.map((g) => g.s.msg.id))
          return
        }
        return sendJson(res, 200, { messages: got.map((g) => ({ ...g.s.msg, delivery: g.deliveries })), lease_s: cfg.visibility_timeout_s })
      } finally {
        this.stopCtl.signal.removeEventListener('abort', onStop)
      }
    }
    let m = /^\/v1\/messages\/([^/]+)\/ack$/.exec(p)
    if (m && req.method === 'POST') {
      await readBody(req, 4096)
      const id = decode(m[1]!)
      const request_id = this.inbox.get(id)?.msg.request_id ?? requestIdHeader(req.headers[REQUEST_ID_HEADER])
      const r = await this.inbox.ack(id)
      this.log.debug({ message: id, request_id, status: r }, `agent acked ${id}: ${r}`)
      if (r === 'unknown') return sendJson(res, 404, { error: `no message ${id} is waiting for an ack` })
      return sendJson(res, 200, { id, status: r })
    }
    if (p === '/v1/replies' && req.method === 'POST') {
      const body = await readBody(req, 4 * MAX_REPLY_CHARS + 4096)
      let b: { id?: unknown; conversation?: unknown; text?: unknown; in_reply_to?: unknown }
      try {
        b = JSON.parse(body.toString('utf8'))
      } catch {
        return sendJson(res, 400, { error: 'body must be JSON: {"id","conversation","text","in_reply_to"?}' })
      }
      if (typeof b?.id !== 'string' || !REPLY_ID.test(b.id)) return sendJson(res, 400, { error: 'id must be a string of 1-200 characters from [A-Za-z0-9._:@-], unique per reply' })
      if (typeof b.conversation !== 'string') return sendJson(res, 400, { error: 'conversation must be a string (from the message you answer)' })
      if (typeof b.text !== 'string' || !b.text.length || b.text.length > MAX_REPLY_CHARS) return sendJson(res, 400, { error: `text must be a non-empty string of at most ${MAX_REPLY_CHARS} characters` })
      if (b.in_reply_to !== undefined && b.in_reply_to !== null && typeof b.in_reply_to !== 'string') return sendJson(res, 400, { error: 'in_reply_to must be a message id string' })
      if (this.outbox.known(b.id)) return sendJson(res, 200, { id: b.id, status: 'duplicate' })
      const conv = this.inbox.conversations.get(b.conversation)
      // the agent may answer only conversations that have written to it
      if (!conv) return sendJson(res, 404, { error: `unknown conversation ${b.conversation}: replies go only to conversations that sent the agent a message` })
      let route: Route = conv.route
      // the request id of the message answered; else the agent's header (a label, never trusted)
      let requestId = requestIdHeader(req.headers[REQUEST_ID_HEADER])
      if (typeof b.in_reply_to === 'string') {
        const orig = this.inbox.routeOf(b.in_reply_to)
        if (orig && orig.conversation === b.conversation) {
          route = orig.route
          requestId = requestIdFor(b.in_reply_to)
        }
      }
      const reply: OutboundReply = {
        id: b.id,
        conversation: b.conversation,
        channel: conv.channel,
        text: b.text,
        ...(typeof b.in_reply_to === 'string' ? { in_reply_to: b.in_reply_to } : {}),
        ...(requestId ? { request_id: requestId } : {}),
        route,
        created_at: new Date().toISOString(),
      }
      const r = await this.outbox.put(reply)
      this.log.debug({ reply: b.id, request_id: requestId, conversation: b.conversation, status: r }, `agent reply ${b.id}: ${r}`)
      return sendJson(res, r === 'queued' ? 202 : 200, { id: b.id, status: r })
    }
    m = /^\/v1\/attachments\/([^/]+)$/.exec(p)
    if (m && req.method === 'GET') {
      const aid = decode(m[1]!)
      const msgId = aid.slice(0, aid.lastIndexOf('.'))
      const src = this.inbox.get(msgId)?.sources.find((s) => s.id === aid)
      if (!src) return sendJson(res, 404, { error: `no attachment ${aid} (attachments can be fetched until their message is acked)` })
      const rt = this.channels.get(src.channel)
      if (!rt?.adapter.fetchAttachment) return sendJson(res, 404, { error: `channel ${src.channel} cannot fetch attachments` })
      let a
      try {
        a = await rt.adapter.fetchAttachment(src.ref, cfg.max_attachment_bytes)
      } catch (e) {
        const big = (e as { code?: string }).code === 'ETOOBIG'
        this.log.warn({ channel: src.channel, attachment: aid }, `attachment fetch refused: ${errorText(e)}`)
        return sendJson(res, big ? 413 : 502, { error: errorText(e) })
      }
      res.writeHead(200, { 'content-type': a.mime ?? 'application/octet-stream', ...(a.size !== undefined ? { 'content-length': a.size } : {}) })
      await pipeline(a.body, res).catch((e) => {
        this.log.warn({ attachment: aid }, `attachment stream aborted: ${errorText(e)}`)
        res.destroy()
      })
      return
    }
    sendJson(res, 404, { error: `no route ${req.method} ${p}; see docs/agent-endpoint.md` })
  }

  // ---- control API --------------------------------------------------------------------------
  private async listenControl(sock: string): Promise<void> {
    const dir = path.dirname(sock)
    mkdirSync(dir, { recursive: true, mode: 0o700 })
    if (existsSync(sock)) {
      if (!statSync(sock).isSocket()) throw new Error(`control socket path ${sock} exists and is not a socket`)
      unlinkSync(sock)
    }
    this.controlServer = createServer((req, res) => {
      this.handleControl(req, res).catch((e) => this.httpFail(res, e, 'control API'))
    })
    this.controlServer.requestTimeout = 0
    const old = process.umask(0o177)
    try {
      await this.listen(this.controlServer, { path: sock })
    } finally {
      process.umask(old)
    }
    chmodSync(sock, 0o600)
  }

  private async listenControlHttp(hp: string): Promise<void> {
    this.controlHttpServer = createServer((req, res) => {
      if (!bearerOk(req, this.controlToken) || !this.controlToken) return sendJson(res, 401, { error: 'missing or wrong bearer token' })
      this.handleControl(req, res).catch((e) => this.httpFail(res, e, 'control API'))
    })
    this.controlHttpUrl = await this.listen(this.controlHttpServer, hp)
  }

  status() {
    return {
      ok: true,
      started_at: this.startedAt,
      agent_endpoint: this.agentUrl,
      queues: { inbound: this.inbox.stats(), outbound: this.outbox.stats() },
      channels: [...this.channels.values()].map((c) => ({ name: c.name, type: c.type, state: c.state, detail: c.detail, since: c.since, received: c.received, sent: c.sent })),
      pending_pairings: this.access.listPending().length,
    }
  }

  private async handleControl(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://control')
    const p = url.pathname
    if (req.method === 'GET' && (p === '/v1/health' || p === '/v1/status' || p === '/health')) return sendJson(res, 200, this.status())
    if (req.method === 'GET' && p === '/v1/channels') return sendJson(res, 200, { channels: this.status().channels })
    if (req.method === 'GET' && p === '/v1/pairings') return sendJson(res, 200, { pairings: this.access.listPending() })
    let m = /^\/v1\/pairings\/([^/]+)\/(approve|deny)$/.exec(p)
    if (m && req.method === 'POST') {
      await readBody(req, 4096)
      const approve = m[2] === 'approve'
      const d = await this.access.decide(decodeURIComponent(m[1]!), approve)
      if (!d) return sendJson(res, 404, { error: `no pending pairing with code ${m[1]} (it may have expired; run "cordon pair list")` })
      this.audit.write('pairing', { channel: d.channel, sender: d.sender, name: d.name, decision: approve ? 'approved' : 'denied' })
      this.log.info({ channel: d.channel, sender: d.sender }, `pairing ${approve ? 'approved' : 'denied'} for ${d.name} on ${d.channel}`)
      const route: Route = { chat: d.conversation.slice(d.channel.length + 1) }
      if (approve) await this.notify(d.channel, route, `paired:${d.channel}:${d.sender}:${d.code}`, 'You are approved. Send your message again and it will reach the agent.')
      return sendJson(res, 200, { decision: approve ? 'approved' : 'denied', pairing: d })
    }
    if (req.method === 'GET' && p === '/v1/conversations') {
      const list = [...this.inbox.conversations.values()].sort((a, b) => b.last - a.last).slice(0, Number(url.searchParams.get('limit') ?? 50) || 50)
      return sendJson(res, 200, { conversations: list.map((c) => ({ id: c.id, channel: c.channel, last: new Date(c.last).toISOString(), messages: c.messages })) })
    }
    if (req.method === 'GET' && p === '/v1/audit') return sendJson(res, 200, { events: this.audit.recent.slice(-(Number(url.searchParams.get('limit') ?? 50) || 50)) })
    if (req.method === 'POST' && p === '/v1/chat') {
      const b = JSON.parse((await readBody(req, 1024 * 1024)).toString('utf8') || '{}') as { text?: unknown; conversation?: unknown }
      if (typeof b.text !== 'string' || !b.text) return sendJson(res, 400, { error: 'text must be a non-empty string' })
      const chat = typeof b.conversation === 'string' && /^[A-Za-z0-9_-]{1,64}$/.test(b.conversation) ? b.conversation : 'operator'
      const nativeId = randomUUID()
      await this.receive(this.channels.get('local')!, { nativeId, chat, message: nativeId, sender: { id: 'operator', name: 'operator' }, text: b.text, isGroup: false, mentioned: true, attachments: [] })
      const id = messageId('local', nativeId)
      return sendJson(res, 202, { id, request_id: requestIdFor(id), conversation: `local:${chat}`, after: this.local.seq })
    }
    if (req.method === 'GET' && p === '/v1/chat/replies') {
      const after = Number(url.searchParams.get('after') ?? 0) || 0
      const wait = Math.min(60, Math.max(0, Number(url.searchParams.get('wait') ?? 0) || 0))
      await this.local.waitAfter(after, wait * 1000)
      const replies = this.local.replies.filter((r) => r.seq > after)
      return sendJson(res, 200, { replies, next: replies.length ? replies[replies.length - 1]!.seq : after })
    }
    sendJson(res, 404, { error: `no route ${req.method} ${p}` })
  }

  // ---- public listener (webhook-style channels) ---------------------------------------------
  private async listenPublic(hp: string): Promise<void> {
    this.publicServer = createServer((req, res) => {
      this.handlePublic(req, res).catch((e) => this.httpFail(res, e, 'public listener'))
    })
    this.publicServer.headersTimeout = 15000
    this.publicServer.requestTimeout = 30000
    this.publicUrl = await this.listen(this.publicServer, hp)
  }

  private async handlePublic(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://public')
    const m = /^\/channels\/([a-z0-9][a-z0-9_-]*)(\/.*)?$/.exec(url.pathname)
    const rt = m ? this.channels.get(m[1]!) : undefined
    if (!rt || rt.name === 'local' || !rt.adapter.handleHttp || req.method !== 'POST') return sendJson(res, 404, { error: 'not found' })
    const limit = Math.max(PUBLIC_BODY_LIMIT, rt.config.max_message_bytes + 64 * 1024)
    let body: Buffer
    try {
      body = await readBody(req, limit)
    } catch (e) {
      if (e instanceof HttpError && e.status === 413) {
        this.log.warn({ channel: rt.name, limit }, `${rt.name}: refused an inbound request: ${e.message}`)
        this.audit.write('inbound', { channel: rt.name, outcome: 'too-large', reason: e.message })
        res.setHeader('connection', 'close')
      }
      throw e
    }
    await rt.adapter.handleHttp(req, res, body)
  }

  async stop(): Promise<void> {
    if (this.stopped) return
    this.stopped = true
    this.stopCtl.abort()
    for (const rt of this.channels.values()) await rt.adapter?.stop().catch(() => {})
    // a send already on the wire may finish (and be recorded); a hung one is abandoned (resent later)
    await Promise.race([Promise.allSettled(this.senders), sleep(3000)])
    await this.outbox.close().catch(() => {})
    const close = (s: Server | null) =>
      new Promise<void>((resolve) => {
        if (!s) return resolve()
        s.close(() => resolve())
        s.closeAllConnections()
      })
    await Promise.all([close(this.agentServer), close(this.controlServer), close(this.controlHttpServer), close(this.publicServer)])
    await this.inbox.close().catch(() => {})
    await this.access.flush().catch(() => {})
    await this.audit.close()
  }
}
