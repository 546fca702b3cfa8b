/**
 * Slack adapter. Replies and lookups go through @slack/web-api's WebClient (slackApiUrl
 * configurable). Events API requests are verified by their v0 HMAC-SHA256 signature over
 * "v0:<timestamp>:<body>" with the signing secret, and refused when the timestamp is more than
 * five minutes off (replay window); event retries are deduplicated by message id.
 * Socket Mode is a small hand-written client on `ws`, because @slack/socket-mode is not among
 * the installed dependencies and the protocol is three messages (hello, an envelope, its ack):
 * apps.connections.open with the app token gives a wss URL; each envelope is acked with its
 * envelope_id only after the event is stored.
 */
import { createHmac, timingSafeEqual } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { WebClient, ErrorCode, type WebAPIPlatformError, type WebAPIRateLimitedError } from '@slack/web-api'
import WebSocket from 'ws'
import { errorText } from '../redact.js'
import { LIMITS, toSlack } from '../text.js'
import type { Route } from '../types.js'
import { SendError, backoff, fetchLimited, sleep, type Attachment, type ChannelAdapter, type ChannelContext } from './types.js'

interface SlackEvent {
  type: string
  subtype?: string
  bot_id?: string
  user?: string
  text?: string
  ts?: string
  thread_ts?: string
  channel?: string
  channel_type?: string
  files?: { id: string; name?: string; size?: number; mimetype?: string; url_private_download?: string; url_private?: string }[]
}

export class SlackAdapter implements ChannelAdapter {
  readonly type = 'slack'
  readonly limit = LIMITS.slack!
  private web: WebClient
  private token: string
  private botUser = ''
  private names = new Map<string, string>()
  private abort = new AbortController()
  private loop: Promise<void> | null = null
  private ws: WebSocket | null = null
  private apiUrl: string

  constructor(private ctx: ChannelContext) {
    this.token = ctx.secret('token')
    this.apiUrl = ctx.config.api_url ?? 'https://slack.com/api/'
    if (!this.apiUrl.endsWith('/')) this.apiUrl += '/'
    this.web = new WebClient(this.token, { slackApiUrl: this.apiUrl, rejectRateLimitedCalls: true, retryConfig: { retries: 0 }, logLevel: 'error' as never, logger: quietLogger() })
  }

  format(text: string): string {
    return toSlack(text)
  }

  async start(): Promise<void> {
    this.ctx.setState('starting')
    this.loop = this.run()
  }

  private async run(): Promise<void> {
    const signal = this.abort.signal
    let failures = 0
    while (!signal.aborted && !this.botUser) {
      try {
        const r = await this.web.auth.test()
        this.botUser = String(r.user_id ?? '')
        if (this.ctx.config.mode !== 'socket') this.ctx.setState('healthy', 'events API')
      } catch (e) {
        failures++
        this.ctx.setState(failures >= 5 ? 'unhealthy' : 'degraded', `auth.test: ${errorText(e)}`)
        await sleep(backoff(failures), signal)
      }
    }
    if (this.ctx.config.mode === 'socket') await this.socketLoop()
  }

