/**
 * Repeated requests on one keep-alive connection. A repeat of a decision already on stable storage
 * for the same connection, rule and address (engine.ts, conn.cache) is written without waiting for
 * an fdatasync of its own; these tests hold that shortcut to what a fresh decision would do: every
 * request still gets its own complete decision record, and a change of what a verdict depends on
 * (a reload, a revoked approval, another path or method) is decided afresh on the very next request
 * of the same connection. Real sockets on loopback; the engine in this process so the test can
 * reload and revoke between two requests.
 */
import t, { type Test } from 'tap'
import fs from 'node:fs'
import http from 'node:http'
import path from 'node:path'
import { Engine } from '../../lib/engine/engine.js'
import { startUpstream, tmpdir, readAudit, waitFor } from './helpers.js'

const up = await startUpstream('127.0.0.2')
t.teardown(() => up.close())
const UP = up.port

/** A client holding one keep-alive connection to the gate; each answer says which connection carried it. */
function client(gatePort: number) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  const send = (method: string, url: string, headers: Record<string, string> = {}) =>
    new Promise<{ status: number; body: string; localPort: number }>((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: gatePort, method, path: url, agent, headers }, (res) => {
        let body = ''
        res.on('data', (c: Buffer) => (body += c))
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, localPort: req.socket!.localPort! }))
      })
      req.on('error', reject)
      req.end()
    })
  return { send, close: () => agent.destroy() }
}

async function engineWith(t: Test, policy: string, extra: Partial<ConstructorParameters<typeof Engine>[0]> = {}) {
  const dir = tmpdir('cordon-repeat-')
  const policyFile = path.join(dir, 'policy.yaml')
  fs.writeFileSync(policyFile, policy)
  const audit = path.join(dir, 'state', 'audit.jsonl')
  const engine = new Engine({ policyFile, listen: { host: '127.0.0.1', port: 0 }, audit, watch: false, hosts: { 'api.test': ['127.0.0.2'], 'wait.test': ['127.0.0.2'] }, ...extra })
  const gate = await engine.start()
  const c = client(gate.port)
  t.teardown(async () => {
    c.close()
    await engine.stop()
  })
  const decisions = () => readAudit(audit).filter((r) => r.type === 'decision')
  return { engine, gate, policyFile, decisions, ...c }
}

const OPEN = `    - { cidr: 127.0.0.2/32, ports: [${UP}] }  # the test upstream lives on loopback\n`

t.test('every repeat on one connection gets its own full record, the same as the first but for time and id', async (t) => {
  const e = await engineWith(t, `network:\n  mode: proxy\n  unlisted: deny\n  allow:\n    - api.test:${UP}\n${OPEN}`)
  const answers = []
  for (let i = 0; i < 5; i++) answers.push(await e.send('GET', `http://api.test:${UP}/small?i=${i}`, i === 4 ? { 'x-cordon-request-id': 'msg-42' } : {}))
  t.same(answers.map((a) => a.status), [200, 200, 200, 200, 200], 'all five allowed')
  t.equal(new Set(answers.map((a) => a.localPort)).size, 1, 'all on one connection')
  const recs = e.decisions()
  t.equal(recs.length, 5, 'five decision records')
  t.equal(new Set(recs.map((r) => r.id)).size, 5, 'five different ids')
  const strip = ({ id: _i, time: _t, request_id: _r, ...rest }: Record<string, unknown>) => rest
  for (let i = 1; i < 5; i++) t.same(strip(recs[i]!), strip(recs[0]!), `record ${i + 1} says what the first says`)
  t.match(recs[0], { decision: 'allow', host: 'api.test', port: UP, address: '127.0.0.2', method: 'GET', path: '/small', via: 'http', rule: `api.test:${UP} (policy.yaml:5 network.allow[0])` })
  t.same(recs.map((r) => r.request_id), [undefined, undefined, undefined, undefined, 'msg-42'], 'the request id of the request that sent one, and only there')
  t.same(Object.keys(recs[4]!), Object.keys(recs[0]!).concat('request_id'), 'the same fields in the same order')
  t.ok(recs.every((r) => typeof r.time === 'string' && !Number.isNaN(Date.parse(r.time as string))), 'every record has its time')
})

