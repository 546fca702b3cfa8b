/**
 * Plain HTTP through the gate (absolute-URI requests), the path that forwards with undici:
 * request bodies reach the upstream and are counted, header names keep their case and hop-by-hop
 * headers (and those named in Connection) are dropped both ways, Expect: 100-continue works, a
 * slow reader gets the whole answer (backpressure), keep-alive carries many requests on one
 * client connection, an upstream that refuses or dies mid-answer gives a 502 or a cut response
 * (never a hang), and a client that leaves cancels the upstream request.
 */
import t from 'tap'
import http from 'node:http'
import net from 'node:net'
import path from 'node:path'
import fs from 'node:fs'
import { once } from 'node:events'
import { Engine } from '../../lib/engine/engine.js'
import { tmpdir, rawExchange, waitFor, readAudit, sendBytes } from './helpers.js'

// an upstream on 127.0.0.2 that records what it received and can misbehave on request
const seen: Array<{ method: string; url: string; rawHeaders: string[]; body: string }> = []
let upstreamClosed = 0
const upstream = http.createServer((req, res) => {
  let body = ''
  req.on('data', (c) => (body += c))
  req.on('end', () => {
    seen.push({ method: req.method!, url: req.url!, rawHeaders: req.rawHeaders, body })
    const u = new URL(req.url!, 'http://x')
    if (u.pathname === '/die') {
      res.writeHead(200, { 'content-length': '100000' })
      res.write('x'.repeat(1000))
      setTimeout(() => req.socket.destroy(), 50)
      return
    }
    if (u.pathname === '/hang') {
      res.on('close', () => upstreamClosed++)
      res.writeHead(200, { 'content-type': 'text/plain' })
      res.write('waiting')
      return
    }
    if (u.pathname === '/big') {
      const n = Number(u.searchParams.get('n'))
      res.writeHead(200, { 'content-length': n, 'X-Upstream-Case': 'Kept', Connection: 'keep-alive, X-Hop', 'X-Hop': 'dropped', 'Keep-Alive': 'timeout=5' })
      return sendBytes(res, n, 121)
    }
    const text = `got ${req.method} ${req.url} ${body.length} bytes`
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(text), 'X-Upstream-Case': 'Kept' })
    res.end(text)
  })
})
upstream.listen(0, '127.0.0.2')
await once(upstream, 'listening')
const P = (upstream.address() as net.AddressInfo).port
// a port with nothing listening on 127.0.0.2
const deadSrv = net.createServer().listen(0, '127.0.0.2')
await once(deadSrv, 'listening')
const DEAD = (deadSrv.address() as net.AddressInfo).port
await new Promise<void>((r) => deadSrv.close(() => r()))

const dir = tmpdir()
const policyFile = path.join(dir, 'policy.yaml')
fs.writeFileSync(policyFile, `network:\n  mode: proxy\n  allow:\n    - { cidr: 127.0.0.2/32, ports: [${P}, ${DEAD}] }\n    - api.example.com:${P}\n    - dead.example.com:${DEAD}\n`)
const audit = path.join(dir, 'audit.jsonl')
const engine = new Engine({ policyFile, listen: { host: '127.0.0.1', port: 0 }, audit, hosts: { 'api.example.com': ['127.0.0.2'], 'dead.example.com': ['127.0.0.2'] }, auditSync: 'none' } as ConstructorParameters<typeof Engine>[0])
const gate = await engine.start()
t.teardown(async () => {
  await engine.stop()
  upstream.closeAllConnections()
  upstream.close()
  fs.rmSync(dir, { recursive: true, force: true })
})
const G = gate.port

t.test('a POST body reaches the upstream whole and is counted in the end record', async (t) => {
  const body = 'a'.repeat(300_000)
  const r = await rawExchange(G, `POST http://api.example.com:${P}/upload?x=1 HTTP/1.1\r\nHost: api.example.com:${P}\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`)
  t.equal(r.status, 200)
  t.equal(r.body, `got POST /upload?x=1 ${body.length} bytes`)
  t.equal(seen.at(-1)!.body.length, body.length, 'the upstream received every byte')
  await waitFor(() => readAudit(audit).some((x) => x.type === 'end' && x.bytes_out === body.length), 5_000, 'end record with bytes_out')
})

t.test('chunked request bodies and Expect: 100-continue', async (t) => {
  const chunked = `POST http://api.example.com:${P}/c HTTP/1.1\r\nHost: api.example.com:${P}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n`
  const r = await rawExchange(G, chunked)
  t.equal(r.body, 'got POST /c 11 bytes')
  t.equal(seen.at(-1)!.body, 'hello world')
  const res = await new Promise<{ status: number; body: string; continued: boolean }>((resolve, reject) => {
    let continued = false
    const q = http.request({ host: '127.0.0.1', port: G, method: 'PUT', path: `http://api.example.com:${P}/e`, headers: { host: `api.example.com:${P}`, expect: '100-continue', 'content-length': 4 } })
    q.on('continue', () => {
      continued = true
      q.end('data')
    })
    q.on('response', (rs) => {
      let b = ''
      rs.on('data', (c) => (b += c))
      rs.on('end', () => resolve({ status: rs.statusCode!, body: b, continued }))
    })
    q.on('error', reject)
  })
  t.same(res, { status: 200, body: 'got PUT /e 4 bytes', continued: true }, 'the client got 100 Continue, the upstream got the body')
  t.notOk(seen.at(-1)!.rawHeaders.map((h) => h.toLowerCase()).includes('expect'), 'Expect is not forwarded')
})

