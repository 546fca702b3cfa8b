/**
 * Telegram adapter on grammy's Api client (apiRoot configurable, so tests use a fake server).
 * The polling loop is ours rather than grammy's bot.start(): the gateway must store each update
 * durably before confirming it to Telegram (the next getUpdates offset), report the channel's
 * health, and honour 429 retry_after, which needs control of the loop. Webhook mode verifies
 * X-Telegram-Bot-Api-Secret-Token and answers 200 only after the update is stored.
 * Replies are sent as plain text (see text.ts: toTelegram).
 */
import { timingSafeEqual } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { Api, GrammyError, HttpError } from 'grammy'
import { errorText } from '../redact.js'
import { toTelegram, LIMITS } from '../text.js'
import type { Incoming, Route } from '../types.js'
import { SendError, backoff, fetchLimited, sleep, type Attachment, type ChannelAdapter, type ChannelContext } from './types.js'

interface TgUser { id: number; is_bot?: boolean; first_name?: string; last_name?: string; username?: string }
interface TgEntity { type: string; offset: number; length: number }
interface TgMessage {
  message_id: number
  message_thread_id?: number
  from?: TgUser
  chat: { id: number; type: string; title?: string }
  text?: string
  caption?: string
  entities?: TgEntity[]
  caption_entities?: TgEntity[]
  reply_to_message?: { from?: TgUser }
  photo?: { file_id: string; file_size?: number; width: number }[]
  document?: { file_id: string; file_name?: string; file_size?: number; mime_type?: string }
  voice?: { file_id: string; file_size?: number; mime_type?: string }
  audio?: { file_id: string; file_name?: string; file_size?: number; mime_type?: string }
  video?: { file_id: string; file_name?: string; file_size?: number; mime_type?: string }
}
interface TgUpdate { update_id: number; message?: TgMessage }

export class TelegramAdapter implements ChannelAdapter {
  readonly type = 'telegram'
  readonly limit = LIMITS.telegram!
  private api: Api
  private apiRoot: string
  private token: string
  private me: TgUser | null = null
  private abort = new AbortController()
  private loop: Promise<void> | null = null

  constructor(private ctx: ChannelContext) {
    this.token = ctx.secret('token')
    this.apiRoot = (ctx.config.api_root ?? 'https://api.telegram.org').replace(/\/+$/, '')
    this.api = new Api(this.token, { apiRoot: this.apiRoot })
  }

  format(text: string): string {
    return toTelegram(text)
  }

  async start(): Promise<void> {
    this.ctx.setState('starting')
    this.loop = this.run()
  }

  private async run(): Promise<void> {
    const signal = this.abort.signal
    let failures = 0
    // getMe first: the bot's username decides what counts as a mention in groups
    while (!signal.aborted && !this.me) {
      try {
        this.me = (await this.api.getMe(signal as never)) as TgUser
      } catch (e) {
        failures = await this.failed(e, failures, 'getMe')
      }
    }
    if (this.ctx.config.mode === 'webhook') {
      if (this.me) this.ctx.setState('healthy', 'webhook')
      return
    }
    let offset: number | undefined
    const timeout = this.ctx.config.poll_timeout_s ?? 30
    while (!signal.aborted) {
      let updates: TgUpdate[]
      try {
        updates = (await this.api.getUpdates({ ...(offset !== undefined ? { offset } : {}), timeout, allowed_updates: ['message'] }, signal as never)) as unknown as TgUpdate[]
        if (failures) this.ctx.log.info({ channel: this.ctx.name }, 'telegram: polling recovered')
        failures = 0
        this.ctx.setState('healthy')
      } catch (e) {
        if (signal.aborted) return
        failures = await this.failed(e, failures, 'getUpdates')
        continue
      }
      if (!Array.isArray(updates)) {
        this.ctx.malformed('getUpdates result is not an array')
        await sleep(1000, signal)
        continue
      }
      // store the whole batch concurrently (one group-committed fsync), then move the offset:
      // the next getUpdates confirms them to Telegram only after all are on disk
      const results = await Promise.allSettled(updates.map((u) => this.handleUpdate(u)))
      const firstFail = results.findIndex((r) => r.status === 'rejected')
      const upto = firstFail < 0 ? updates.length : firstFail
      for (let i = 0; i < upto; i++) {
        const u = updates[i]
        if (u && typeof u.update_id === 'number') offset = u.update_id + 1
      }
      if (firstFail >= 0) {
        // storage failed: do not confirm it (or anything after it); Telegram gives them to us again
        this.ctx.log.error({ channel: this.ctx.name, err: errorText((results[firstFail] as PromiseRejectedResult).reason) }, 'telegram: could not store update; will retry')
        await sleep(1000, signal)
      }
    }
  }

  /** Classify an API failure, set health, wait the right time. Returns the new failure count. */
  private async failed(e: unknown, failures: number, what: string): Promise<number> {
    const signal = this.abort.signal
    if (signal.aborted) return failures
    if (e instanceof GrammyError && e.error_code === 429) {
      const s = e.parameters?.retry_after ?? 1
      this.ctx.log.warn({ channel: this.ctx.name, retry_after: s }, `telegram: ${what} rate limited; waiting ${s}s`)
      this.ctx.setState('degraded', `rate limited (retry_after ${s}s)`)
      await sleep(s * 1000, signal)
      return failures
    }
    failures++
    const detail = e instanceof GrammyError ? `${e.error_code} ${e.description}` : errorText(e)
    const fatal = e instanceof GrammyError && (e.error_code === 401 || e.error_code === 404 || e.error_code === 409)
    this.ctx.setState(fatal || failures >= 5 ? 'unhealthy' : 'degraded', `${what}: ${detail}`)
    const wait = backoff(failures, 500, fatal ? 300000 : 60000)
    this.ctx.log.warn({ channel: this.ctx.name, failures, retry_in_ms: wait }, `telegram: ${what} failed: ${detail}`)
    await sleep(wait, signal)
    return failures
  }

