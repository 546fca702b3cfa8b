/** Shared helpers for the engine tests: an upstream "internet" on 127.0.0.2, raw proxy clients. */
import http from 'node:http'
import net from 'node:net'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawn, execFileSync, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { requestJson } from '../../lib/engine/client.js'

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
export const CLI = path.join(ROOT, 'test', 'engine', 'fixtures', 'cli.ts')

const made: string[] = []
process.once('exit', () => {
  for (const d of made) fs.rmSync(d, { recursive: true, force: true })
})

/** A temporary directory removed when the test process exits. */
export function tmpdir(prefix = 'cordon-engine-'): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  made.push(d)
  return d
}

export interface Upstream {
  port: number
  host: string
  requests: Array<{ method: string; url: string; host: string | undefined; headers: http.IncomingHttpHeaders }>
  close(): Promise<void>
}

/** The stand-in for the internet: answers "hello <path>", /big?n=BYTES streams n bytes, /slow trickles. */
/** Write n bytes of `fill` to res in 64 KiB chunks, honouring backpressure, then end it. */
export function sendBytes(res: http.ServerResponse, n: number, fill: number): void {
  const chunk = Buffer.alloc(64 * 1024, fill)
  let left = n
  const pump = () => {
    while (left > 0) {
      const c = left >= chunk.length ? chunk : chunk.subarray(0, left)
      left -= c.length
      if (!res.write(c)) return void res.once('drain', pump)
    }
    res.end()
  }
  pump()
}

export async function startUpstream(host = '127.0.0.2'): Promise<Upstream> {
  const requests: Upstream['requests'] = []
  const server = http.createServer((req, res) => {
    requests.push({ method: req.method!, url: req.url!, host: req.headers.host, headers: req.headers })
    const u = new URL(req.url!, 'http://x')
    if (u.pathname === '/big') {
      res.writeHead(200, { 'content-length': Number(u.searchParams.get('n') ?? 1e6) })
      return sendBytes(res, Number(u.searchParams.get('n') ?? 1e6), 120)
    }
    if (u.pathname === '/slow') {
      res.writeHead(200, { 'content-type': 'text/plain' })
      const t = setInterval(() => res.write('x'.repeat(1000)), 20)
      res.on('close', () => clearInterval(t))
      return
    }
    let body = ''
    req.on('data', (c) => (body += c))
    req.on('end', () => {
      const text = `hello ${req.method} ${req.url}${body ? ` body=${body}` : ''}`
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(text) })
      res.end(text)
    })
  })
  server.keepAliveTimeout = 10_000
  await new Promise<void>((r) => server.listen(0, host, () => r()))
  return {
    host,
    port: (server.address() as net.AddressInfo).port,
    requests,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections()
        server.close(() => r())
      }),
  }
}

export interface RawResponse {
  status: number
  head: string
  body: string
}

function parseResponse(buf: string): RawResponse {
  const i = buf.indexOf('\r\n\r\n')
  const head = i >= 0 ? buf.slice(0, i) : buf
  const body = i >= 0 ? buf.slice(i + 4) : ''
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(head)
  return { status: m ? Number(m[1]) : 0, head, body }
}

/** Send raw bytes to the proxy and read until it closes (or timeout). */
export function rawExchange(port: number, data: string | Buffer, timeoutMs = 10_000, host = '127.0.0.1'): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host })
    let buf = ''
    const timer = setTimeout(() => {
      s.destroy()
      resolve({ ...parseResponse(buf), status: parseResponse(buf).status || -1 })
    }, timeoutMs)
    s.on('connect', () => s.write(data))
    s.on('data', (c) => (buf += c.toString('latin1')))
    s.on('close', () => {
      clearTimeout(timer)
      resolve(parseResponse(buf))
    })
    s.on('error', (e) => {
      clearTimeout(timer)
      if (buf) resolve(parseResponse(buf))
      else reject(e)
    })
  })
}