t.test('another path or method on the same connection is decided by its own rule', async (t) => {
  const e = await engineWith(t, `network:\n  mode: proxy\n  unlisted: deny\n  allow:\n    - api.test:${UP}\n${OPEN}  deny:\n    - { host: api.test, paths: [/private/] }\n    - { host: api.test, methods: [DELETE] }\n`)
  const a = []
  for (let i = 0; i < 3; i++) a.push(await e.send('GET', `http://api.test:${UP}/small`))
  a.push(await e.send('GET', `http://api.test:${UP}/private/x`))
  a.push(await e.send('DELETE', `http://api.test:${UP}/small`))
  a.push(await e.send('GET', `http://api.test:${UP}/small`))
  t.same(a.map((x) => x.status), [200, 200, 200, 403, 403, 200])
  t.equal(new Set(a.map((x) => x.localPort)).size, 1, 'all on one connection')
  const recs = e.decisions()
  t.match(recs[3], { decision: 'deny', path: '/private/x', rule: /paths/ })
  t.match(recs[4], { decision: 'deny', method: 'DELETE', rule: /DELETE/ })
  t.match(recs[5], { decision: 'allow', path: '/small', method: 'GET' })
})

t.test('a reload between two requests of one connection decides the second by the new policy', async (t) => {
  const e = await engineWith(t, `network:\n  mode: proxy\n  unlisted: deny\n  allow:\n    - api.test:${UP}\n${OPEN}`)
  for (let i = 0; i < 3; i++) t.equal((await e.send('GET', `http://api.test:${UP}/small`)).status, 200)
  fs.writeFileSync(e.policyFile, `network:\n  mode: proxy\n  unlisted: deny\n  allow:\n    - api.test:${UP}\n${OPEN}  deny:\n    - { host: api.test, paths: [/small] }\n`)
  t.ok(e.engine.reload('test').ok, 'reloaded')
  const after = await e.send('GET', `http://api.test:${UP}/small`)
  t.equal(after.status, 403, 'the same request on the same connection is now denied')
  t.match(after.body, /denied/)
  t.match(e.decisions().at(-1), { decision: 'deny', rule: /paths/ })
  // and back
  fs.writeFileSync(e.policyFile, `network:\n  mode: proxy\n  unlisted: deny\n  allow:\n    - api.test:${UP}\n${OPEN}`)
  t.ok(e.engine.reload('test').ok)
  t.equal((await e.send('GET', `http://api.test:${UP}/small`)).status, 200, 'allowed again after the next reload')
})

t.test('a revoked approval stops the next identical request on the same connection', async (t) => {
  const e = await engineWith(t, `network:\n  mode: proxy\n  unlisted: ask\n  allow:\n${OPEN}`, { askTimeoutMs: 30_000 })
  const pendingFor = async () => {
    let id = ''
    await waitFor(() => {
      id = e.engine.listPending().find((p) => p.host === 'wait.test')?.id ?? ''
      return id !== ''
    }, 10_000, 'a pending request for wait.test')
    return id
  }
  const first = e.send('GET', `http://wait.test:${UP}/small`)
  const id = await pendingFor()
  await e.engine.resolvePending(id, 'allow')
  t.equal((await first).status, 200, 'allowed once the operator approves')
  const a = []
  for (let i = 0; i < 3; i++) a.push(await e.send('GET', `http://wait.test:${UP}/small`))
  t.same(a.map((x) => x.status), [200, 200, 200], 'repeats allowed by the approval')
  t.ok(e.engine.revoke(id), 'revoked')
  const again = e.send('GET', `http://wait.test:${UP}/small`)
  const id2 = await pendingFor()
  t.not(id2, id, 'the next identical request waits for the operator again')
  await e.engine.resolvePending(id2, 'deny')
  const last = await again
  t.equal(last.status, 403, 'and is refused when the operator denies it')
  t.equal(new Set([...a, last].map((x) => x.localPort)).size, 1, 'all on one connection')
})
