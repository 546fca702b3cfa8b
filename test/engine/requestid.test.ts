/**
 * x-cordon-request-id at the egress gate: logged as `request_id` on the decision record (plain
 * HTTP and CONNECT), forwarded upstream untouched, never a reason to allow anything, and left out
 * of the audit when it is not a well-formed label.
 */
import t from 'tap'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { Engine } from '../../lib/engine/engine.js'
import { startUpstream, tmpdir, viaProxy, rawExchange, readAudit } from './helpers.js'

const up = await startUpstream('127.0.0.2')
const router = await startUpstream('127.0.0.1') // stands in for the privacy router (inference.local)
const dir = tmpdir()
const policyFile = path.join(dir, 'policy.yaml')
const P = up.port
fs.writeFileSync(policyFile, `network:\n  mode: proxy\n  unlisted: deny\n  allow:\n    - api.example.com:${P}\n    - { cidr: 127.0.0.2/32, ports: [${P}] }\n`)
const audit = path.join(dir, 'audit.jsonl')
const engine = new Engine({
  policyFile,
  listen: { host: '127.0.0.1', port: 0 },
  router: { host: '127.0.0.1', port: router.port },
  audit,
  hosts: { 'api.example.com': ['127.0.0.2'], 'other.example.com': ['127.0.0.3'] },
  watch: false,
})
const G = (await engine.start()).port
t.teardown(async () => {
  await engine.stop()
  await up.close()
  await router.close()
})

const decisions = () => readAudit(audit).filter((r) => r.type === 'decision')
const decisionById = (id: string) => decisions().find((r) => r.id === id)
const decisionIdOf = (head: string) => /x-cordon-decision-id: (\S+)/i.exec(head)?.[1]

/** CONNECT with extra header lines; resolves with the status line once the gate answers, then closes. */
function connectWith(target: string, headers: string): Promise<{ status: number; head: string }> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port: G, host: '127.0.0.1' })
    let buf = ''
    s.on('connect', () => s.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n${headers}\r\n`))
    s.on('data', (c) => {
      buf += c.toString('latin1')
      const i = buf.indexOf('\r\n\r\n')
      if (i >= 0) {
        s.destroy()
        resolve({ status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(buf)?.[1] ?? 0), head: buf.slice(0, i) })
      }
    })
    s.on('error', reject)
    s.on('close', () => resolve({ status: 0, head: buf }))
  })
}

t.test('plain HTTP: the request id is on the decision record and reaches the upstream unchanged', async (t) => {
  const r = await viaProxy(G, `http://api.example.com:${P}/v1/thing`, 'GET', 'X-Cordon-Request-Id: rq-abc_DEF-123\r\n')
  t.equal(r.status, 200)
  t.equal(r.body, 'hello GET /v1/thing')
  t.equal(up.requests.at(-1)!.headers['x-cordon-request-id'], 'rq-abc_DEF-123', 'forwarded, not stripped')
  const d = decisions().at(-1)!
  t.match(d, { decision: 'allow', host: 'api.example.com', via: 'http', request_id: 'rq-abc_DEF-123' })
})

t.test('inference.local gets the header, and the decision carries it', async (t) => {
  const r = await viaProxy(G, 'http://inference.local/v1/models', 'GET', 'X-Cordon-Request-Id: rq-infer1\r\n')
  t.equal(r.status, 200)
  t.equal(router.requests.at(-1)!.headers['x-cordon-request-id'], 'rq-infer1')
  t.match(decisions().at(-1)!, { decision: 'allow', host: 'inference.local', rule: 'service:inference.local', request_id: 'rq-infer1' })
})

t.test('a request id decides nothing: an unlisted host is denied with or without one', async (t) => {
  const before = up.requests.length
  const r = await viaProxy(G, `http://other.example.com:${P}/`, 'GET', 'X-Cordon-Request-Id: rq-please-allow\r\n')
  t.equal(r.status, 403)
  const d = decisionById(decisionIdOf(r.head)!)!
  t.match(d, { decision: 'deny', host: 'other.example.com', request_id: 'rq-please-allow' })
  t.equal(up.requests.length, before, 'nothing reached the upstream')
  const legit = await viaProxy(G, `http://api.example.com:${P}/beside`, 'GET', 'X-Cordon-Request-Id: rq-please-allow\r\n')
  t.equal(legit.status, 200, 'the listed host beside it is served')
})

