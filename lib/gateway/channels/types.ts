/** The contract between the gateway core and a channel adapter. */
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Readable } from 'node:stream'
import type { Logger } from 'pino'
import type { ChannelConfig } from '../config.js'
import type { Incoming, Route } from '../types.js'

export type ChannelState = 'starting' | 'healthy' | 'degraded' | 'unhealthy' | 'stopped'

export interface ChannelContext {
  name: string
  config: ChannelConfig
  log: Logger
  /** Resolve a credential reference from the config (and register it for redaction). */
  secret(key: 'token' | 'signing_secret' | 'app_token' | 'webhook_secret' | 'secret'): string
  /**
   * Hand an event to the gateway. Resolves once it is durably stored or deliberately refused;
   * only then may the adapter acknowledge the channel. Rejects if storage failed (do not ack).
   */
  receive(ev: Incoming): Promise<void>
  /** Audit and log an event refused before it could be parsed into an Incoming. */
  malformed(reason: string, detail?: Record<string, unknown>): void
  setState(state: ChannelState, detail?: string): void
  maxAttachmentBytes: number
}

export interface SendOptions {
  replyId: string
  part: number
  parts: number
}

export interface Attachment {
  body: Readable
  size?: number
  mime?: string
}

export interface ChannelAdapter {
  readonly type: string
  /** Maximum characters per message; longer replies are split. */
  readonly limit: number
  start(): Promise<void>
  stop(): Promise<void>
  /** Convert Markdown to the channel's dialect. */
  format(text: string): string
  /** Send one part. Resolve when the channel accepted it; throw SendError otherwise. */
  send(route: Route, text: string, opts: SendOptions): Promise<void>
  /** Webhook-style channels: a request to /channels/<name>[/...] on the public listener. */
  handleHttp?(req: IncomingMessage, res: ServerResponse, body: Buffer): Promise<void>
  fetchAttachment?(ref: string, maxBytes: number): Promise<Attachment>
}

/** A failed send: retryAfterMs set for rate limits; permanent for errors a retry cannot fix. */
export class SendError extends Error {
  constructor(
    message: string,
    readonly permanent: boolean,
    readonly retryAfterMs?: number,
  ) {
    super(message)
    this.name = 'SendError'
  }
}

/** Exponential backoff with full jitter. */
export function backoff(attempt: number, baseMs = 500, maxMs = 60000): number {
  const cap = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 16))
  return Math.round(cap / 2 + Math.random() * (cap / 2))
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve()
    const t = setTimeout(done, ms)
    function done() {
      clearTimeout(t)
      signal?.removeEventListener('abort', done)
      resolve()
    }
    signal?.addEventListener('abort', done)
  })
}

/** Read a response body into memory with a byte cap (throws when exceeded). */
export async function fetchLimited(url: string, init: RequestInit, maxBytes: number): Promise<Attachment> {
  const r = await fetch(url, { ...init, redirect: 'error' })
  if (!r.ok || !r.body) throw new Error(`attachment fetch failed: HTTP ${r.status}`)
  const len = Number(r.headers.get('content-length') ?? NaN)
  if (Number.isFinite(len) && len > maxBytes) {
    await r.body.cancel()
    throw Object.assign(new Error(`attachment is ${len} bytes, over the limit of ${maxBytes}`), { code: 'ETOOBIG' })
  }
  const { Readable } = await import('node:stream')
  let seen = 0
  const src = Readable.fromWeb(r.body as import('node:stream/web').ReadableStream)
  const { Transform } = await import('node:stream')
  const cap = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      seen += chunk.length
      if (seen > maxBytes) cb(Object.assign(new Error(`attachment over the limit of ${maxBytes} bytes`), { code: 'ETOOBIG' }))
      else cb(null, chunk)
    },
  })
  src.on('error', (e) => cap.destroy(e))
  return { body: src.pipe(cap), ...(Number.isFinite(len) ? { size: len } : {}), mime: r.headers.get('content-type') ?? 'application/octet-stream' }
}