  private async handleUpdate(u: TgUpdate): Promise<void> {
    if (!u || typeof u !== 'object' || typeof u.update_id !== 'number') {
      this.ctx.malformed('update without a numeric update_id', { update: typeof u })
      return
    }
    const m = u.message
    if (!m) return // other update kinds are not requested; ignore quietly
    if (typeof m !== 'object' || !m.chat || (typeof m.chat.id !== 'number' && typeof m.chat.id !== 'string') || typeof m.message_id !== 'number' || !m.from || typeof m.from.id !== 'number') {
      this.ctx.malformed(`update ${u.update_id}: message lacks chat.id, message_id or from.id`, { update_id: u.update_id })
      return
    }
    if (m.from.is_bot) return
    const text = (typeof m.text === 'string' && m.text) || (typeof m.caption === 'string' && m.caption) || ''
    const isGroup = m.chat.type !== 'private'
    const uname = this.me?.username?.toLowerCase()
    const entities = m.entities ?? m.caption_entities ?? []
    const mentioned =
      (uname !== undefined &&
        entities.some((en) => {
          const s = text.slice(en.offset, en.offset + en.length).toLowerCase()
          return (en.type === 'mention' && s === `@${uname}`) || (en.type === 'bot_command' && s.endsWith(`@${uname}`))
        })) ||
      (m.reply_to_message?.from?.id !== undefined && m.reply_to_message.from.id === this.me?.id)
    const attachments: Incoming['attachments'] = []
    if (Array.isArray(m.photo) && m.photo.length) {
      const p = m.photo[m.photo.length - 1]!
      attachments.push({ name: 'photo.jpg', ...(p.file_size ? { size: p.file_size } : {}), mime: 'image/jpeg', ref: p.file_id })
    }
    for (const [kind, d] of [['document', m.document], ['voice', m.voice], ['audio', m.audio], ['video', m.video]] as const) {
      if (d && typeof d.file_id === 'string')
        attachments.push({ name: ('file_name' in d && d.file_name) || kind, ...(d.file_size ? { size: d.file_size } : {}), ...(d.mime_type ? { mime: d.mime_type } : {}), ref: d.file_id })
    }
    const name = [m.from.first_name, m.from.last_name].filter(Boolean).join(' ') || m.from.username || String(m.from.id)
    await this.ctx.receive({
      nativeId: `${m.chat.id}:${m.message_id}`,
      chat: String(m.chat.id),
      ...(m.message_thread_id ? { thread: String(m.message_thread_id) } : {}),
      message: String(m.message_id),
      sender: { id: String(m.from.id), name },
      text,
      isGroup,
      mentioned,
      attachments,
    })
  }

  async handleHttp(req: IncomingMessage, res: ServerResponse, body: Buffer): Promise<void> {
    const want = Buffer.from(this.ctx.secret('webhook_secret'))
    const got = Buffer.from(String(req.headers['x-telegram-bot-api-secret-token'] ?? ''))
    if (this.ctx.config.mode !== 'webhook' || got.length !== want.length || !timingSafeEqual(got, want)) {
      this.ctx.log.warn({ channel: this.ctx.name }, 'telegram: webhook request with a wrong or missing secret token refused')
      res.writeHead(401).end()
      return
    }
    let u: TgUpdate
    try {
      u = JSON.parse(body.toString('utf8'))
    } catch {
      this.ctx.malformed('webhook body is not JSON')
      res.writeHead(400).end()
      return
    }
    await this.handleUpdate(u) // throws (-> 500, Telegram retries) if storage fails
    res.writeHead(200).end()
  }

  async send(route: Route, text: string): Promise<void> {
    try {
      await this.api.sendMessage(route.chat, text, {
        ...(route.message ? { reply_parameters: { message_id: Number(route.message), allow_sending_without_reply: true } } : {}),
        ...(route.thread ? { message_thread_id: Number(route.thread) } : {}),
      })
    } catch (e) {
      if (e instanceof GrammyError) {
        if (e.error_code === 429) throw new SendError('telegram: rate limited', false, (e.parameters?.retry_after ?? 1) * 1000)
        throw new SendError(`telegram: ${e.error_code} ${e.description}`, e.error_code >= 400 && e.error_code < 500)
      }
      if (e instanceof HttpError) throw new SendError(`telegram: network error: ${errorText(e.error)}`, false)
      throw new SendError(`telegram: ${errorText(e)}`, false)
    }
  }

  async fetchAttachment(fileId: string, maxBytes: number): Promise<Attachment> {
    const f = (await this.api.getFile(fileId)) as { file_path?: string; file_size?: number }
    if (f.file_size && f.file_size > maxBytes) throw Object.assign(new Error(`attachment is ${f.file_size} bytes, over the limit of ${maxBytes}`), { code: 'ETOOBIG' })
    if (!f.file_path) throw new Error('telegram: getFile returned no file_path')
    return fetchLimited(`${this.apiRoot}/file/bot${this.token}/${f.file_path}`, {}, maxBytes)
  }

  async stop(): Promise<void> {
    this.abort.abort()
    await this.loop?.catch(() => {})
    this.ctx.setState('stopped')
  }
}
