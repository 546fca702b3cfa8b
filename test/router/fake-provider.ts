/**
 * A fake model provider for tests: an HTTP server on loopback that speaks the OpenAI API
 * (/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses, /v1/models) and the
 * Anthropic Messages API (/v1/messages), streaming (SSE) and not, fails on command, and echoes
 * the headers it received. Reusable by any end-to-end test:
 *
 *   const fake = await FakeProvider.start({ expectKey: 'sk-real' })
 *   // point a router target at fake.baseUrl ("http://127.0.0.1:PORT/v1")
 *   fake.failNext({ status: 500 })          // next request gets a 500 in the API's format
 *   fake.failNext({ hang: true })           // next request never gets headers
 *   fake.failNext({ stallBody: true })      // headers and a few bytes, then the body stalls
 *   fake.requests[0].headers.authorization  // what the provider saw
 *   await fake.close()
 *
 * Commands can also come in the prompt (so a sandboxed agent can trigger them): a user message
 * containing `fake:status=503`, `fake:hang`, `fake:echo` (echo the received headers, including the
 * credential, into the answer text, a response header and the error bodies), `fake:echo-encoded`
 * (the credential base64- and hex-encoded in the answer and a header), `fake:echo-split`
 * (stream the credential in one event whose bytes go out in two TCP writes split inside the key), `fake:slow` (stream 40 chunks, 25 ms apart),
 * `fake:die` (drop the connection mid-stream).
 */
import http from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { EventEmitter, once } from 'node:events'

export type FakeDirective =
  | { status: number; body?: unknown; raw?: Buffer; headers?: Record<string, string> }
  | { hang: true }
  | { delayMs: number }
  | { dropConnection: true }
  | { stallBody: true }

export interface ReceivedRequest {
  method: string
  path: string
  headers: http.IncomingHttpHeaders
  rawBody: string
  body: any
  at: number
}

export interface FakeProviderOptions {
  host?: string
  port?: number
  /** When set, requests whose credential differs get a 401 in the API's format. */
  expectKey?: string
  /** Usage reported for every answer. */
  usage?: { input: number; output: number }
  /** Text of the answer (streamed word by word). */
  answer?: string
  /** Delay between streamed chunks, ms. */
  chunkDelayMs?: number
  /** Name shown in answers ("fake-a"), to tell providers apart in fallback tests. */
  name?: string
  /** Keep every request in .requests (default true; benchmarks turn it off). */
  record?: boolean
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export class FakeProvider extends EventEmitter {
  readonly requests: ReceivedRequest[] = []
  /** Streams whose client (the router) went away before the stream ended. */
  abortedStreams = 0
  completedStreams = 0
  private queue: FakeDirective[] = []
  private sockets = new Set<Socket>()
  url = ''
  baseUrl = ''
  port = 0

  private constructor(
    private readonly server: http.Server,
    readonly opts: FakeProviderOptions,
  ) {
    super()
  }

  static async start(opts: FakeProviderOptions = {}): Promise<FakeProvider> {
    const server = http.createServer()
    const fake = new FakeProvider(server, opts)
    server.on('request', (req, res) => void fake.handle(req, res))
    server.on('connection', (s) => {
      fake.sockets.add(s)
      s.on('close', () => fake.sockets.delete(s))
    })
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1')
    await once(server, 'listening')
    const a = server.address() as AddressInfo
    fake.port = a.port
    fake.url = `http://${opts.host ?? '127.0.0.1'}:${a.port}`
    fake.baseUrl = `${fake.url}/v1`
    return fake
  }

  /** Queue a behaviour for the next request (FIFO). */
  failNext(d: FakeDirective, times = 1): this {
    for (let i = 0; i < times; i++) this.queue.push(d)
    return this
  }

  /** Drop the queued behaviours no request has taken (e.g. those of calls the router refused). */
  clearQueue(): void {
    this.queue.length = 0
  }

  get name(): string {
    return this.opts.name ?? 'fake'
  }

  private credential(h: http.IncomingHttpHeaders): string | undefined {
    const a = h.authorization
    if (typeof a === 'string' && a.startsWith('Bearer ')) return a.slice(7)
    return (h['x-api-key'] as string | undefined) ?? (h['api-key'] as string | undefined)
  }

  private err(res: http.ServerResponse, anthropic: boolean, status: number, message: string, extra: Record<string, string> = {}): void {
    const body = anthropic
      ? { type: 'error', error: { type: status === 429 ? 'rate_limit_error' : status === 401 ? 'authentication_error' : status >= 500 ? 'api_error' : 'invalid_request_error', message } }
      : { error: { message, type: status === 429 ? 'rate_limit_exceeded' : status >= 500 ? 'server_error' : 'invalid_request_error', param: null, code: null } }
    const b = JSON.stringify(body)
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(b), ...extra })
    res.end(b)
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Buffer[] = []
    for await (const c of req) chunks.push(c as Buffer)
    const rawBody = Buffer.concat(chunks).toString('utf8')
    let body: any = null
    try {
      body = rawBody ? JSON.parse(rawBody) : null
    } catch {
      body = null
    }
    const path = (req.url ?? '/').split('?')[0]!
    const rec: ReceivedRequest = { method: req.method ?? 'GET', path, headers: req.headers, rawBody, body, at: Date.now() }
    if (this.opts.record !== false) this.requests.push(rec)
    this.emit('request', rec)
    const anthropic = path.startsWith('/v1/messages')
    const text = JSON.stringify(body?.messages ?? body?.input ?? body?.prompt ?? '')
    const cmd = (k: string) => text.includes(`fake:${k}`)
    const statusCmd = /fake:status=(\d{3})/.exec(text)

