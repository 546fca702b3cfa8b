/**
 * The engine's control API: HTTP/1.1 over a unix socket (mode 0600, in a 0700 directory the
 * sandbox policy never grants) and optionally over TCP with a bearer token. Never on the
 * sandbox's network. Documented in docs/engine.md.
 */
import http from 'node:http'
import fs from 'node:fs'
import path from 'node:path'
import { timingSafeEqual, createHash } from 'node:crypto'
import type { Engine } from './engine.js'
import { loadNetworkPolicy, PolicyLoadError } from './policy.js'
import { lineDiff } from './diff.js'

export interface ControlOptions {
  socket?: string | null
  tcp?: { host: string; port: number } | null
  token?: string | null
}

function send(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body, null, 1) + '\n'
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
  res.end(text)
}

async function readBody(req: http.IncomingMessage, limit = 64 * 1024): Promise<Record<string, unknown>> {
  let size = 0
  const chunks: Buffer[] = []
  for await (const c of req) {
    size += (c as Buffer).length
    if (size > limit) throw Object.assign(new Error('request body too large'), { status: 413 })
    chunks.push(c as Buffer)
  }
  if (!size) return {}
  try {
    const v = JSON.parse(Buffer.concat(chunks).toString('utf8'))
    return v && typeof v === 'object' ? v : {}
  } catch {
    throw Object.assign(new Error('request body is not JSON'), { status: 400 })
  }
}

function tokenOk(header: string | undefined, token: string): boolean {
  const m = /^Bearer\s+(.+)$/i.exec(header ?? '')
  if (!m) return false
  const a = createHash('sha256').update(m[1]!.trim()).digest()
  const b = createHash('sha256').update(token).digest()
  return timingSafeEqual(a, b)
}

export function policyShow(engine: Engine) {
  const n = engine.policy.network
  const fmt = (r: { text: string; origin: string }) => ({ rule: r.text, origin: r.origin })
  return {
    file: engine.policy.file,
    hash: engine.policy.hash,
    generation: engine.generation,
    mode: n.mode,
    unlisted: n.unlisted,
    presets: n.presets,
    allow: n.allow.map(fmt),
    deny: n.deny.map(fmt),
    bind: n.bind,
    session: engine.approvals,
    last_reload: engine.lastReload,
    text: engine.policy.text,
  }
}

export function policyDiff(engine: Engine) {
  const file = engine.opts.policyFile
  let disk: string
  try {
    disk = fs.readFileSync(file, 'utf8')
  } catch (e) {
    return { in_force: engine.policy.hash, on_disk: null, error: `cannot read ${file}: ${(e as Error).message}`, diff: '' }
  }
  let valid: { ok: boolean; errors?: string[] } = { ok: true }
  try {
    loadNetworkPolicy(file, engine.opts.presetDir)
  } catch (e) {
    valid = { ok: false, errors: e instanceof PolicyLoadError ? e.message.split('\n') : [(e as Error).message] }
  }
  const onDisk = createHash('sha256').update(disk).digest('hex')
  return {
    in_force: engine.policy.hash,
    on_disk: onDisk,
    same: onDisk === engine.policy.hash,
    valid,
    diff: lineDiff(engine.policy.text, disk, 'in force', `${path.basename(file)} on disk`),
  }
}

