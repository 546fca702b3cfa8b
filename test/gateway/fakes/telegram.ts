/**
 * A fake Telegram Bot API on loopback: getMe, getUpdates (long poll with offset confirmation),
 * sendMessage (recorded; scriptable 429 / dropped connection / errors), getFile and file download.
 * Point grammy at it with apiRoot = fake.apiRoot.
 */
import type { Server } from 'node:http'
import { close, json, listen, params, waitFor, type Script } from './util.js'

export interface SentMessage {
  chat_id: string
  text: string
  reply_to?: number
  at: number
}

export class FakeTelegram {
  apiRoot = ''
  readonly sent: SentMessage[] = []
  readonly calls: { method: string; at: number }[] = []
  /** Updates not yet confirmed by an offset. */
  updates: Record<string, unknown>[] = []
  /** Highest offset the bot has confirmed (updates below it are acked). */
  confirmed = 0
  readonly scripts: Script[] = []
  readonly files = new Map<string, Buffer>()
  readonly me = { id: 999000, is_bot: true, first_name: 'Cordon', username: 'cordon_test_bot' }
  readonly hung: import('node:http').ServerResponse[] = []
  /** Called after each accepted sendMessage (benchmarks use it instead of polling). */
  onSent?: () => void
  private nextUpdate = 1
  private nextMessage = 1
  private waiters = new Set<() => void>()
  private server!: Server

  constructor(readonly token: string) {}

  static async start(token = '123456:TEST-telegram-token-abcdef'): Promise<FakeTelegram> {
    const f = new FakeTelegram(token)
    const { server, port } = await listen((req, res) => f.handle(req, res))
    f.server = server
    f.apiRoot = `http://127.0.0.1:${port}`
    return f
  }

  /** Queue a raw update (update_id assigned if absent). */
  pushRaw(u: Record<string, unknown>): Record<string, unknown> {
    if (u.update_id === undefined) u.update_id = this.nextUpdate++
    this.updates.push(u)
    for (const w of [...this.waiters]) w()
    return u
  }

  /** Queue a text message from a user. */
  message(o: { from: number; text: string; chat?: number; chatType?: 'private' | 'group' | 'supergroup'; name?: string; entities?: unknown[]; extra?: Record<string, unknown> }) {
    const chat = o.chat ?? o.from
    return this.pushRaw({
      message: {
        message_id: this.nextMessage++,
        date: Math.floor(Date.now() / 1000),
        from: { id: o.from, is_bot: false, first_name: o.name ?? `User${o.from}` },
        chat: { id: chat, type: o.chatType ?? 'private' },
        text: o.text,
        ...(o.entities ? { entities: o.entities } : {}),
        ...o.extra,
      },
    })
  }

  sentTo(chat: number | string): SentMessage[] {
    return this.sent.filter((s) => s.chat_id === String(chat))
  }

  waitSent(n: number, timeoutMs = 10000, chat?: number | string): Promise<SentMessage[]> {
    return waitFor(() => {
      const l = chat === undefined ? this.sent : this.sentTo(chat)
      return l.length >= n && l
    }, timeoutMs, `${n} message(s) sent to the fake Telegram`)
  }

  private async handle(req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse) {
    const url = new URL(req.url ?? '/', 'http://x')
    const fm = /^\/file\/bot([^/]+)\/(.+)$/.exec(url.pathname)
    if (fm) {
      if (fm[1] !== this.token) return json(res, 401, { ok: false })
      const data = this.files.get(fm[2]!)
      if (!data) return json(res, 404, { ok: false })
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': data.length })
      return void res.end(data)
    }
    const m = /^\/bot([^/]+)\/(\w+)$/.exec(url.pathname)
    if (!m) return json(res, 404, { ok: false, error_code: 404, description: 'Not Found' })
    if (m[1] !== this.token) return json(res, 401, { ok: false, error_code: 401, description: 'Unauthorized' })
    const method = m[2]!
    const p = await params(req)
    this.calls.push({ method, at: Date.now() })
    switch (method) {
      case 'getMe':
        return json(res, 200, { ok: true, result: this.me })
      case 'getUpdates': {
        const offset = p.offset !== undefined ? Number(p.offset) : undefined
        if (offset !== undefined) {
          this.confirmed = Math.max(this.confirmed, offset)
          this.updates = this.updates.filter((u) => (u.update_id as number) >= offset)
        }
        const timeout = Number(p.timeout ?? 0)
        const end = Date.now() + timeout * 1000
        while (!this.updates.length && Date.now() < end && !res.destroyed) {
          await new Promise<void>((resolve) => {
            const done = () => (clearTimeout(t), this.waiters.delete(done), resolve())
            const t = setTimeout(done, Math.max(1, end - Date.now()))
            this.waiters.add(done)
          })
        }
        return json(res, 200, { ok: true, result: this.updates.slice(0, Number(p.limit ?? 100)) })
      }
      case 'sendMessage': {
        const s = this.scripts.shift()
        if (s?.kind === '429') return json(res, 429, { ok: false, error_code: 429, description: `Too Many Requests: retry after ${s.retryAfter}`, parameters: { retry_after: s.retryAfter } })
        if (s?.kind === 'drop') return void res.socket?.destroy()
        if (s?.kind === 'hang') {
          // hold the request unanswered (as if the send never completed); dropped at releaseHung()
          this.hung.push(res)
          this.calls.push({ method: 'sendMessage(hung)', at: Date.now() })
          return
        }
        if (s?.kind === 'error') return json(res, s.status, { ok: false, error_code: s.status, description: s.description ?? 'Bad Request' })
        const rp = p.reply_parameters as { message_id?: number } | undefined
        this.sent.push({ chat_id: String(p.chat_id), text: String(p.text), ...(rp?.message_id ? { reply_to: rp.message_id } : {}), at: Date.now() })
        this.onSent?.()
        return json(res, 200, { ok: true, result: { message_id: 100000 + this.sent.length, date: 0, chat: { id: Number(p.chat_id), type: 'private' }, text: p.text } })
      }
      case 'getFile': {
        const id = String(p.file_id)
        if (!this.files.has(id)) return json(res, 400, { ok: false, error_code: 400, description: 'Bad Request: invalid file_id' })
        return json(res, 200, { ok: true, result: { file_id: id, file_unique_id: id, file_size: this.files.get(id)!.length, file_path: id } })
      }
      default:
        return json(res, 404, { ok: false, error_code: 404, description: `Not Found: method ${method}` })
    }
  }

  /** Drop held requests without a response: the message was never accepted. */
  releaseHung(): void {
    for (const r of this.hung.splice(0)) r.socket?.destroy()
  }

  close(): Promise<void> {
    this.releaseHung()
    for (const w of [...this.waiters]) w()
    return close(this.server)
  }
}
