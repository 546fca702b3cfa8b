/**
 * A fake Discord: REST (GET /gateway/bot, POST /channels/:id/messages with nonce dedupe and
 * scriptable 429s) and the Gateway WebSocket (HELLO, IDENTIFY -> READY, HEARTBEAT -> ACK,
 * MESSAGE_CREATE dispatches). Point @discordjs/rest at `${fake.apiBase}`; the Gateway URL is
 * handed out by /gateway/bot.
 */
import type { Server } from 'node:http'
import { WebSocketServer, type WebSocket } from 'ws'
import { close, json, listen, params, waitFor, type Script } from './util.js'

export interface DiscordPost {
  channel: string
  content: string
  nonce?: string
  reference?: string
  at: number
}

export class FakeDiscord {
  apiBase = ''
  readonly posts: DiscordPost[] = []
  readonly calls: { route: string; at: number }[] = []
  readonly scripts: Script[] = []
  readonly me = { id: '900000000000000001', username: 'cordon', discriminator: '0', bot: true, global_name: null, avatar: null }
  duplicateNonces = 0
  identified = 0
  private server!: Server
  private wss!: WebSocketServer
  private sockets = new Set<WebSocket>()
  private port = 0
  private seq = 0
  private nextId = 1000n

  constructor(readonly token: string) {}

  static async start(token = 'discord-test-bot-token.abc.def'): Promise<FakeDiscord> {
    const f = new FakeDiscord(token)
    const { server, port } = await listen((req, res) => f.handle(req, res))
    f.server = server
    f.port = port
    f.apiBase = `http://127.0.0.1:${port}/api`
    f.wss = new WebSocketServer({ noServer: true })
    server.on('upgrade', (req, sock, head) => f.wss.handleUpgrade(req, sock, head, (ws) => f.onSocket(ws)))
    return f
  }

  private onSocket(ws: WebSocket) {
    this.sockets.add(ws)
    ws.on('close', () => this.sockets.delete(ws))
    ws.send(JSON.stringify({ op: 10, d: { heartbeat_interval: 41250 }, s: null, t: null }))
    ws.on('message', (d) => {
      const m = JSON.parse(String(d)) as { op: number; d: { token?: string } }
      if (m.op === 1) ws.send(JSON.stringify({ op: 11, d: null, s: null, t: null }))
      else if (m.op === 2) {
        if (m.d.token !== this.token) return ws.close(4004, 'Authentication failed.')
        this.identified++
        this.dispatch('READY', {
          v: 10,
          user: this.me,
          guilds: [],
          session_id: `sess-${this.identified}`,
          resume_gateway_url: `ws://127.0.0.1:${this.port}/gw`,
          application: { id: '900000000000000002', flags: 0 },
          shard: [0, 1],
        }, ws)
      }
    })
  }

  get connected() {
    return this.identified > 0 && this.sockets.size > 0
  }

  private dispatch(t: string, d: unknown, only?: WebSocket) {
    const frame = JSON.stringify({ op: 0, t, s: ++this.seq, d })
    for (const ws of only ? [only] : this.sockets) ws.send(frame)
  }

  /** A user writes in a channel (guild if guild_id given, else a DM). */
  message(o: { author: string; content: string; channel?: string; guild?: string; mentionBot?: boolean; attachments?: unknown[] }) {
    const id = String(++this.nextId)
    this.dispatch('MESSAGE_CREATE', {
      id,
      channel_id: o.channel ?? `dm-${o.author}`,
      ...(o.guild ? { guild_id: o.guild } : {}),
      author: { id: o.author, username: `user${o.author}`, global_name: `User ${o.author}`, discriminator: '0', avatar: null },
      content: o.content,
      timestamp: new Date().toISOString(),
      edited_timestamp: null,
      tts: false,
      mention_everyone: false,
      mentions: o.mentionBot ? [this.me] : [],
      mention_roles: [],
      attachments: o.attachments ?? [],
      embeds: [],
      pinned: false,
      type: 0,
    })
    return id
  }

  raw(t: string, d: unknown) {
    this.dispatch(t, d)
  }

  waitPosts(n: number, timeoutMs = 10000): Promise<DiscordPost[]> {
    return waitFor(() => this.posts.length >= n && this.posts, timeoutMs, `${n} Discord message(s) created`)
  }

  private async handle(req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse) {
    const url = new URL(req.url ?? '/', 'http://x')
    const route = url.pathname.replace(/^\/api\/v\d+/, '')
    this.calls.push({ route: `${req.method} ${route}`, at: Date.now() })
    if (req.headers.authorization !== `Bot ${this.token}`) return json(res, 401, { message: '401: Unauthorized', code: 0 })
    if (req.method === 'GET' && route === '/gateway/bot')
      return json(res, 200, { url: `ws://127.0.0.1:${this.port}/gw`, shards: 1, session_start_limit: { total: 1000, remaining: 999, reset_after: 14400000, max_concurrency: 1 } })
    if (req.method === 'GET' && route === '/users/@me') return json(res, 200, this.me)
    const m = /^\/channels\/([^/]+)\/messages$/.exec(route)
    if (req.method === 'POST' && m) {
      const p = (await params(req)) as { content?: string; nonce?: string; enforce_nonce?: boolean; message_reference?: { message_id?: string } }
      const s = this.scripts.shift()
      if (s?.kind === '429')
        return json(res, 429, { message: 'You are being rate limited.', retry_after: s.retryAfter, global: false }, {
          'retry-after': String(Math.ceil(s.retryAfter)),
          'x-ratelimit-limit': '5',
          'x-ratelimit-remaining': '0',
          'x-ratelimit-reset-after': String(s.retryAfter),
          'x-ratelimit-bucket': 'b1',
          'x-ratelimit-scope': 'user',
        })
      if (s?.kind === 'drop') return void res.socket?.destroy()
      if (s?.kind === 'error') return json(res, s.status, { message: s.description ?? 'Unknown Channel', code: 10003 })
      if (p.enforce_nonce && p.nonce && this.posts.some((x) => x.nonce === p.nonce && x.channel === m[1])) {
        this.duplicateNonces++
        return json(res, 200, { id: 'dup', channel_id: m[1], content: p.content })
      }
      this.posts.push({ channel: m[1]!, content: String(p.content), ...(p.nonce ? { nonce: p.nonce } : {}), ...(p.message_reference?.message_id ? { reference: p.message_reference.message_id } : {}), at: Date.now() })
      return json(res, 200, { id: String(++this.nextId), channel_id: m[1], content: p.content })
    }
    return json(res, 404, { message: '404: Not Found', code: 0 })
  }

  async close(): Promise<void> {
    for (const ws of this.sockets) ws.terminate()
    this.wss.close()
    await close(this.server)
  }
}
