/**
 * The data behind `cordon term`. Sources (all operator-only, none reachable from the sandbox):
 *  - the supervisor's control socket: component health (GET /status)
 *  - the engine's control socket: pending approvals (GET /v1/pending), approve/deny
 *  - the gateway's control socket: channels and queues (GET /v1/status)
 *  - the audit trails and component logs (files under the state and log dirs): egress decisions,
 *    inference calls, conversations, the log pane
 *
 * Events are buffered and published at most every `flushMs` (default 100 ms): at 1,000 events/s
 * the UI renders ten times a second, each panel keeps a bounded ring.
 */
import { EventEmitter } from 'node:events'
import type { LogEntry, LogSource } from '../logs.js'
import { follow, listSources, readMerged } from '../logs.js'
import { unixJson } from '../health.js'
import type { SupervisorStatus } from '../supervisor.js'

export interface Decision {
  t: number
  id?: string
  decision: string
  host: string
  port?: number
  binary?: string
  pid?: number
  rule?: string
  reason?: string
  via?: string
}
export interface Pending {
  id: string
  host: string
  port: number
  method?: string | null
  path?: string | null
  binary?: string | null
  pid?: number | null
  count?: number
  first?: string
  expires?: string
}
export interface InferenceCall {
  t: number
  route?: string
  model?: string
  status?: number
  tokensIn?: number
  tokensOut?: number
  ms?: number
  error?: string
  sandbox?: string
}
export interface Channel {
  name: string
  type?: string
  state?: string
  detail?: string
}
export interface Conversation {
  t: number
  conversation: string
  channel?: string
  event: string
  outcome?: string
}

export interface TermState {
  health?: SupervisorStatus
  healthError?: string
  pending: Pending[]
  pendingError?: string
  decisions: Decision[]
  calls: InferenceCall[]
  channels: Channel[]
  gatewayQueues?: { inbound?: number; outbound?: number }
  conversations: Conversation[]
  logs: LogEntry[]
  /** total events seen (for the status bar) */
  events: number
  limits?: string
  message?: string
}

export interface TermActions {
  approve(id: string, persist: boolean): Promise<string>
  deny(id: string): Promise<string>
}

export interface TermSourceOptions {
  supervisorSocket: string
  engineSocket: string
  gatewaySocket: string
  routerSocket?: string
  logDir: string
  auditFiles: Array<{ component: string; file: string }>
  pollMs?: number
  flushMs?: number
  ring?: number
}

const num = (v: unknown) => (typeof v === 'number' ? v : undefined)
const str = (v: unknown) => (typeof v === 'string' ? v : v === null || v === undefined ? undefined : String(v))

/** Turn one merged log/audit entry into panel events. Exported for tests. */
export function classify(e: LogEntry): { decision?: Decision; call?: InferenceCall; conv?: Conversation } {
  const r = e.raw
  if (e.source === 'audit' && e.component === 'engine' && r.type === 'decision' && typeof r.host === 'string') {
    return { decision: { t: e.t, id: str(r.id), decision: String(r.decision), host: r.host, port: num(r.port), binary: str(r.binary), pid: num(r.pid), rule: str(r.rule), reason: str(r.reason), via: str(r.via) } }
  }
  if (e.source === 'audit' && e.component === 'router' && (r.route !== undefined || r.model !== undefined)) {
    return { call: { t: e.t, route: str(r.route), model: str(r.upstream_model ?? r.model), status: num(r.status), tokensIn: num(r.tokens_in), tokensOut: num(r.tokens_out), ms: num(r.total_ms), error: str(r.error), sandbox: str(r.sandbox) } }
  }
  if (e.source === 'audit' && e.component === 'gateway' && typeof r.conversation === 'string') {
    return { conv: { t: e.t, conversation: r.conversation, channel: str(r.channel), event: String(r.event ?? r.type ?? ''), outcome: str(r.outcome) } }
  }
  return {}
}

export class TermStore extends EventEmitter implements TermActions {
  state: TermState = { pending: [], decisions: [], calls: [], channels: [], conversations: [], logs: [], events: 0 }
  private buf: LogEntry[] = []
  private dirty = false
  private timers: NodeJS.Timeout[] = []
  private stopFollow?: () => void
  private readonly ring: number

  constructor(private readonly o: TermSourceOptions) {
    super()
    this.ring = o.ring ?? 500
  }

  private sources(): LogSource[] {
    return listSources(this.o.logDir, this.o.auditFiles)
  }