t.test('malformed ids are left out of the audit (the request itself is unaffected)', async (t) => {
  for (const bad of ['has space', 'x'.repeat(200), 'a"b', 'rq-1,rq-2']) {
    const r = await viaProxy(G, `http://api.example.com:${P}/m`, 'GET', `X-Cordon-Request-Id: ${bad}\r\n`)
    t.equal(r.status, 200, `request with id ${JSON.stringify(bad.slice(0, 20))} still served`)
    const d = decisions().at(-1)!
    t.equal(d.request_id, undefined, `not logged: ${JSON.stringify(bad.slice(0, 20))}`)
  }
  // two header lines: joined by Node into "a, b", which is not one id
  const r = await viaProxy(G, `http://api.example.com:${P}/m2`, 'GET', 'X-Cordon-Request-Id: rq-a\r\nX-Cordon-Request-Id: rq-b\r\n')
  t.equal(r.status, 200)
  t.equal(decisions().at(-1)!.request_id, undefined)
  const none = await viaProxy(G, `http://api.example.com:${P}/none`)
  t.equal(none.status, 200)
  t.notOk('request_id' in decisions().at(-1)!, 'no header, no field')
})

t.test('keep-alive: each request on one connection is logged with its own id', async (t) => {
  const u = `http://api.example.com:${P}`
  const raw = [
    `GET ${u}/k1 HTTP/1.1\r\nHost: api.example.com\r\nX-Cordon-Request-Id: rq-one\r\n\r\n`,
    `GET ${u}/k2 HTTP/1.1\r\nHost: api.example.com\r\nX-Cordon-Request-Id: rq-two\r\nConnection: close\r\n\r\n`,
  ].join('')
  const n = decisions().length
  const r = await rawExchange(G, raw)
  t.equal(r.status, 200)
  const ds = decisions().slice(n)
  t.same(
    ds.map((d) => [d.path, d.request_id]),
    [
      ['/k1', 'rq-one'],
      ['/k2', 'rq-two'],
    ],
  )
})

t.test('CONNECT: the id comes from the CONNECT request headers', async (t) => {
  const ok = await connectWith(`api.example.com:${P}`, 'X-Cordon-Request-Id: rq-tunnel-1\r\n')
  t.equal(ok.status, 200)
  t.match(decisions().at(-1)!, { decision: 'allow', via: 'connect', host: 'api.example.com', request_id: 'rq-tunnel-1' })
  const denied = await connectWith('other.example.com:443', 'X-Cordon-Request-Id: rq-tunnel-2\r\n')
  t.equal(denied.status, 403)
  t.match(decisionById(decisionIdOf(denied.head)!)!, { decision: 'deny', via: 'connect', request_id: 'rq-tunnel-2' })
  const plain = await connectWith(`api.example.com:${P}`, '')
  t.equal(plain.status, 200)
  t.notOk('request_id' in decisions().at(-1)!, 'CONNECT without the header: no field')
})

t.test('an unlisted host held for the operator: the pending record and the final decision carry the id', async (t) => {
  const askPolicy = path.join(dir, 'ask.yaml')
  fs.writeFileSync(askPolicy, `network:\n  mode: proxy\n  unlisted: ask\n  allow: []\n`)
  const askAudit = path.join(dir, 'ask-audit.jsonl')
  const e = new Engine({ policyFile: askPolicy, listen: { host: '127.0.0.1', port: 0 }, audit: askAudit, hosts: { 'wait.example.com': ['127.0.0.3'] }, askTimeoutMs: 300, watch: false, identify: 'none' })
  const port = (await e.start()).port
  t.teardown(() => e.stop())
  const r = await viaProxy(port, 'http://wait.example.com/x', 'GET', 'X-Cordon-Request-Id: rq-held\r\n')
  t.equal(r.status, 403, 'not approved in time: denied (the id changed nothing)')
  const recs = readAudit(askAudit).filter((x) => x.type === 'decision')
  t.match(recs.find((x) => x.decision === 'pending'), { host: 'wait.example.com', request_id: 'rq-held' })
  t.match(recs.find((x) => x.decision === 'deny'), { host: 'wait.example.com', request_id: 'rq-held' })
})