  // ---- Events API -------------------------------------------------------------------------
  async handleHttp(req: IncomingMessage, res: ServerResponse, body: Buffer): Promise<void> {
    if (this.ctx.config.mode === 'socket') {
      res.writeHead(404).end()
      return
    }
    const ts = String(req.headers['x-slack-request-timestamp'] ?? '')
    const sig = String(req.headers['x-slack-signature'] ?? '')
    const now = Math.floor(Date.now() / 1000)
    if (!/^\d+$/.test(ts) || Math.abs(now - Number(ts)) > 300) {
      this.ctx.log.warn({ channel: this.ctx.name, timestamp: ts }, 'slack: request refused: timestamp missing or more than 5 minutes off (possible replay)')
      res.writeHead(401, { 'content-type': 'text/plain' }).end('stale or missing timestamp\n')
      return
    }
    const want = Buffer.from('v0=' + createHmac('sha256', this.ctx.secret('signing_secret')).update(`v0:${ts}:`).update(body).digest('hex'))
    const got = Buffer.from(sig)
    if (got.length !== want.length || !timingSafeEqual(got, want)) {
      this.ctx.log.warn({ channel: this.ctx.name }, 'slack: request refused: X-Slack-Signature does not match (forged or wrong signing secret)')
      res.writeHead(401, { 'content-type': 'text/plain' }).end('bad signature\n')
      return
    }
    let p: { type?: string; challenge?: string; event?: SlackEvent; event_id?: string }
    try {
      p = JSON.parse(body.toString('utf8'))
    } catch {
      this.ctx.malformed('events API body is not JSON')
      res.writeHead(400).end()
      return
    }
    if (p.type === 'url_verification' && typeof p.challenge === 'string') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end(p.challenge)
      return
    }
    if (p.type === 'event_callback' && p.event) await this.handleEvent(p.event)
    res.writeHead(200).end()
  }

  private async handleEvent(ev: SlackEvent): Promise<void> {
    if (ev.type !== 'message' && ev.type !== 'app_mention') return
    if (ev.subtype && ev.subtype !== 'file_share') return // edits, joins, bot messages
    if (ev.bot_id || (this.botUser && ev.user === this.botUser)) return
    if (typeof ev.channel !== 'string' || typeof ev.ts !== 'string' || typeof ev.user !== 'string') {
      this.ctx.malformed('slack event lacks channel, ts or user', { type: ev.type })
      return
    }
    const text = typeof ev.text === 'string' ? ev.text : ''
    const isGroup = ev.channel_type ? ev.channel_type !== 'im' : !ev.channel.startsWith('D')
    const mentioned = ev.type === 'app_mention' || (this.botUser !== '' && text.includes(`<@${this.botUser}>`))
    await this.ctx.receive({
      // message and app_mention for one message share channel+ts: one id, delivered once
      nativeId: `${ev.channel}:${ev.ts}`,
      chat: ev.channel,
      ...(ev.thread_ts ? { thread: ev.thread_ts } : {}),
      message: ev.ts,
      sender: { id: ev.user, name: await this.nameOf(ev.user) },
      text,
      isGroup,
      mentioned,
      attachments: (ev.files ?? [])
        .filter((f) => f.url_private_download || f.url_private)
        .map((f) => ({ name: f.name ?? f.id, ...(f.size ? { size: f.size } : {}), ...(f.mimetype ? { mime: f.mimetype } : {}), ref: (f.url_private_download ?? f.url_private)! })),
    })
  }

  private async nameOf(user: string): Promise<string> {
    const c = this.names.get(user)
    if (c) return c
    try {
      // Slack wants its 200 within 3 s: a slow lookup falls back to the id
      const r = (await Promise.race([this.web.users.info({ user }), new Promise((_, rej) => setTimeout(() => rej(new Error('timeout')), 1500).unref())])) as {
        user?: { real_name?: string; name?: string }
      }
      const n = r.user?.real_name || r.user?.name || user
      this.names.set(user, n)
      return n
    } catch {
      return user
    }
  }

  // ---- Socket Mode ------------------------------------------------------------------------
  private async socketLoop(): Promise<void> {
    const signal = this.abort.signal
    const appWeb = new WebClient(this.ctx.secret('app_token'), { slackApiUrl: this.apiUrl, retryConfig: { retries: 0 }, logger: quietLogger() })
    let failures = 0
    while (!signal.aborted) {
      let url: string
      try {
        const r = await appWeb.apps.connections.open()
        url = String(r.url)
      } catch (e) {
        failures++
        this.ctx.setState(failures >= 5 ? 'unhealthy' : 'degraded', `apps.connections.open: ${errorText(e)}`)
        await sleep(backoff(failures), signal)
        continue
      }
      const closed = await new Promise<boolean>((resolve) => {
        const ws = new WebSocket(url)
        this.ws = ws
        const onAbort = () => ws.close()
        signal.addEventListener('abort', onAbort)
        ws.on('message', (data) => {
          let m: { type?: string; envelope_id?: string; payload?: { event?: SlackEvent } }
          try {
            m = JSON.parse(String(data))
          } catch {
            this.ctx.malformed('socket mode frame is not JSON')
            return
          }
          if (m.type === 'hello') {
            failures = 0
            this.ctx.setState('healthy', 'socket mode')
          } else if (m.type === 'disconnect') {
            ws.close()
          } else if (m.envelope_id) {
            const ev = m.type === 'events_api' ? m.payload?.event : undefined
            ;(ev ? this.handleEvent(ev) : Promise.resolve()).then(
              () => ws.send(JSON.stringify({ envelope_id: m.envelope_id })),
              (e) => this.ctx.log.error({ channel: this.ctx.name, err: errorText(e) }, 'slack: could not store event; not acking, Slack will redeliver'),
            )
          }
        })
        ws.on('error', (e) => this.ctx.log.warn({ channel: this.ctx.name, err: errorText(e) }, 'slack: socket mode connection error'))
        ws.on('close', () => {
          signal.removeEventListener('abort', onAbort)
          resolve(true)
        })
      })
      if (closed && !signal.aborted) {
        failures++
        this.ctx.setState(failures >= 5 ? 'unhealthy' : 'degraded', 'socket mode connection closed; reconnecting')
        await sleep(backoff(failures, 250), signal)
      }
    }
  }

  // ---- Sending ----------------------------------------------------------------------------
  async send(route: Route, text: string): Promise<void> {
    try {
      await this.web.chat.postMessage({ channel: route.chat, text, mrkdwn: true, ...(route.thread ? { thread_ts: route.thread } : {}) })
    } catch (e) {
      const err = e as { code?: string }
      if (err.code === ErrorCode.RateLimitedError) throw new SendError('slack: rate limited', false, ((e as WebAPIRateLimitedError).retryAfter ?? 1) * 1000)
      if (err.code === ErrorCode.PlatformError) {
        const c = (e as WebAPIPlatformError).data?.error ?? 'unknown'
        const transient = ['internal_error', 'fatal_error', 'service_unavailable', 'request_timeout', 'ratelimited'].includes(c)
        throw new SendError(`slack: chat.postMessage: ${c}`, !transient)
      }
      throw new SendError(`slack: ${errorText(e)}`, false)
    }
  }

  async fetchAttachment(url: string, maxBytes: number): Promise<Attachment> {
    // the bot token goes only to Slack's file host (or the configured API host, for tests)
    const u = new URL(url)
    const api = new URL(this.apiUrl)
    if (u.hostname !== 'files.slack.com' && u.origin !== api.origin) throw new Error(`slack: refusing to send the bot token to ${u.origin}`)
    return fetchLimited(url, { headers: { authorization: `Bearer ${this.token}` } }, maxBytes)
  }

  async stop(): Promise<void> {
    this.abort.abort()
    this.ws?.close()
    await this.loop?.catch(() => {})
    this.ctx.setState('stopped')
  }
}

function quietLogger() {
  const noop = () => {}
  return { debug: noop, info: noop, warn: noop, error: noop, setLevel: noop, getLevel: () => 'error', setName: noop } as never
}
