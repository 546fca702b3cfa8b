/** Small HTTP helpers shared by the gateway's listeners. */
import type { IncomingMessage, ServerResponse } from 'node:http'

export class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message)
  }
}

/** Read a request body, refusing (413) past maxBytes without buffering the excess. */
export function readBody(req: IncomingMessage, maxBytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const len = Number(req.headers['content-length'] ?? NaN)
    if (Number.isFinite(len) && len > maxBytes) {
      req.resume()
      return reject(new HttpError(413, `request body of ${len} bytes is over the limit of ${maxBytes}`))
    }
    const chunks: Buffer[] = []
    let n = 0
    let failed = false
    req.on('data', (c: Buffer) => {
      if (failed) return
      n += c.length
      if (n > maxBytes) {
        failed = true
        req.resume()
        reject(new HttpError(413, `request body is over the limit of ${maxBytes} bytes`))
        return
      }
      chunks.push(c)
    })
    req.on('end', () => failed || resolve(Buffer.concat(chunks)))
    req.on('error', (e) => failed || reject(e))
  })
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) return
  const s = JSON.stringify(body) + '\n'
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(s), 'cache-control': 'no-store' })
  res.end(s)
}

export function parseHostPort(s: string, what: string): { host: string; port: number } {
  const m = /^\[?([^\]]*)\]?:(\d+)$/.exec(s)
  if (!m) throw new Error(`${what}: expected HOST:PORT, got "${s}"`)
  return { host: m[1] || '127.0.0.1', port: Number(m[2]) }
}

export function bearerOk(req: IncomingMessage, token: string | undefined): boolean {
  if (!token) return true
  const h = String(req.headers.authorization ?? '')
  const want = `Bearer ${token}`
  if (h.length !== want.length) return false
  let d = 0
  for (let i = 0; i < h.length; i++) d |= h.charCodeAt(i) ^ want.charCodeAt(i)
  return d === 0
}
