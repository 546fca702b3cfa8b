/**
 * The egress gate with real sockets on loopback: an upstream server on 127.0.0.2 stands in for the
 * internet, names resolve through the engine's hosts map (there is no DNS here).
 */
import t from 'tap'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { Engine } from '../../lib/engine/engine.js'
import { startControl } from '../../lib/engine/control.js'
import { requestJson } from '../../lib/engine/client.js'
import { startUpstream, tmpdir, viaProxy, connectVia, rawExchange, waitFor, readAudit } from './helpers.js'

const up = await startUpstream('127.0.0.2')
const router = await startUpstream('127.0.0.1') // the fake privacy router
const dir = tmpdir()
const presetDir = path.join(dir, 'presets')
fs.mkdirSync(presetDir)
fs.writeFileSync(path.join(presetDir, 'testsvc.yaml'), `name: testsvc\ndescription: test\nallow:\n  - svc.example.com:${up.port}\n`)
const policyFile = path.join(dir, 'policy.yaml')
const P = up.port
const policyText = (extraAllow = '') => `# gate test policy
network:
  mode: proxy
  presets: [testsvc]
  unlisted: deny
  allow:
    - api.example.com:${P}
    - both.example.com:${P}
    - rebind-lo.example.com:${P}
    - rebind-md.example.com:${P}
    - rebind-mixed.example.com:${P}
    - { host: ro.example.com, ports: [${P}], methods: [GET], paths: [/v1/] }
    - { cidr: 127.0.0.2/32, ports: [${P}] }${extraAllow}
  deny:
    - both.example.com
`
fs.writeFileSync(policyFile, policyText())
const audit = path.join(dir, 'audit.jsonl')
const engine = new Engine({
  policyFile,
  listen: { host: '127.0.0.1', port: 0 },
  router: { host: '127.0.0.1', port: router.port },
  audit,
  presetDir,
  hosts: {
    'api.example.com': ['127.0.0.2'],
    'svc.example.com': ['127.0.0.2'],
    'ro.example.com': ['127.0.0.2'],
    'both.example.com': ['127.0.0.2'],
    'new.example.com': ['127.0.0.2'],
    'rebind-lo.example.com': ['127.0.0.1'],
    'rebind-md.example.com': ['169.254.169.254'],
    'rebind-mixed.example.com': ['127.0.0.2', '127.0.0.1'],
  },
  headersTimeoutMs: 1_000,
  socks: { host: '127.0.0.1', port: 0 },
})
const gate = await engine.start()
const sock = path.join(dir, 'ctl', 'engine.sock')
const control = await startControl(engine, { socket: sock })
t.teardown(async () => {
  await control.close()
  await engine.stop()
  await up.close()
  await router.close()
})
const G = gate.port

t.test('an allowed host passes; the Host header is rewritten to the decided authority', async (t) => {
  const r = await viaProxy(G, `http://api.example.com:${P}/hello?x=1`, 'GET', 'X-Test: 1\r\n')
  t.equal(r.status, 200)
  t.equal(r.body, 'hello GET /hello?x=1')
  const smuggle = await rawExchange(G, `GET http://api.example.com:${P}/s HTTP/1.1\r\nHost: evil.example.org\r\nConnection: close\r\n\r\n`)
  t.equal(smuggle.status, 200)
  t.equal(up.requests.at(-1)!.host, `api.example.com:${P}`, 'upstream sees the URL authority, not the client Host header')
})

t.test('an unlisted host is denied with a readable 403', async (t) => {
  const r = await viaProxy(G, `http://unlisted.example.com:${P}/`)
  t.equal(r.status, 403)
  t.match(r.body, /unlisted\.example\.com:\d+ denied: no rule allows it/)
  t.match(r.body, /network\.allow/)
  t.match(r.head, /X-Cordon-Decision: deny/i)
  const c = await connectVia(G, 'unlisted.example.com:443')
  t.equal(c.status, 403)
  t.match(c.body, /CONNECT to unlisted\.example\.com:443 denied/)
})

t.test('deny beats allow', async (t) => {
  const r = await viaProxy(G, `http://both.example.com:${P}/`)
  t.equal(r.status, 403)
  t.match(r.body, /denied by rule both\.example\.com/)
})