  start() {
    // history: the last entries of every source
    const hist = readMerged(this.sources()).slice(-this.ring * 2)
    this.ingest(hist)
    this.stopFollow = follow(this.sources(), {}, (batch) => {
      this.buf.push(...batch)
    }, { rescan: () => this.sources(), intervalMs: 100 })
    const flush = setInterval(() => this.flush(), this.o.flushMs ?? 100)
    const poll = setInterval(() => void this.poll(), this.o.pollMs ?? 1000)
    this.timers.push(flush, poll)
    void this.poll()
    this.publish()
  }

  stop() {
    this.stopFollow?.()
    for (const t of this.timers) clearInterval(t)
  }

  /** Add entries (also used by tests and the load benchmark). */
  push(entries: LogEntry[]) {
    this.buf.push(...entries)
  }

  private ingest(entries: LogEntry[]) {
    if (!entries.length) return
    const s = this.state
    const decisions: Decision[] = []
    const calls: InferenceCall[] = []
    const convs: Conversation[] = []
    for (const e of entries) {
      const c = classify(e)
      if (c.decision) decisions.push(c.decision)
      if (c.call) calls.push(c.call)
      if (c.conv) convs.push(c.conv)
    }
    const cap = <T>(a: T[], b: T[]) => (b.length ? [...a, ...b].slice(-this.ring) : a)
    this.state = {
      ...s,
      decisions: cap(s.decisions, decisions),
      calls: cap(s.calls, calls),
      conversations: cap(s.conversations, convs),
      logs: cap(s.logs, entries),
      events: s.events + entries.length,
    }
    this.dirty = true
  }

  private flush() {
    if (this.buf.length) {
      const b = this.buf
      this.buf = []
      this.ingest(b)
    }
    if (this.dirty) this.publish()
  }

  private publish() {
    this.dirty = false
    this.emit('change', this.state)
  }

  private set(p: Partial<TermState>) {
    this.state = { ...this.state, ...p }
    this.dirty = true
  }

  async poll() {
    const [h, p, g] = await Promise.allSettled([
      unixJson<SupervisorStatus>(this.o.supervisorSocket, '/status', { timeoutMs: 2000 }),
      unixJson<Pending[]>(this.o.engineSocket, '/v1/pending', { timeoutMs: 2000 }),
      unixJson<{ channels?: Array<Record<string, unknown>>; inbound_pending?: number; outbound_pending?: number; queues?: Record<string, number> }>(this.o.gatewaySocket, '/v1/status', { timeoutMs: 2000 }),
    ])
    const patch: Partial<TermState> = {}
    if (h.status === 'fulfilled') Object.assign(patch, { health: h.value, healthError: undefined })
    else patch.healthError = `supervisor: ${(h.reason as Error).message}`
    if (p.status === 'fulfilled') Object.assign(patch, { pending: Array.isArray(p.value) ? p.value : [], pendingError: undefined })
    else patch.pendingError = `engine: ${(p.reason as Error).message}`
    if (g.status === 'fulfilled') {
      const v = g.value
      patch.channels = (v.channels ?? []).map((c) => ({ name: String(c.name), type: str(c.type), state: str(c.state), detail: str(c.detail) }))
      patch.gatewayQueues = { inbound: num(v.inbound_pending ?? v.queues?.inbound), outbound: num(v.outbound_pending ?? v.queues?.outbound) }
    }
    this.set(patch)
  }

  async approve(id: string, persist: boolean): Promise<string> {
    try {
      const r = await unixJson<{ rule?: string }>(this.o.engineSocket, `/v1/pending/${encodeURIComponent(id)}/approve`, { method: 'POST', body: { persist, by: 'cordon term' }, timeoutMs: 5000 })
      const m = `approved ${id}${r?.rule ? ` (${r.rule})` : ''}${persist ? ', written to the policy' : ' for this session'}`
      this.set({ message: m, pending: this.state.pending.filter((p) => p.id !== id) })
      void this.poll()
      return m
    } catch (e) {
      const m = `approve ${id} failed: ${(e as Error).message}`
      this.set({ message: m })
      return m
    }
  }

  async deny(id: string): Promise<string> {
    try {
      await unixJson(this.o.engineSocket, `/v1/pending/${encodeURIComponent(id)}/deny`, { method: 'POST', body: { by: 'cordon term' }, timeoutMs: 5000 })
      const m = `denied ${id}`
      this.set({ message: m, pending: this.state.pending.filter((p) => p.id !== id) })
      void this.poll()
      return m
    } catch (e) {
      const m = `deny ${id} failed: ${(e as Error).message}`
      this.set({ message: m })
      return m
    }
  }
}
