/** Client of the engine's control API (used by the CLI and by other components). */
import http from 'node:http'

/** `cordon up` puts every control socket in its runtime dir (CORDON_RUNTIME_DIR, default /run/cordon). */
export const DEFAULT_ENGINE_SOCKET = `${process.env.CORDON_RUNTIME_DIR || '/run/cordon'}/engine.sock`

export interface ControlTarget {
  /** unix socket path */
  socket?: string
  /** http://host:port of the TCP listener (needs token) */
  url?: string
  token?: string
}

export function controlTarget(opt: { control?: string }): ControlTarget {
  const c = opt.control ?? process.env.CORDON_ENGINE_SOCKET
  if (c && /^https?:\/\//.test(c)) return { url: c, token: process.env.CORDON_ENGINE_TOKEN }
  if (c) return { socket: c }
  if (process.env.CORDON_ENGINE_URL) return { url: process.env.CORDON_ENGINE_URL, token: process.env.CORDON_ENGINE_TOKEN }
  return { socket: DEFAULT_ENGINE_SOCKET }
}

function where(t: ControlTarget): string {
  return t.socket ? `unix socket ${t.socket}` : String(t.url)
}

export function requestRaw(t: ControlTarget, method: string, path: string, body?: unknown): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body)
    const headers: Record<string, string> = {}
    if (data) {
      headers['content-type'] = 'application/json'
      headers['content-length'] = String(Buffer.byteLength(data))
    }
    if (t.token) headers.authorization = `Bearer ${t.token}`
    const opts: http.RequestOptions = t.socket
      ? { socketPath: t.socket, path, method, headers }
      : { ...urlOpts(t.url!), path, method, headers }
    const req = http.request(opts, resolve)
    req.on('error', (e: NodeJS.ErrnoException) => {
      const hint =
        e.code === 'ENOENT' || e.code === 'ECONNREFUSED'
          ? ` — is \`cordon engine\` running? Point at it with --control PATH or CORDON_ENGINE_SOCKET`
          : e.code === 'EACCES'
            ? ' — the control socket is mode 0600: run as the user that started the engine'
            : ''
      reject(new Error(`cannot reach the policy engine at ${where(t)}: ${e.code ?? e.message}${hint}`))
    })
    req.end(data)
  })
}

function urlOpts(u: string): http.RequestOptions {
  const x = new URL(u)
  return { host: x.hostname, port: Number(x.port || 80) }
}

export async function requestJson<T = unknown>(t: ControlTarget, method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
  const res = await requestRaw(t, method, path, body)
  const chunks: Buffer[] = []
  for await (const c of res) chunks.push(c as Buffer)
  const text = Buffer.concat(chunks).toString('utf8')
  let parsed: unknown = text
  try {
    parsed = JSON.parse(text)
  } catch {
    /* metrics are text */
  }
  return { status: res.statusCode ?? 0, body: parsed as T }
}