    const d = this.queue.shift() ?? (statusCmd ? { status: Number(statusCmd[1]) } : cmd('hang') ? { hang: true as const } : null)
    if (d && 'hang' in d) {
      res.on('close', () => this.emit('hung-closed'))
      return // never answer
    }
    if (d && 'stallBody' in d) {
      // headers and the first bytes of a JSON answer, then nothing: a body timeout for the reader
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': '1000' })
      res.write('{"id":"chatcmpl_stall",')
      res.on('close', () => this.emit('stalled-closed'))
      return
    }
    if (d && 'dropConnection' in d) {
      req.socket.destroy()
      return
    }
    if (d && 'delayMs' in d) await sleep(d.delayMs)
    if (d && 'status' in d) {
      if (d.raw !== undefined) {
        res.writeHead(d.status, { 'content-length': d.raw.length, ...(d.headers ?? {}) })
        res.end(d.raw)
      } else if (d.body !== undefined) {
        const b = JSON.stringify(d.body)
        res.writeHead(d.status, { 'content-type': 'application/json', ...(d.headers ?? {}) })
        res.end(b)
      } else this.err(res, anthropic, d.status, `fake ${this.name}: failing on command with ${d.status}`, { 'retry-after': '1', ...(d.headers ?? {}) })
      return
    }
    const cred = this.credential(req.headers)
    const echo = cmd('echo')
    if (this.opts.expectKey !== undefined && cred !== this.opts.expectKey) {
      this.err(res, anthropic, 401, `fake ${this.name}: invalid credential${echo ? ` "${cred}"` : ''}`)
      return
    }
    if (req.method === 'GET' && path === '/v1/models') {
      const b = JSON.stringify({ object: 'list', data: [{ id: 'fake-model', object: 'model', created: 0, owned_by: 'fake' }] })
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(b)
      return
    }
    const echoHeaders: Record<string, string> = echo ? { 'x-request-id': `req-${cred}`, 'x-echo-authorization': String(req.headers.authorization ?? '') } : {}
    let answer = this.opts.answer ?? `hello from ${this.name}`
    if (echo) answer += ` headers=${JSON.stringify(req.headers)}`
    // fake:echo-encoded: the credential as an upstream's debug output might carry it, base64 (as in
    // a Basic authorization, at three alignments) and hex
    if (cmd('echo-encoded')) {
      const enc = (s: string) => [Buffer.from(s).toString('base64'), Buffer.from(s).toString('hex')].join(' ')
      answer += ` b64=${enc(`${cred}`)} basic=${enc(`user:${cred}`)} pad=${enc(`ab${cred}!`)}`
      echoHeaders['x-request-id'] = `req-${Buffer.from(`user:${cred}`).toString('base64')}`
    }
    const usage = this.opts.usage ?? { input: 10, output: 5 }
    const model = body?.model ?? 'unknown'
    const stream = body?.stream === true
    const slow = cmd('slow')
    const words = slow ? Array.from({ length: 40 }, (_, i) => `w${i} `) : answer.split(/(?<= )/)
    const delay = slow ? 25 : (this.opts.chunkDelayMs ?? 0)

