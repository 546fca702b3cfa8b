/**
 * Test helpers for the router: a temp dir with router.yaml and a key store, the router started
 * in-process on loopback, a TCP recorder between client and router that keeps every byte the
 * client received, and captured logs and audit lines.
 */
import net from 'node:net'
import http from 'node:http'
import { mkdtempSync, writeFileSync, rmSync, chmodSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { once } from 'node:events'
import { PrivacyRouter, type RouterOptions } from '../../lib/router/index.js'
import { setKey } from '../../lib/router/keys.js'

export const REAL_KEY = 'sk-real-7f3c9a1b5d2e8f4a6c0b9d7e3f1a2b4c'
export const REAL_ANT_KEY = 'sk-ant-real-91ab27cd45ef6789aa01bc23de45f678'

export interface Harness {
  router: PrivacyRouter
  dir: string
  configPath: string
  keysPath: string
  controlPath: string
  /** Base URL through the recorder, e.g. http://127.0.0.1:PORT */
  url: string
  /** Every byte the client received, all connections. */
  received: Buffer[]
  logs: string[]
  audit: () => Array<Record<string, any>>
  auditRaw: string[]
  writeConfig(text: string): void
  close(): Promise<void>
}

export async function recorder(target: { host: string; port: number }, received: Buffer[]): Promise<{ port: number; close: () => Promise<void> }> {
  const socks = new Set<net.Socket>()
  const server = net.createServer((c) => {
    const up = net.connect(target.port, target.host)
    socks.add(c)
    socks.add(up)
    c.pipe(up)
    up.on('data', (d: Buffer) => {
      received.push(Buffer.from(d))
      c.write(d)
    })
    up.on('end', () => c.end())
    c.on('close', () => up.destroy())
    up.on('close', () => c.destroy())
    c.on('error', () => up.destroy())
    up.on('error', () => c.destroy())
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return {
    port: (server.address() as net.AddressInfo).port,
    close: async () => {
      for (const s of socks) s.destroy()
      await new Promise<void>((r) => server.close(() => r()))
    },
  }
}

export async function startRouter(configText: string | ((dir: string) => string), opts: Partial<RouterOptions> & { keys?: Record<string, string> } = {}): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), 'cordon-router-test-'))
  const configPath = join(dir, 'router.yaml')
  const keysPath = join(dir, 'keys.json')
  const controlPath = join(dir, 'control.sock')
  writeFileSync(configPath, typeof configText === 'function' ? configText(dir) : configText)
  for (const [k, v] of Object.entries(opts.keys ?? { openai: REAL_KEY, anthropic: REAL_ANT_KEY })) setKey(keysPath, k, v)
  const logs: string[] = []
  const auditRaw: string[] = []
  const { keys: _k, ...rest } = opts
  if (rest.state === undefined) rest.state = null
  const router = await PrivacyRouter.start({
    config: configPath,
    listen: ['127.0.0.1:0'],
    control: controlPath,
    keys: keysPath,
    logDestination: { write: (s: string) => logs.push(s) },
    auditDestination: { write: (s: string) => auditRaw.push(s) },
    defaultMetrics: false,
    ...rest,
  })
  const addr = router.addresses()[0]!
  const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))]
  const received: Buffer[] = []
  const rec = await recorder({ host, port }, received)
  const harness: Harness = {
    router,
    dir,
    configPath,
    keysPath,
    controlPath,
    url: `http://127.0.0.1:${rec.port}`,
    received,
    logs,
    auditRaw,
    audit: () => auditRaw.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l)),
    writeConfig: (text: string) => writeFileSync(configPath, text),
    close: async () => {
      await rec.close()
      await harness.router.close()
      rmSync(dir, { recursive: true, force: true })
    },
  }
  return harness
}

/** A request on the control unix socket. */
export function control(socketPath: string, method: string, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, method, path }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }))
    })
    req.on('error', reject)
    req.end()
  })
}

/** Plain HTTP request returning status, headers and raw body. */
export async function raw(url: string, init: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<{ status: number; headers: Headers; text: string }> {
  const r = await fetch(url, { method: init.method ?? 'POST', headers: { 'content-type': 'application/json', ...(init.headers ?? {}) }, body: init.body })
  return { status: r.status, headers: r.headers, text: await r.text() }
}

export function allBytes(h: Harness): string {
  return Buffer.concat(h.received).toString('latin1') + h.logs.join('') + h.auditRaw.join('')
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export function writeSecretFile(path: string, content: string): void {
  writeFileSync(path, content)
  chmodSync(path, 0o600)
}

/** POST JSON over a unix socket (a per-sandbox listener). */
export async function unixPost(socketPath: string, path: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; headers: Record<string, unknown>; json: any }> {
  const { Agent, request } = await import('undici')
  const agent = new Agent({ connect: { socketPath } })
  try {
    const r = await request(`http://localhost${path}`, { method: 'POST', dispatcher: agent, headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) })
    const text = await r.body.text()
    return { status: r.statusCode, headers: r.headers, json: JSON.parse(text) }
  } finally {
    await agent.close()
  }
}
