/** Shared bits of the fake channel servers (loopback only). */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'

export async function readAll(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const c of req) chunks.push(c as Buffer)
  return Buffer.concat(chunks)
}

/** Parse JSON, urlencoded or query parameters into one object. */
export async function params(req: IncomingMessage): Promise<Record<string, unknown>> {
  const url = new URL(req.url ?? '/', 'http://x')
  const out: Record<string, unknown> = Object.fromEntries(url.searchParams)
  const body = await readAll(req)
  if (!body.length) return out
  const ct = String(req.headers['content-type'] ?? '')
  if (ct.includes('json')) Object.assign(out, JSON.parse(body.toString('utf8')))
  else if (ct.includes('urlencoded')) Object.assign(out, Object.fromEntries(new URLSearchParams(body.toString('utf8'))))
  return out
}

export function json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const s = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(s), ...headers })
  res.end(s)
}

export function listen(handler: (req: IncomingMessage, res: ServerResponse) => void | Promise<void>): Promise<{ server: Server; port: number }> {
  const server = createServer((req, res) => {
    Promise.resolve(handler(req, res)).catch((e) => {
      if (!res.headersSent) json(res, 500, { error: String(e) })
    })
  })
  server.keepAliveTimeout = 1000
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, port: (server.address() as AddressInfo).port })))
}

export function close(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve())
    server.closeAllConnections()
  })
}

/** What a scripted send does instead of succeeding. */
export type Script = { kind: 'ok' } | { kind: '429'; retryAfter: number } | { kind: 'drop' } | { kind: 'hang' } | { kind: 'error'; status: number; description?: string }

export async function waitFor<T>(fn: () => T | undefined | false, timeoutMs = 10000, what = 'condition'): Promise<T> {
  const end = Date.now() + timeoutMs
  for (;;) {
    const v = fn()
    if (v) return v
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}