t.test('preset hosts pass', async (t) => {
  const r = await connectVia(G, `svc.example.com:${P}`, { path: '/p', host: 'svc.example.com' })
  t.equal(r.status, 200)
  t.equal(r.inner?.body, 'hello GET /p')
})

t.test('method and path rules on plain HTTP', async (t) => {
  t.equal((await viaProxy(G, `http://ro.example.com:${P}/v1/models`)).status, 200)
  t.equal((await viaProxy(G, `http://ro.example.com:${P}/v1/models`, 'POST')).status, 403)
  t.equal((await viaProxy(G, `http://ro.example.com:${P}/v1/../admin`)).status, 403, 'dot segments do not escape the prefix')
})

t.test('DNS rebinding: allowed names resolving to loopback or metadata are refused', async (t) => {
  const lo = await viaProxy(G, `http://rebind-lo.example.com:${P}/`)
  t.equal(lo.status, 403)
  t.match(lo.body, /resolves to 127\.0\.0\.1/)
  const md = await connectVia(G, `rebind-md.example.com:${P}`)
  t.equal(md.status, 403)
  t.match(md.body, /169\.254\.169\.254, a metadata address/)
  const mixed = await viaProxy(G, `http://rebind-mixed.example.com:${P}/`)
  t.equal(mixed.status, 403, 'one bad address in the answer refuses the name')
  // the legitimate request beside it still works
  t.equal((await viaProxy(G, `http://api.example.com:${P}/ok`)).status, 200)
})

t.test('CONNECT to IP literals follows the rules', async (t) => {
  const ok = await connectVia(G, `127.0.0.2:${P}`, { path: '/lit', host: '127.0.0.2' })
  t.equal(ok.status, 200)
  t.equal(ok.inner?.body, 'hello GET /lit')
  const lo = await connectVia(G, `127.0.0.1:${router.port}`)
  t.equal(lo.status, 403, 'loopback literal not named by a rule')
  const md = await connectVia(G, '169.254.169.254:80')
  t.equal(md.status, 403)
  const v6 = await connectVia(G, '[::1]:22')
  t.equal(v6.status, 403)
})

t.test('inference.local reaches the router by absolute URI and by CONNECT :80', async (t) => {
  const a = await viaProxy(G, 'http://inference.local/v1/responses', 'POST')
  t.equal(a.status, 200)
  t.equal(a.body, 'hello POST /v1/responses')
  t.equal(router.requests.at(-1)!.host, 'inference.local', 'the router sees Host: inference.local')
  // the gate vouches for the sandbox identity; a client cannot claim another one
  const spoof = await viaProxy(G, 'http://inference.local/v1/chat/completions', 'POST', 'X-Cordon-Sandbox: agent-admin\r\n')
  t.equal(spoof.status, 200)
  t.same(router.requests.at(-1)!.headers['x-cordon-sandbox'], '127.0.0.1', "the router sees the gate's identity for this client, not the claimed one")
  await viaProxy(G, `http://api.example.com:${P}/who`, 'GET', 'X-Cordon-Sandbox: agent-admin\r\n')
  t.equal(up.requests.at(-1)!.headers['x-cordon-sandbox'], undefined, 'never sent to outside hosts')
  const c = await connectVia(G, 'inference.local:80', { path: '/v1/models', host: 'inference.local' })
  t.equal(c.status, 200)
  t.equal(c.inner?.body, 'hello GET /v1/models')
  const tls = await connectVia(G, 'inference.local:443')
  t.equal(tls.status, 400)
  t.match(tls.body, /plain HTTP on port 80/)
})

