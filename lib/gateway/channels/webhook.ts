/**
 * The generic webhook channel, for systems that are not chat platforms. Hand-written: it is our
 * own small protocol (documented in docs/agent-endpoint.md), no library implements it.
 *
 * Inbound: POST /channels/<name> with JSON {id, conversation, sender:{id,name}, text, attachments?}
 * and headers X-Cordon-Timestamp (unix seconds) and X-Cordon-Signature: sha256=<hex HMAC-SHA256
 * of "<timestamp>.<body>" with the shared secret>. Refused: bad signature (401), timestamp more
 * than 300 s off (401), a signature already seen within the window (409: replay). The message id
 * also dedupes durably.
 * Outbound: replies are POSTed to reply_url, signed the same way, with Idempotency-Key
 * "<reply id>:<part>"; 2xx accepts, 429 + Retry-After is honoured, other 4xx drop the reply.
 */
import { timingSafeEqual } from 'node:crypto'
import { signWebhook } from '../webhook-sign.js'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { errorText } from '../redact.js'
import { LIMITS } from '../text.js'
import type { Route } from '../types.js'
import { SendError, fetchLimited, type Attachment, type ChannelAdapter, type ChannelContext, type SendOptions } from './types.js'

const WINDOW_S = 300


export class WebhookAdapter implements ChannelAdapter {
  readonly type = 'webhook'
  readonly limit = LIMITS.webhook!
  private secret: string
  private seen = new Map<string, number>() // signature -> expiry (ms)

  constructor(private ctx: ChannelContext) {
    this.secret = ctx.secret('secret')
  }

  format(text: string): string {
    return text
  }

  async start(): Promise<void> {
    this.ctx.setState('healthy', this.ctx.config.reply_url ? 'receiving; replies to reply_url' : 'receiving; no reply_url, replies are dropped')
  }

  async stop(): Promise<void> {
    this.ctx.setState('stopped')
  }

  async handleHttp(req: IncomingMessage, res: ServerResponse, body: Buffer): Promise<void> {
    const json = (code: number, o: unknown): void => void res.writeHead(code, { 'content-type': 'application/json' }).end(JSON.stringify(o) + '\n')
    const ts = String(req.headers['x-cordon-timestamp'] ?? '')
    const sig = String(req.headers['x-cordon-signature'] ?? '')
    const now = Date.now()
    if (!/^\d+$/.test(ts) || Math.abs(now / 1000 - Number(ts)) > WINDOW_S) {
      this.ctx.log.warn({ channel: this.ctx.name }, 'webhook: request refused: X-Cordon-Timestamp missing or more than 300 s off')
      return json(401, { error: 'stale or missing X-Cordon-Timestamp' })
    }
    const want = Buffer.from(signWebhook(this.secret, ts, body))
    const got = Buffer.from(sig)
    if (got.length !== want.length || !timingSafeEqual(got, want)) {
      this.ctx.log.warn({ channel: this.ctx.name }, 'webhook: request refused: X-Cordon-Signature does not match')
      return json(401, { error: 'bad signature' })
    }
    for (const [k, exp] of this.seen) if (exp < now) this.seen.delete(k)
    if (this.seen.has(sig)) {
      this.ctx.log.warn({ channel: this.ctx.name }, 'webhook: replayed request refused (same signature seen within 300 s)')
      return json(409, { error: 'replayed request' })
    }
    this.seen.set(sig, now + 2 * WINDOW_S * 1000)
    let p: { id?: unknown; conversation?: unknown; sender?: { id?: unknown; name?: unknown }; text?: unknown; attachments?: { name?: string; url?: string; size?: number; mime?: string }[] }
    try {
      p = JSON.parse(body.toString('utf8'))
    } catch {
      this.ctx.malformed('webhook body is not JSON')
      return json(400, { error: 'body is not JSON' })
    }
    if (!p || typeof p.id !== 'string' || typeof p.conversation !== 'string' || typeof p.text !== 'string' || !p.sender || typeof p.sender.id !== 'string') {
      this.ctx.malformed('webhook body lacks id, conversation, sender.id or text (strings)')
      return json(400, { error: 'need string fields id, conversation, sender.id, text' })
    }
    await this.ctx.receive({
      nativeId: p.id,
      chat: p.conversation,
      message: p.id,
      sender: { id: p.sender.id, name: typeof p.sender.name === 'string' ? p.sender.name : p.sender.id },
      text: p.text,
      isGroup: false,
      mentioned: true,
      attachments: (Array.isArray(p.attachments) ? p.attachments : [])
        .filter((a) => typeof a?.url === 'string' && /^https?:\/\//.test(a.url))
        .map((a) => ({ name: String(a.name ?? 'attachment'), ...(typeof a.size === 'number' ? { size: a.size } : {}), ...(a.mime ? { mime: String(a.mime) } : {}), ref: a.url! })),
    })
    json(200, { ok: true })
  }

  async send(route: Route, text: string, opts: SendOptions): Promise<void> {
    const url = this.ctx.config.reply_url
    if (!url) throw new SendError('webhook: no reply_url configured', true)
    const body = JSON.stringify({ id: opts.replyId, part: opts.part, parts: opts.parts, conversation: route.chat, in_reply_to: route.message ?? null, text })
    const ts = Math.floor(Date.now() / 1000)
    let r: Response
    try {
      r = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-cordon-timestamp': String(ts), 'x-cordon-signature': signWebhook(this.secret, ts, body), 'idempotency-key': `${opts.replyId}:${opts.part}` },
        body,
        signal: AbortSignal.timeout(15000),
      })
    } catch (e) {
      throw new SendError(`webhook: ${errorText(e)}`, false)
    }
    await r.body?.cancel()
    if (r.ok) return
    if (r.status === 429) throw new SendError('webhook: rate limited', false, Math.max(1, Number(r.headers.get('retry-after') ?? 1)) * 1000)
    throw new SendError(`webhook: reply_url answered HTTP ${r.status}`, r.status >= 400 && r.status < 500)
  }

  async fetchAttachment(url: string, maxBytes: number): Promise<Attachment> {
    return fetchLimited(url, {}, maxBytes)
  }
}
