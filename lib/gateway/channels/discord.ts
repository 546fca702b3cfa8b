/**
 * Discord adapter on @discordjs/rest (REST, `api` base URL configurable) and @discordjs/ws (the
 * Gateway WebSocket; its URL comes from GET /gateway/bot on that REST base, so a fake server on
 * loopback drives it end to end). We use these two lower-level discord.js packages rather than
 * the discord.js Client: the Client's caches drop messages from uncached channels and add nothing
 * a relay needs. Messages are created with a nonce and enforce_nonce, so Discord itself drops a
 * duplicate send of the same reply part (true exactly-once within Discord's nonce window).
 * Limit: the Gateway has no acknowledgements; a message that arrives while the gateway is down and
 * the session cannot be resumed is not redelivered by Discord.
 */
import { createHash } from 'node:crypto'
import { REST, DiscordAPIError, HTTPError, RateLimitError } from '@discordjs/rest'
import { WebSocketManager, WebSocketShardEvents } from '@discordjs/ws'
import { GatewayDispatchEvents, GatewayIntentBits, Routes, type GatewayMessageCreateDispatchData } from 'discord-api-types/v10'
import { errorText } from '../redact.js'
import { LIMITS, toDiscord } from '../text.js'
import type { Route } from '../types.js'
import { SendError, fetchLimited, type Attachment, type ChannelAdapter, type ChannelContext, type SendOptions } from './types.js'

export class DiscordAdapter implements ChannelAdapter {
  readonly type = 'discord'
  readonly limit = LIMITS.discord!
  private rest: REST
  private ws: WebSocketManager
  private me = ''
  private apiUrl: string

  constructor(private ctx: ChannelContext) {
    const token = ctx.secret('token')
    this.apiUrl = (ctx.config.api_url ?? 'https://discord.com/api').replace(/\/+$/, '')
    this.rest = new REST({ api: this.apiUrl, rejectOnRateLimit: () => true, retries: 1, timeout: 15000 }).setToken(token)
    this.ws = new WebSocketManager({
      token,
      rest: this.rest,
      intents: GatewayIntentBits.Guilds | GatewayIntentBits.GuildMessages | GatewayIntentBits.DirectMessages | GatewayIntentBits.MessageContent,
    })
  }

  format(text: string): string {
    return toDiscord(text)
  }

  async start(): Promise<void> {
    this.ctx.setState('starting')
    this.ws.on(WebSocketShardEvents.Dispatch, ({ data }) => {
      if (data.t === GatewayDispatchEvents.Ready) {
        this.me = data.d.user.id
        this.ctx.setState('healthy')
      } else if (data.t === GatewayDispatchEvents.Resumed) {
        this.ctx.setState('healthy', 'resumed')
      } else if (data.t === GatewayDispatchEvents.MessageCreate) {
        this.onMessage(data.d).catch((e) => this.ctx.log.error({ channel: this.ctx.name, err: errorText(e) }, 'discord: could not store message'))
      }
    })
    this.ws.on(WebSocketShardEvents.Closed, ({ code }) => this.ctx.setState('degraded', `gateway connection closed (${code}); reconnecting`))
    this.ws.on(WebSocketShardEvents.Error, ({ error }) => this.ctx.log.warn({ channel: this.ctx.name, err: errorText(error) }, 'discord: gateway error'))
    // connect() retries internally; a failure here (bad token, unreachable) is reported, and we retry
    const connect = async (attempt: number): Promise<void> => {
      try {
        await this.ws.connect()
      } catch (e) {
        this.ctx.setState(attempt >= 4 ? 'unhealthy' : 'degraded', `connect: ${errorText(e)}`)
        if (this.stopped) return
        this.retry = setTimeout(() => void connect(attempt + 1), Math.min(60000, 1000 * 2 ** attempt) * (0.5 + Math.random() / 2))
      }
    }
    void connect(0)
  }
  private stopped = false
  private retry: NodeJS.Timeout | undefined

  private async onMessage(m: GatewayMessageCreateDispatchData): Promise<void> {
    if (!m || typeof m.id !== 'string' || typeof m.channel_id !== 'string' || !m.author || typeof m.author.id !== 'string') {
      this.ctx.malformed('MESSAGE_CREATE lacks id, channel_id or author.id')
      return
    }
    if (m.author.bot || m.author.id === this.me) return
    const isGroup = Boolean(m.guild_id)
    const mentioned = Array.isArray(m.mentions) && m.mentions.some((u) => u.id === this.me)
    await this.ctx.receive({
      nativeId: m.id,
      chat: m.channel_id,
      message: m.id,
      sender: { id: m.author.id, name: m.author.global_name ?? m.author.username ?? m.author.id },
      text: typeof m.content === 'string' ? m.content : '',
      isGroup,
      mentioned,
      attachments: (m.attachments ?? []).map((a) => ({ name: a.filename, size: a.size, ...(a.content_type ? { mime: a.content_type } : {}), ref: a.url })),
    })
  }

  async send(route: Route, text: string, opts: SendOptions): Promise<void> {
    const nonce = createHash('sha256').update(`${opts.replyId}#${opts.part}`).digest('base64url').slice(0, 25)
    try {
      await this.rest.post(Routes.channelMessages(route.chat), {
        body: {
          content: text,
          nonce,
          enforce_nonce: true,
          allowed_mentions: { parse: [] },
          ...(route.message && opts.part === 0 ? { message_reference: { message_id: route.message, fail_if_not_exists: false } } : {}),
        },
      })
    } catch (e) {
      if (e instanceof RateLimitError) throw new SendError('discord: rate limited', false, Math.max(1, e.retryAfter))
      if (e instanceof DiscordAPIError) throw new SendError(`discord: ${e.status} ${errorText(e)}`, e.status >= 400 && e.status < 500 && e.status !== 429)
      if (e instanceof HTTPError) throw new SendError(`discord: HTTP ${e.status}`, false)
      throw new SendError(`discord: ${errorText(e)}`, false)
    }
  }

  async fetchAttachment(url: string, maxBytes: number): Promise<Attachment> {
    const u = new URL(url)
    if (!['cdn.discordapp.com', 'media.discordapp.net'].includes(u.hostname) && u.origin !== new URL(this.apiUrl).origin)
      throw new Error(`discord: attachment URL host ${u.hostname} is not Discord's CDN`)
    return fetchLimited(url, {}, maxBytes) // CDN URLs are signed; no token is sent
  }

  async stop(): Promise<void> {
    this.stopped = true
    clearTimeout(this.retry)
    await Promise.resolve(this.ws.destroy()).catch(() => {})
    this.ctx.setState('stopped')
  }
}
