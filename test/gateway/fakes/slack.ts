/**
 * A fake Slack: the Web API (auth.test, users.info, chat.postMessage with scriptable 429s,
 * apps.connections.open) and a Socket Mode WebSocket, plus helpers that sign Events API
 * requests the way Slack does (v0 HMAC-SHA256 over "v0:<ts>:<body>").
 */
import { createHmac } from 'node:crypto'
import type { Server } from 'node:http'
import { WebSocketServer, type WebSocket } from 'ws'
import { close, json, listen, params, waitFor, type Script } from './util.js'

export interface SlackPost {
  channel: string
  text: string
  thread_ts?: string
  at: number
}

export class FakeSlack {
  apiUrl = ''
  readonly posts: SlackPost[] = []
  readonly calls: { method: string; at: number }[] = []
  readonly scripts: Script[] = []
  readonly acks: string[] = []
  readonly botUser = 'UBOT'
  private server!: Server
  private wss!: WebSocketServer
  private sockets = new Set<WebSocket>()
  private port = 0
  private envelope = 0

  constructor(readonly token: string, readonly appToken: string) {}

  static async start(token = 'xoxb-test-slack-bot-token', appToken = 'xapp-test-slack-app-token'): Promise<FakeSlack> {
    const f = new FakeSlack(token, appToken)
    const { server, port } = await listen((req, res) => f.handle(req, res))
    f.server = server
    f.port = port
    f.apiUrl = `http://127.0.0.1:${port}/api/`
    f.wss = new WebSocketServer({ noServer: true })
    server.on('upgrade', (req, sock, head) => {
      f.wss.handleUpgrade(req, sock, head, (ws) => {
        f.sockets.add(ws)
        ws.on('close', () => f.sockets.delete(ws))
        ws.on('message', (d) => {
          const m = JSON.parse(String(d)) as { envelope_id?: string }
          if (m.envelope_id) f.acks.push(m.envelope_id)
        })
        ws.send(JSON.stringify({ type: 'hello', num_connections: 1 }))
      })
    })
    return f
  }

  /** Cut every Socket Mode connection (the gateway should reconnect). */
  dropSockets(): void {
    for (const ws of this.sockets) ws.terminate()
  }

  get connected(): number {
    return this.sockets.size
  }

  /** Send an events_api envelope over Socket Mode; returns its envelope_id. */
  pushSocketEvent(event: Record<string, unknown>): string {
    const id = `env-${++this.envelope}`
    for (const ws of this.sockets) ws.send(JSON.stringify({ envelope_id: id, type: 'events_api', accepts_response_payload: false, payload: { type: 'event_callback', event_id: `Ev${this.envelope}`, event } }))
    return id
  }

  waitPosts(n: number, timeoutMs = 10000): Promise<SlackPost[]> {
    return waitFor(() => this.posts.length >= n && this.posts, timeoutMs, `${n} chat.postMessage call(s)`)
  }

  private async handle(req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse) {
    const url = new URL(req.url ?? '/', 'http://x')
    const auth = String(req.headers.authorization ?? '')
    const p = await params(req)
    const tok = auth.replace(/^Bearer /, '') || String(p.token ?? '')
    if (url.pathname.startsWith('/files/')) {
      if (tok !== this.token) return json(res, 403, { ok: false })
      res.writeHead(200, { 'content-type': 'text/plain' })
      return void res.end(`slack-file:${url.pathname.slice(7)}`)
    }
    const method = url.pathname.replace(/^\/api\//, '')
    this.calls.push({ method, at: Date.now() })
    if (method === 'apps.connections.open') {
      if (tok !== this.appToken) return json(res, 200, { ok: false, error: 'invalid_auth' })
      return json(res, 200, { ok: true, url: `ws://127.0.0.1:${this.port}/socket` })
    }
    if (tok !== this.token) return json(res, 200, { ok: false, error: 'invalid_auth' })
    switch (method) {
      case 'auth.test':
        return json(res, 200, { ok: true, user_id: this.botUser, team_id: 'T1', user: 'cordon' })
      case 'users.info':
        return json(res, 200, { ok: true, user: { id: p.user, name: `name-${String(p.user)}`, real_name: `Real ${String(p.user)}` } })
      case 'chat.postMessage': {
        const s = this.scripts.shift()
        if (s?.kind === '429') return json(res, 429, { ok: false, error: 'ratelimited' }, { 'retry-after': String(s.retryAfter) })
        if (s?.kind === 'drop') return void res.socket?.destroy()
        if (s?.kind === 'error') return json(res, 200, { ok: false, error: s.description ?? 'channel_not_found' })
        this.posts.push({ channel: String(p.channel), text: String(p.text), ...(p.thread_ts ? { thread_ts: String(p.thread_ts) } : {}), at: Date.now() })
        return json(res, 200, { ok: true, channel: p.channel, ts: `${Date.now() / 1000}` })
      }
      default:
        return json(res, 200, { ok: false, error: 'unknown_method' })
    }
  }

  async close(): Promise<void> {
    for (const ws of this.sockets) ws.terminate()
    this.wss.close()
    await close(this.server)
  }
}

/** Headers Slack would send for this body. */
export function slackSign(secret: string, body: string, ts = Math.floor(Date.now() / 1000)): Record<string, string> {
  return {
    'content-type': 'application/json',
    'x-slack-request-timestamp': String(ts),
    'x-slack-signature': 'v0=' + createHmac('sha256', secret).update(`v0:${ts}:${body}`).digest('hex'),
  }
}

export function slackMessageEvent(o: { user: string; text: string; channel?: string; ts?: string; channel_type?: string; type?: string; files?: unknown[] }) {
  return {
    type: o.type ?? 'message',
    user: o.user,
    text: o.text,
    channel: o.channel ?? `D${o.user}`,
    channel_type: o.channel_type ?? 'im',
    ts: o.ts ?? `${Date.now() / 1000}`,
    ...(o.files ? { files: o.files } : {}),
  }
}
