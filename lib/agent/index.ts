/**
 * cordon/agent: the client an agent uses to talk to the gateway from inside the sandbox.
 *
 *   import { inbox } from 'cordon/agent'
 *   for await (const msg of inbox()) await msg.reply(`you said: ${msg.text}`)
 *
 * The gateway's base URL comes from CORDON_GATEWAY_URL (default http://gateway.local); requests
 * honour HTTP_PROXY / NO_PROXY (undici's EnvHttpProxyAgent), which is how the sandbox reaches
 * gateway.local through the egress gate. CORDON_GATEWAY_TOKEN, if set, is sent as a bearer token.
 *
 * Delivery is at least once: a message is acked when the loop asks for the next one (so a crash
 * while handling it means it is delivered again, with the same id and a higher `delivery`).
 * Reply ids are derived from the message id, so answering a redelivered message again does not
 * send the answer twice: the gateway drops the duplicate id.
 *
 * Each message carries a `request_id` that follows what the agent does for it through the egress
 * gate and the router. The client sends it on the message's ack and replies; pass
 * `requestHeaders(msg)` to your own HTTP calls (the openai/anthropic client's per-request
 * `headers`, or `defaultHeaders` for a client made per message) so those are labelled too:
 *
 *   await openai.chat.completions.create({ model, messages }, { headers: requestHeaders(msg) })
 */
import { EnvHttpProxyAgent, fetch, type Dispatcher } from 'undici'

export interface Sender {
  id: string
  name: string
}

export interface AttachmentRef {
  id: string
  name: string
  size?: number
  mime?: string
  /** Path on the gateway, e.g. /v1/attachments/ID; fetch it with msg.attachment(ref). */
  url: string
}

export interface MessageData {
  id: string
  /**
   * Correlation label for everything done for this message (the same on every redelivery).
   * Send it as `x-cordon-request-id` (see requestHeaders) on your calls to inference.local and
   * through the egress gate, so the operator's logs tie them to this message. Gateways older
   * than request ids leave it out: fall back to `id`.
   */
  request_id: string
  conversation: string
  channel: string
  sender: Sender
  text: string
  attachments: AttachmentRef[]
  received_at: string
  is_group: boolean
  /** 1 on first delivery; higher when redelivered after a crash or an expired lease. */
  delivery: number
}

export interface ReplyResult {
  id: string
  status: 'queued' | 'duplicate'
}

export interface ClientOptions {
  /** Base URL; default $CORDON_GATEWAY_URL or http://gateway.local. */
  url?: string
  /** Bearer token; default $CORDON_GATEWAY_TOKEN. */
  token?: string
  /** Custom undici dispatcher; default honours HTTP_PROXY/HTTPS_PROXY/NO_PROXY. */
  dispatcher?: Dispatcher
}

export interface InboxOptions extends ClientOptions {
  /** Long-poll seconds per request (default 30). */
  wait?: number
  /**
   * Messages per request (default 1). Each message handed out is leased for the gateway's
   * visibility timeout (60 s by default); take more only if you handle them faster than that,
   * or the ones still waiting in your batch are handed out again.
   */
  max?: number
  signal?: AbortSignal
}

export class GatewayError extends Error {
  constructor(message: string, readonly status: number) {
    super(message)
    this.name = 'GatewayError'
  }
}

export const REQUEST_ID_HEADER = 'x-cordon-request-id'

/** `{ 'x-cordon-request-id': id }` for a message (or a bare id), to pass as request headers. */
export function requestHeaders(msg: Pick<MessageData, 'id'> & { request_id?: string } | string): Record<string, string> {
  const id = typeof msg === 'string' ? msg : msg.request_id || msg.id
  return { [REQUEST_ID_HEADER]: id }
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms)
    signal?.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true })
  })

export class GatewayClient {
  readonly base: string
  private token: string | undefined
  private dispatcher: Dispatcher

  constructor(opts: ClientOptions = {}) {
    this.base = (opts.url ?? process.env.CORDON_GATEWAY_URL ?? 'http://gateway.local').replace(/\/+$/, '')
    this.token = opts.token ?? process.env.CORDON_GATEWAY_TOKEN
    this.dispatcher = opts.dispatcher ?? new EnvHttpProxyAgent()
  }

  private async call(method: string, path: string, body?: unknown, signal?: AbortSignal, requestId?: string) {
    const r = await fetch(this.base + path, {
      method,
      dispatcher: this.dispatcher,
      headers: {
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...(this.token ? { authorization: `Bearer ${this.token}` } : {}),
        ...(requestId ? requestHeaders(requestId) : {}),
      },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      ...(signal ? { signal } : {}),
    })
    const text = await r.text()
    let data: Record<string, unknown> = {}
    try {
      data = text ? JSON.parse(text) : {}
    } catch {
      /* not JSON (a proxy error page, say) */
    }
    if (!r.ok) throw new GatewayError(`gateway ${method} ${path}: HTTP ${r.status}: ${String(data.error ?? text.slice(0, 200))}`, r.status)
    return data
  }