export async function startControl(engine: Engine, opts: ControlOptions): Promise<{ close(): Promise<void>; tcpAddress?: { host: string; port: number } }> {
  const handler = (viaTcp: boolean) => async (req: http.IncomingMessage, res: http.ServerResponse) => {
    try {
      if (viaTcp && !tokenOk(req.headers.authorization, opts.token ?? '')) {
        res.setHeader('www-authenticate', 'Bearer')
        return send(res, 401, { error: 'missing or wrong bearer token (Authorization: Bearer TOKEN)' })
      }
      const url = new URL(req.url ?? '/', 'http://control')
      const p = url.pathname.replace(/\/+$/, '') || '/'
      const m = req.method ?? 'GET'
      let mm: RegExpExecArray | null
      if (m === 'GET' && (p === '/v1/health' || p === '/health')) {
        return send(res, 200, {
          ok: true,
          pid: process.pid,
          started: engine.startedAt,
          gate: engine.address(),
          policy: { file: engine.policy.file, hash: engine.policy.hash, generation: engine.generation },
          pending: engine.pending.size,
          last_reload: engine.lastReload,
          audit: engine.audit.file,
        })
      }
      if (m === 'GET' && p === '/v1/pending') return send(res, 200, engine.listPending())
      if (m === 'POST' && (mm = /^\/v1\/pending\/([A-Za-z0-9_-]+)\/(approve|deny)$/.exec(p))) {
        const body = await readBody(req)
        const a = await engine.resolvePending(mm[1]!, mm[2] === 'approve' ? 'allow' : 'deny', body.persist === true, String(body.by ?? (viaTcp ? 'control-tcp' : 'control-socket')))
        return send(res, 200, a)
      }
      if (m === 'GET' && p === '/v1/approvals') return send(res, 200, engine.approvals)
      if (m === 'DELETE' && (mm = /^\/v1\/approvals\/([A-Za-z0-9_-]+)$/.exec(p))) {
        return engine.revoke(mm[1]!) ? send(res, 200, { ok: true }) : send(res, 404, { error: `no session approval "${mm[1]}"` })
      }
      if (m === 'GET' && p === '/v1/policy') return send(res, 200, policyShow(engine))
      if (m === 'GET' && p === '/v1/policy/diff') return send(res, 200, policyDiff(engine))
      if (m === 'POST' && p === '/v1/policy/reload') {
        const r = engine.reload('control')
        return send(res, r.ok ? 200 : 422, r)
      }
      if (m === 'GET' && p === '/v1/audit') {
        const tail = Math.min(Number(url.searchParams.get('tail') ?? 50) || 0, 100_000)
        const follow = ['1', 'true'].includes(url.searchParams.get('follow') ?? '')
        const denied = ['1', 'true'].includes(url.searchParams.get('denied') ?? '')
        const keep = (line: string) => !denied || /"decision":"(deny|pending)"/.test(line)
        res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' })
        for (const line of engine.audit.tail(denied ? Math.max(tail * 20, tail) : tail).filter(keep).slice(-tail)) res.write(line + '\n')
        if (!follow) return res.end()
        const off = engine.audit.follow((line) => {
          if (keep(line)) res.write(line + '\n')
        })
        const ping = setInterval(() => res.write('\n'), 15_000)
        ping.unref()
        res.on('close', () => {
          off()
          clearInterval(ping)
        })
        return
      }
      if (m === 'GET' && (p === '/metrics' || p === '/v1/metrics')) {
        const text = await engine.metrics.metrics()
        res.writeHead(200, { 'content-type': engine.metrics.contentType })
        return res.end(text)
      }
      return send(res, 404, { error: `no such endpoint: ${m} ${p} (see docs/engine.md)` })
    } catch (e) {
      const status = (e as { status?: number }).status ?? 500
      return send(res, status, { error: (e as Error).message })
    }
  }
  const servers: http.Server[] = []
  if (opts.socket) {
    const dir = path.dirname(opts.socket)
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
    try {
      fs.unlinkSync(opts.socket) // a stale socket from a previous run
    } catch {
      /* none */
    }
    const s = http.createServer(handler(false))
    const old = process.umask(0o177)
    try {
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject)
        s.listen(opts.socket!, () => resolve())
      })
    } finally {
      process.umask(old)
    }
    fs.chmodSync(opts.socket, 0o600)
    servers.push(s)
  }
  let tcpAddress: { host: string; port: number } | undefined
  if (opts.tcp) {
    if (!opts.token || opts.token.length < 16) throw new Error('the TCP control listener needs a bearer token of at least 16 characters (--control-token-file FILE or CORDON_ENGINE_TOKEN)')
    const s = http.createServer(handler(true))
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject)
      s.listen(opts.tcp!.port, opts.tcp!.host, () => resolve())
    })
    const a = s.address() as { address: string; port: number }
    tcpAddress = { host: a.address, port: a.port }
    servers.push(s)
  }
  return {
    tcpAddress,
    async close() {
      for (const s of servers) {
        s.closeAllConnections?.()
        await new Promise<void>((r) => s.close(() => r()))
      }
      if (opts.socket) {
        try {
          fs.unlinkSync(opts.socket)
        } catch {
          /* gone */
        }
      }
    },
  }
}
