/**
 * HTTP over a unix socket: how the supervisor and `cordon term` talk to each component's control
 * socket (GET /health and friends). node:http with socketPath; no keep-alive, so a restarted
 * component is never talked to on a dead connection.
 */
import http from 'node:http'

export interface UnixResponse {
  status: number
  headers: http.IncomingHttpHeaders
  body: string
}

export function unixRequest(
  socketPath: string,
  path: string,
  opts: { method?: string; body?: unknown; timeoutMs?: number; headers?: Record<string, string> } = {},
): Promise<UnixResponse> {
  return new Promise((resolve, reject) => {
    const payload = opts.body === undefined ? undefined : typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body)
    const req = http.request(
      {
        socketPath,
        path,
        method: opts.method ?? 'GET',
        agent: false,
        headers: {
          host: 'localhost',
          ...(payload !== undefined ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}),
          ...opts.headers,
        },
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }))
        res.on('error', reject)
      },
    )
    const t = setTimeout(() => req.destroy(new Error(`timeout after ${opts.timeoutMs ?? 1000} ms talking to ${socketPath}`)), opts.timeoutMs ?? 1000)
    req.on('close', () => clearTimeout(t))
    req.on('error', reject)
    if (payload !== undefined) req.write(payload)
    req.end()
  })
}

export async function unixJson<T = unknown>(socketPath: string, path: string, opts: Parameters<typeof unixRequest>[2] = {}): Promise<T> {
  const r = await unixRequest(socketPath, path, opts)
  if (r.status < 200 || r.status >= 300) {
    let msg = r.body.trim()
    try {
      const j = JSON.parse(r.body) as { error?: unknown; message?: unknown }
      msg = String((j.error as { message?: string })?.message ?? j.error ?? j.message ?? msg)
    } catch {
      /* plain text */
    }
    throw Object.assign(new Error(`${path}: HTTP ${r.status}${msg ? `: ${msg}` : ''}`), { status: r.status })
  }
  return (r.body ? JSON.parse(r.body) : null) as T
}

/** One health probe: true when GET /health answers 2xx within the timeout. */
export async function checkHealth(socketPath: string, timeoutMs = 1000): Promise<{ ok: boolean; detail?: string }> {
  try {
    let r = await unixRequest(socketPath, '/health', { timeoutMs })
    // the gateway's control API is versioned (/v1/health)
    if (r.status === 404) r = await unixRequest(socketPath, '/v1/health', { timeoutMs })
    if (r.status >= 200 && r.status < 300) return { ok: true }
    return { ok: false, detail: `HTTP ${r.status} ${r.body.slice(0, 200)}` }
  } catch (e) {
    return { ok: false, detail: (e as Error).message }
  }
}