  /** One long-poll: up to `max` messages, waiting up to `wait` seconds for the first. */
  async messages(wait = 30, max = 10, signal?: AbortSignal): Promise<MessageData[]> {
    const d = await this.call('GET', `/v1/messages?wait=${wait}&max=${max}`, undefined, signal)
    return (d.messages as MessageData[]) ?? []
  }

  /** Acknowledge a message; `requestId` (the message's request_id) is sent as x-cordon-request-id. */
  async ack(id: string, requestId?: string): Promise<void> {
    await this.call('POST', `/v1/messages/${encodeURIComponent(id)}/ack`, {}, undefined, requestId)
  }

  /**
   * Post a reply. Retries on network errors and 5xx with the same id (the gateway dedupes).
   * `requestId` is sent as x-cordon-request-id (the gateway uses the answered message's own id
   * when in_reply_to names it).
   */
  async reply(r: { id: string; conversation: string; text: string; in_reply_to?: string }, requestId?: string): Promise<ReplyResult> {
    for (let attempt = 0; ; attempt++) {
      try {
        return (await this.call('POST', '/v1/replies', r, undefined, requestId)) as unknown as ReplyResult
      } catch (e) {
        const status = (e as GatewayError).status
        if ((status !== undefined && status < 500) || attempt >= 8) throw e
        await sleep(Math.min(10000, 250 * 2 ** attempt))
      }
    }
  }

  /** Fetch an attachment through the gateway (size-limited by the gateway). */
  async attachment(a: AttachmentRef | string): Promise<Buffer> {
    const p = typeof a === 'string' ? a : a.url
    const r = await fetch(this.base + p, { dispatcher: this.dispatcher, headers: this.token ? { authorization: `Bearer ${this.token}` } : {} })
    if (!r.ok) throw new GatewayError(`gateway GET ${p}: HTTP ${r.status}: ${(await r.text()).slice(0, 200)}`, r.status)
    return Buffer.from(await r.arrayBuffer())
  }
}

export interface Message extends MessageData {
  /** Answer in this message's conversation. Returns the reply id and whether it was queued. */
  reply(text: string): Promise<ReplyResult>
  /** Acknowledge now (otherwise done when the loop moves on). Idempotent. */
  ack(): Promise<void>
  /** Download one of this message's attachments. */
  attachment(a: AttachmentRef): Promise<Buffer>
}

function wrap(c: GatewayClient, d: MessageData): Message {
  let n = 0
  let acked = false
  const rid = d.request_id || d.id
  return {
    ...d,
    request_id: rid,
    reply: (text: string) => c.reply({ id: `${d.id}.r${++n}`, conversation: d.conversation, text, in_reply_to: d.id }, rid),
    ack: async () => {
      if (acked) return
      await c.ack(d.id, rid).catch((e: GatewayError) => {
        if (e.status !== 404) throw e // 404: already acked elsewhere / gateway forgot; nothing to do
      })
      acked = true
    },
    attachment: (a: AttachmentRef) => c.attachment(a),
  }
}

/**
 * Messages for the agent, forever (until opts.signal aborts). Each message is acked when the
 * loop asks for the next; leaving the loop (break/throw) leaves the current message unacked,
 * so it is delivered again later; call msg.ack() first if you break after handling it.
 */
export async function* inbox(opts: InboxOptions = {}): AsyncGenerator<Message, void, undefined> {
  const c = new GatewayClient(opts)
  const wait = opts.wait ?? 30
  const max = opts.max ?? 1
  let failures = 0
  while (!opts.signal?.aborted) {
    let batch: MessageData[]
    try {
      batch = await c.messages(wait, max, opts.signal)
      failures = 0
    } catch (e) {
      if (opts.signal?.aborted) return
      if ((e as GatewayError).status === 401) throw e
      failures++
      // the gateway restarting or unreachable: back off with jitter and keep polling
      await sleep(Math.min(15000, 200 * 2 ** Math.min(failures, 8)) * (0.5 + Math.random() / 2), opts.signal)
      continue
    }
    // acks go out while the next message is handled; all settle before the next poll
    const acks: Promise<void>[] = []
    for (const d of batch) {
      const m = wrap(c, d)
      yield m
      acks.push(m.ack().catch(() => {})) // a lost ack only means the message comes again
    }
    await Promise.all(acks)
  }
}

export default inbox