t.test('bad input: clear errors, no crash', async (t) => {
  const bad = await rawExchange(G, 'THIS IS NOT HTTP\r\n\r\n')
  t.equal(bad.status, 400)
  t.match(bad.body, /malformed request/)
  const big = await rawExchange(G, `GET http://api.example.com:${P}/ HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(40_000)}\r\n\r\n`)
  t.equal(big.status, 431)
  const noport = await rawExchange(G, 'CONNECT example.com HTTP/1.1\r\nHost: example.com\r\n\r\n')
  t.equal(noport.status, 400)
  t.match(noport.body, /CONNECT needs host:port/)
  const origin = await rawExchange(G, 'GET / HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n')
  t.equal(origin.status, 400)
  t.match(origin.body, /absolute-URI/)
  // slow client: headers never finish -> closed within the headers timeout (1 s here)
  const started = Date.now()
  const slow = await new Promise<number>((resolve) => {
    const s = net.connect(G, '127.0.0.1', () => s.write('GET http://api.example.com/ HTTP/1.1\r\nX-Slow: '))
    s.on('data', () => undefined)
    s.on('close', () => resolve(Date.now() - started))
    s.on('error', () => undefined)
  })
  t.ok(slow < 5_000, `slow client dropped after ${slow} ms`)
  t.equal((await viaProxy(G, `http://api.example.com:${P}/still`)).status, 200, 'the gate still serves')
})

t.test('hot reload: next connection sees the new policy; a bad file keeps the old one', async (t) => {
  t.equal((await viaProxy(G, `http://new.example.com:${P}/`)).status, 403)
  // atomic replace like an editor or a ConfigMap update
  const tmp = policyFile + '.tmp'
  fs.writeFileSync(tmp, policyText(`\n    - new.example.com:${P}`))
  fs.renameSync(tmp, policyFile)
  await waitFor(async () => (await viaProxy(G, `http://new.example.com:${P}/`)).status === 200, 8_000, 'watch reload')
  const gen = engine.generation
  fs.writeFileSync(tmp, policyText(`\n    - "not a host!"`))
  fs.renameSync(tmp, policyFile)
  await waitFor(() => engine.lastReload?.ok === false, 8_000, 'rejected reload')
  t.match(engine.lastReload!.errors!.join('\n'), /policy\.yaml:\d+:\d+: network\.allow\[\d\]/, 'file:line errors')
  t.equal(engine.generation, gen, 'old policy stays')
  t.equal((await viaProxy(G, `http://new.example.com:${P}/`)).status, 200)
  const r = await requestJson<{ ok: boolean; errors: string[] }>({ socket: sock }, 'POST', '/v1/policy/reload')
  t.equal(r.status, 422)
  t.match(r.body.errors[0], /policy\.yaml:\d+/)
  const diff = await requestJson<{ same: boolean; diff: string; valid: { ok: boolean } }>({ socket: sock }, 'GET', '/v1/policy/diff')
  t.equal(diff.body.same, false)
  t.match(diff.body.diff, /\+    - "not a host!"/)
  t.equal(diff.body.valid.ok, false)
  fs.writeFileSync(tmp, policyText())
  fs.renameSync(tmp, policyFile)
  await waitFor(async () => (await viaProxy(G, `http://new.example.com:${P}/`)).status === 403, 8_000, 'reload back')
  const reloads = readAudit(audit).filter((r) => r.type === 'reload')
  t.ok(reloads.some((r) => r.ok === false) && reloads.some((r) => r.ok === true && r.changed === true), 'reloads are audited')
})

t.test('audit: a decision and an end record with bytes for each request', async (t) => {
  const r = await viaProxy(G, `http://api.example.com:${P}/big?n=100000`)
  t.equal(r.status, 200)
  const id = /"id":"(d[0-9a-z]+)"/.exec(fs.readFileSync(audit, 'utf8').split('\n').filter((l) => l.includes('/big')).at(-1)!)![1]
  await waitFor(() => readAudit(audit).some((x) => x.type === 'end' && x.decision_id === id), 5_000, 'end record')
  const dec = readAudit(audit).find((x) => x.id === id)!
  t.match(dec, { decision: 'allow', host: 'api.example.com', port: P, address: '127.0.0.2', method: 'GET', path: '/big' })
  t.match(String(dec.rule), /api\.example\.com/)
  const end = readAudit(audit).find((x) => x.type === 'end' && x.decision_id === id)!
  t.equal(end.bytes_in, 100000)
  t.type(end.duration_ms, 'number')
  const denied = readAudit(audit).filter((x) => x.decision === 'deny')
  t.ok(denied.length > 0 && denied.every((x) => typeof x.reason === 'string'))
  t.ok(denied.some((x) => typeof x.pid === 'number' && x.pid === process.pid), 'denied decisions name the client pid (here: the test itself)')
})