/** GET http://host:port/path through the proxy (absolute-URI form), Connection: close. */
export function viaProxy(proxyPort: number, url: string, method = 'GET', extraHeaders = '', timeoutMs = 10_000): Promise<RawResponse> {
  const u = new URL(url)
  return rawExchange(proxyPort, `${method} ${url} HTTP/1.1\r\nHost: ${u.host}\r\n${extraHeaders}Connection: close\r\n\r\n`, timeoutMs)
}

/** CONNECT target through the proxy; on 200 sends an HTTP GET inside the tunnel. */
export function connectVia(proxyPort: number, target: string, inner?: { path: string; host: string }): Promise<RawResponse & { inner?: RawResponse }> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port: proxyPort, host: '127.0.0.1' })
    let buf = ''
    let established = false
    let innerBuf = ''
    s.on('connect', () => s.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`))
    s.on('data', (c) => {
      if (established) {
        innerBuf += c.toString('latin1')
        return
      }
      buf += c.toString('latin1')
      const i = buf.indexOf('\r\n\r\n')
      if (i >= 0) {
        const r = parseResponse(buf)
        if (r.status === 200 && inner) {
          established = true
          innerBuf = buf.slice(i + 4)
          s.write(`GET ${inner.path} HTTP/1.1\r\nHost: ${inner.host}\r\nConnection: close\r\n\r\n`)
        }
      }
    })
    s.on('close', () => resolve({ ...parseResponse(buf.split('\r\n\r\n')[0] + '\r\n\r\n' + (established ? '' : buf.slice(buf.indexOf('\r\n\r\n') + 4))), inner: established ? parseResponse(innerBuf) : undefined }))
    s.on('error', reject)
    setTimeout(() => s.destroy(), 10_000).unref()
  })
}

export interface EngineProc {
  child: ChildProcess
  ready: { gate: { host: string; port: number }; control: string; pid: number }
  stderr: () => string
  stop(): Promise<void>
}

/** Run `cordon engine` in a child process (through the test CLI entry) and wait for its ready line. */
/** Start `cordon engine` from lib/ through tsx, or with `compiled` the built package (bin/cordon.js
 * -> dist/, what users run; benchmarks use it). */
export async function spawnEngine(args: string[], env: NodeJS.ProcessEnv = {}, nodeArgs: string[] = [], compiled = false): Promise<EngineProc> {
  const entry = compiled ? [path.join(ROOT, 'bin', 'cordon.js')] : ['--import', 'tsx', CLI]
  const child = spawn(process.execPath, [...nodeArgs, ...entry, 'engine', ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let err = ''
  child.stderr!.on('data', (c) => (err += c))
  const ready = await new Promise<EngineProc['ready']>((resolve, reject) => {
    let out = ''
    const t = setTimeout(() => reject(new Error(`engine did not start in 30 s: ${err}`)), 30_000)
    child.stdout!.on('data', (c) => {
      out += c
      const nl = out.indexOf('\n')
      if (nl >= 0) {
        clearTimeout(t)
        resolve(JSON.parse(out.slice(0, nl)))
      }
    })
    child.on('exit', (code) => {
      clearTimeout(t)
      reject(new Error(`engine exited with ${code}: ${err}`))
    })
  })
  return {
    child,
    ready,
    stderr: () => err,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      const done = new Promise((r) => child.once('exit', r))
      child.kill('SIGTERM')
      await done
    },
  }
}

/** Run a CLI command of ours (test entry) and collect its output. */
export function runCli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], { cwd: ROOT, env: { ...process.env, ...env } })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (c) => (stdout += c))
    child.stderr.on('data', (c) => (stderr += c))
    child.on('exit', (code) => resolve({ code: code ?? -1, stdout, stderr }))
  })
}

export async function waitFor(cond: () => boolean | Promise<boolean>, ms = 10_000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await cond()) return
    await new Promise((r) => setTimeout(r, 25))
  }
  throw new Error(`timed out waiting for ${what}`)
}

export function readAudit(file: string): Array<Record<string, unknown>> {
  if (!fs.existsSync(file)) return []
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l))
}

/** A policy that asks the operator about unlisted hosts (approvals, restart and robustness tests). */
export function askSetup(upstreamPort: number, unlisted = 'ask') {
  const dir = tmpdir()
  const policy = path.join(dir, 'policy.yaml')
  fs.writeFileSync(
    policy,
    `# operator's comment: keep me
network:
  mode: proxy
  unlisted: ${unlisted}   # ask the operator
  allow:
    - api.example.com:${upstreamPort}
    - { cidr: 127.0.0.2/32, ports: [${upstreamPort}] }  # the test upstream lives on loopback
`,
  )
  return { dir, policy, sock: path.join(dir, 'run', 'engine.sock'), audit: path.join(dir, 'audit.jsonl') }
}

/** `cordon engine` arguments for an askSetup() directory. */
export function askEngineArgs(s: ReturnType<typeof askSetup>, extra: string[] = []) {
  return [
    '--policy', s.policy, '--listen', '127.0.0.1:0', '--control', s.sock, '--audit', s.audit,
    '--ask-timeout', '30',
    '--resolve', 'api.example.com=127.0.0.2', '--resolve', 'wait.example.com=127.0.0.2', '--resolve', 'nope.example.com=127.0.0.2',
    ...extra,
  ]
}

/** Wait until the engine behind `sock` holds a pending request for `host`; return it. */
export async function pendingFor(sock: string, host: string): Promise<Record<string, unknown>> {
  let found: Record<string, unknown> | undefined
  await waitFor(async () => {
    const r = await requestJson<Array<Record<string, unknown>>>({ socket: sock }, 'GET', '/v1/pending').catch(() => ({ body: [] }))
    found = r.body.find((p) => p.host === host)
    return !!found
  }, 20_000, `pending ${host}`)
  return found!
}

/**
 * SOCKS5 CONNECT (no authentication, domain-name address) through the engine's SOCKS listener:
 * resolves once the reply is read, with the socket paused and any bytes that came behind the reply.
 * `rep` is the reply code (0: succeeded); the socket is half-open capable with `allowHalfOpen`.
 */
export function socksTunnel(port: number, host: string, targetPort: number, opts: { allowHalfOpen?: boolean } = {}): Promise<{ s: net.Socket; rep: number; after: Buffer }> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: opts.allowHalfOpen ?? false })
    let buf = Buffer.alloc(0)
    let stage: 'greet' | 'reply' = 'greet'
    const onData = (c: Buffer) => {
      buf = Buffer.concat([buf, c])
      if (stage === 'greet') {
        if (buf.length < 2) return
        if (buf[0] !== 5 || buf[1] !== 0) return reject(new Error(`SOCKS greeting refused: ${buf.subarray(0, 2).toString('hex')}`))
        buf = buf.subarray(2)
        stage = 'reply'
        const name = Buffer.from(host, 'latin1')
        s.write(Buffer.concat([Buffer.from([5, 1, 0, 3, name.length]), name, Buffer.from([targetPort >> 8, targetPort & 255])]))
      }
      if (stage === 'reply' && buf.length >= 10) {
        s.off('data', onData)
        s.pause()
        resolve({ s, rep: buf[1]!, after: buf.subarray(10) })
      }
    }
    s.on('data', onData)
    s.once('error', reject)
    s.once('close', () => reject(new Error(`SOCKS connection closed during the handshake (read ${buf.toString('hex')})`)))
    s.on('connect', () => s.write(Buffer.from([5, 1, 0])))
  })
}

/** whether iproute2's `ip` runs here (the network namespace tests need it, and root) */
export function hasIproute2(): boolean {
  try {
    execFileSync('ip', ['-V'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

/** Run a node -e script in a child process and parse the JSON it prints (test clients whose pid the gate must name). */
export function nodeJson<T>(script: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    c.stdout!.on('data', (d) => (out += d))
    c.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`client exited ${code}: ${out}`))))
  })
}