    if (!['/v1/chat/completions', '/v1/completions', '/v1/embeddings', '/v1/responses', '/v1/messages'].includes(path)) {
      this.err(res, anthropic, 404, `fake ${this.name}: unknown path ${path}`)
      return
    }
    if (!stream) {
      let out: unknown
      if (path === '/v1/messages') {
        out = { id: 'msg_fake', type: 'message', role: 'assistant', model, content: [{ type: 'text', text: answer }], stop_reason: 'end_turn', stop_sequence: null, usage: { input_tokens: usage.input, output_tokens: usage.output } }
      } else if (path === '/v1/responses') {
        out = {
          id: 'resp_fake', object: 'response', created_at: 0, status: 'completed', model,
          output: [{ type: 'message', id: 'msg_fake', status: 'completed', role: 'assistant', content: [{ type: 'output_text', text: answer, annotations: [] }] }],
          usage: { input_tokens: usage.input, output_tokens: usage.output, total_tokens: usage.input + usage.output },
        }
      } else if (path === '/v1/embeddings') {
        out = { object: 'list', model, data: [{ object: 'embedding', index: 0, embedding: [0.1, 0.2, 0.3] }], usage: { prompt_tokens: usage.input, total_tokens: usage.input } }
      } else if (path === '/v1/completions') {
        out = { id: 'cmpl_fake', object: 'text_completion', created: 0, model, choices: [{ index: 0, text: answer, finish_reason: 'stop', logprobs: null }], usage: { prompt_tokens: usage.input, completion_tokens: usage.output, total_tokens: usage.input + usage.output } }
      } else {
        out = {
          id: 'chatcmpl_fake', object: 'chat.completion', created: 0, model,
          choices: [{ index: 0, message: { role: 'assistant', content: answer, refusal: null }, finish_reason: 'stop', logprobs: null }],
          usage: { prompt_tokens: usage.input, completion_tokens: usage.output, total_tokens: usage.input + usage.output },
        }
      }
      const b = JSON.stringify(out)
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(b), 'x-request-id': 'req_fake', ...echoHeaders })
      res.end(b)
      return
    }

    // streaming
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', 'x-request-id': 'req_fake', ...echoHeaders })
    let closed = false
    res.on('close', () => {
      if (!res.writableFinished) {
        closed = true
        this.abortedStreams++
        this.emit('stream-aborted')
      }
    })
    const split = cmd('echo-split') && cred ? cred : null
    const send = async (s: string) => {
      if (closed) return
      const at = split ? s.indexOf(split) : -1
      if (at >= 0) {
        // the credential split across two TCP writes inside one SSE event
        const cut = at + Math.floor(split!.length / 2)
        res.write(s.slice(0, cut))
        await sleep(30)
        if (closed) return
        res.write(s.slice(cut))
      } else res.write(s)
      if (delay) await sleep(delay)
    }
    const ev = (name: string | null, data: unknown) => `${name ? `event: ${name}\n` : ''}data: ${JSON.stringify(data)}\n\n`
    const die = cmd('die')
    const pieces = split ? ['leak ', split, ' end'] : words
    if (path === '/v1/messages') {
      await send(ev('message_start', { type: 'message_start', message: { id: 'msg_fake', type: 'message', role: 'assistant', model, content: [], stop_reason: null, stop_sequence: null, usage: { input_tokens: usage.input, output_tokens: 1 } } }))
      await send(ev('content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }))
      for (const [i, w] of pieces.entries()) {
        if (die && i === 2) return void (await sleep(30), req.socket.destroy())
        await send(ev('content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: w } }))
      }
      await send(ev('content_block_stop', { type: 'content_block_stop', index: 0 }))
      await send(ev('message_delta', { type: 'message_delta', delta: { stop_reason: 'end_turn', stop_sequence: null }, usage: { output_tokens: usage.output } }))
      await send(ev('message_stop', { type: 'message_stop' }))
    } else if (path === '/v1/responses') {
      const base = { id: 'resp_fake', object: 'response', created_at: 0, model, output: [] as unknown[] }
      await send(ev('response.created', { type: 'response.created', sequence_number: 0, response: { ...base, status: 'in_progress' } }))
      let seq = 1
      for (const [i, w] of pieces.entries()) {
        if (die && i === 2) return void (await sleep(30), req.socket.destroy())
        await send(ev('response.output_text.delta', { type: 'response.output_text.delta', sequence_number: seq++, item_id: 'msg_fake', output_index: 0, content_index: 0, delta: w }))
      }
      await send(ev('response.completed', { type: 'response.completed', sequence_number: seq, response: { ...base, status: 'completed', usage: { input_tokens: usage.input, output_tokens: usage.output, total_tokens: usage.input + usage.output } } }))
    } else {
      const chat = path === '/v1/chat/completions'
      const base = { id: 'chatcmpl_fake', object: chat ? 'chat.completion.chunk' : 'text_completion', created: 0, model }
      if (chat) await send(ev(null, { ...base, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] }))
      for (const [i, w] of pieces.entries()) {
        if (die && i === 2) return void (await sleep(30), req.socket.destroy())
        await send(ev(null, { ...base, choices: [chat ? { index: 0, delta: { content: w }, finish_reason: null } : { index: 0, text: w, finish_reason: null }] }))
      }
      await send(ev(null, { ...base, choices: [chat ? { index: 0, delta: {}, finish_reason: 'stop' } : { index: 0, text: '', finish_reason: 'stop' }] }))
      if (body?.stream_options?.include_usage) await send(ev(null, { ...base, choices: [], usage: { prompt_tokens: usage.input, completion_tokens: usage.output, total_tokens: usage.input + usage.output } }))
      await send('data: [DONE]\n\n')
    }
    if (!closed) {
      this.completedStreams++
      res.end()
    }
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy()
    await new Promise<void>((r) => this.server.close(() => r()))
  }
}