t.test('control API: health, metrics, unix socket mode 0600', async (t) => {
  const h = await requestJson<{ ok: boolean }>({ socket: sock }, 'GET', '/v1/health')
  t.equal(h.body.ok, true)
  t.equal(fs.statSync(sock).mode & 0o777, 0o600)
  const m = await requestJson<string>({ socket: sock }, 'GET', '/metrics')
  t.match(m.body, /cordon_engine_decisions_total\{decision="allow"/)
})

t.test('SOCKS5 (socks5h): same rules, reply codes for denials', async (t) => {
  const S = engine.socksAddress()!.port
  const socks = (host: string, port: number, inner?: string) =>
    new Promise<{ rep: number; body: string }>((resolve, reject) => {
      const c = net.connect(S, '127.0.0.1')
      let stage = 0
      let buf = Buffer.alloc(0)
      let rep = -1
      c.on('connect', () => c.write(Buffer.from([5, 1, 0])))
      c.on('data', (d) => {
        buf = Buffer.concat([buf, d])
        if (stage === 0 && buf.length >= 2) {
          stage = 1
          buf = buf.subarray(2)
          const name = Buffer.from(host)
          const req = Buffer.concat([Buffer.from([5, 1, 0, 3, name.length]), name, Buffer.from([port >> 8, port & 255])])
          c.write(req)
        }
        if (stage === 1 && buf.length >= 10) {
          stage = 2
          rep = buf[1]!
          buf = buf.subarray(10)
          if (rep === 0 && inner) c.write(inner)
        }
      })
      c.on('close', () => resolve({ rep, body: buf.toString() }))
      c.on('error', reject)
    })
  const ok = await socks('api.example.com', P, `GET /socks HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n`)
  t.equal(ok.rep, 0)
  t.match(ok.body, /hello GET \/socks/)
  t.equal((await socks('unlisted.example.com', 443)).rep, 2, 'not allowed by ruleset')
  t.equal((await socks('rebind-md.example.com', P)).rep, 2, 'rebinding refused over SOCKS too')
  const inf = await socks('inference.local', 80, 'GET /v1/models HTTP/1.1\r\nHost: inference.local\r\nConnection: close\r\n\r\n')
  t.equal(inf.rep, 0)
  t.match(inf.body, /hello GET \/v1\/models/)
  const dec = readAudit(audit).filter((x) => x.via === 'socks')
  t.ok(dec.some((x) => x.decision === 'deny' && x.host === 'unlisted.example.com'), 'SOCKS decisions are audited')
})

t.test('a bulk download through CONNECT arrives whole (slow reader: backpressure) and is counted', async (t) => {
  const n = 8 * 1024 * 1024
  const got = await new Promise<number>((resolve, reject) => {
    const c = net.connect(G, '127.0.0.1')
    let est = false
    let pre = ''
    let body = 0
    let head = true
    c.on('connect', () => c.write(`CONNECT api.example.com:${P} HTTP/1.1\r\nHost: x\r\n\r\n`))
    c.on('data', (d: Buffer) => {
      if (!est) {
        pre += d.toString('latin1')
        if (pre.includes('\r\n\r\n')) {
          est = true
          c.write(`GET /big?n=${n} HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n`)
        }
        return
      }
      if (head) {
        const i = d.indexOf('\r\n\r\n')
        if (i < 0) return
        head = false
        body += d.length - i - 4
      } else body += d.length
      // read slowly for a while so the gate has to hold back
      if (body < 2 * 1024 * 1024) {
        c.pause()
        setTimeout(() => c.resume(), 2)
      }
    })
    c.on('close', () => resolve(body))
    c.on('error', reject)
  })
  t.equal(got, n, 'every byte arrives')
  await waitFor(() => readAudit(audit).some((x) => x.type === 'end' && Number(x.bytes_in) > n), 5_000, 'end record')
})