t.test('a request without a body goes upstream without one; an empty body stays empty', async (t) => {
  const g = await rawExchange(G, `GET http://api.example.com:${P}/nobody HTTP/1.1\r\nHost: api.example.com:${P}\r\nConnection: close\r\n\r\n`)
  t.equal(g.body, 'got GET /nobody 0 bytes')
  const gh = seen.at(-1)!.rawHeaders.map((h) => h.toLowerCase())
  t.notOk(gh.includes('transfer-encoding') || gh.includes('content-length'), 'no framing headers invented for a GET')
  const p = await rawExchange(G, `POST http://api.example.com:${P}/empty HTTP/1.1\r\nHost: api.example.com:${P}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`)
  t.equal(p.body, 'got POST /empty 0 bytes')
  const ph = seen.at(-1)!.rawHeaders
  t.equal(ph[ph.findIndex((h) => h.toLowerCase() === 'content-length') + 1], '0', 'Content-Length: 0 passed on')
  t.notOk(ph.map((h) => h.toLowerCase()).includes('transfer-encoding'), 'not turned into a chunked body')
})

t.test('header names keep their case; hop-by-hop and Connection-named headers are dropped both ways', async (t) => {
  const r = await rawExchange(G, `GET http://api.example.com:${P}/big?n=10 HTTP/1.1\r\nHost: api.example.com:${P}\r\nX-Client-Case: Yes\r\nConnection: close, X-Secret-Hop\r\nX-Secret-Hop: 1\r\nProxy-Authorization: Basic eDp5\r\n\r\n`)
  t.equal(r.status, 200)
  t.equal(r.body, 'y'.repeat(10))
  const h = seen.at(-1)!.rawHeaders
  t.ok(h.includes('X-Client-Case'), 'request header case kept')
  t.notOk(h.map((x) => x.toLowerCase()).some((x) => x === 'x-secret-hop' || x === 'proxy-authorization'), 'hop-by-hop request headers dropped')
  t.match(r.head, /\r\nX-Upstream-Case: Kept\r\n/, 'response header case kept')
  t.notMatch(r.head, /X-Hop|Keep-Alive: timeout/i, 'hop-by-hop response headers dropped')
})

t.test('a slow reader gets a 20 MB answer whole (backpressure, bounded engine memory)', async (t) => {
  const n = 20 * 1024 * 1024
  const got = await new Promise<number>((resolve, reject) => {
    const s = net.connect({ port: G, host: '127.0.0.1' })
    let bytes = 0
    let head = true
    s.on('connect', () => s.write(`GET http://api.example.com:${P}/big?n=${n} HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n`))
    s.pause()
    setTimeout(() => s.resume(), 1000) // the gate must hold back meanwhile
    s.on('data', (c: Buffer) => {
      if (head) {
        const i = c.indexOf('\r\n\r\n')
        head = false
        bytes += c.length - i - 4
      } else bytes += c.length
    })
    s.on('close', () => resolve(bytes))
    s.on('error', reject)
  })
  t.equal(got, n)
})

t.test('keep-alive: many requests on one client connection', async (t) => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => agent.destroy())
  const ports = new Set<number>()
  for (let i = 0; i < 50; i++) {
    const r = await new Promise<string>((resolve, reject) => {
      const q = http.request({ host: '127.0.0.1', port: G, path: `http://api.example.com:${P}/k${i}`, agent, headers: { host: `api.example.com:${P}` } }, (rs) => {
        ports.add(rs.socket.localPort!)
        let b = ''
        rs.on('data', (c) => (b += c))
        rs.on('end', () => resolve(b))
      })
      q.on('error', reject)
      q.end()
    })
    t.equal(r, `got GET /k${i} 0 bytes`)
  }
  t.equal(ports.size, 1, 'one client connection carried all 50')
})

t.test('upstream refuses: 502 naming the destination; dies mid-answer: the client sees a cut, the audit an error', async (t) => {
  const r = await rawExchange(G, `GET http://dead.example.com:${DEAD}/ HTTP/1.1\r\nHost: dead.example.com\r\nConnection: close\r\n\r\n`)
  t.equal(r.status, 502)
  t.match(r.body, new RegExp(`dead\\.example\\.com:${DEAD} \\(127\\.0\\.0\\.2:${DEAD}\\) failed: ECONNREFUSED`))
  const d = await rawExchange(G, `GET http://api.example.com:${P}/die HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n`, 5_000)
  t.equal(d.status, 200)
  t.ok(d.body.length >= 1000 && d.body.length < 100_000, `a cut answer (${d.body.length} bytes), not a hang`)
  await waitFor(() => readAudit(audit).some((x) => x.type === 'end' && String(x.error ?? '').startsWith('upstream error')), 5_000, 'end record with the upstream error')
})

t.test('a client that leaves cancels the upstream request', async (t) => {
  const before = upstreamClosed
  const s = net.connect({ port: G, host: '127.0.0.1' })
  s.write(`GET http://api.example.com:${P}/hang HTTP/1.1\r\nHost: api.example.com\r\n\r\n`)
  await new Promise<void>((r) => s.once('data', () => r()))
  s.destroy()
  await waitFor(() => upstreamClosed > before, 5_000, 'the upstream side closed')
  t.pass('upstream request cancelled')
  await waitFor(() => readAudit(audit).some((x) => x.type === 'end' && x.error === 'client went away'), 5_000, 'end record')
})
