/**
 * `CONNECT inference.local:80` (agents that tunnel plain HTTP): the gate serves the HTTP inside the
 * tunnel itself, so the router learns which sandbox asked from the gate (x-cordon-sandbox), never
 * from the client, every request inside is decided and audited, and the tunnel cannot be turned
 * into a way to another host.
 */
import t from 'tap'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { Engine } from '../../lib/engine/engine.js'
import { startUpstream, tmpdir, readAudit, waitFor } from './helpers.js'

const router = await startUpstream('127.0.0.1') // the fake privacy router: answers "hello METHOD URL"
const other = await startUpstream('127.0.0.2')
const dir = tmpdir()
const policyFile = path.join(dir, 'policy.yaml')
fs.writeFileSync(policyFile, `network:\n  mode: proxy\n  unlisted: deny\n  allow:\n    - { cidr: 127.0.0.2/32, ports: [${other.port}] }\n`)
const audit = path.join(dir, 'state', 'audit.jsonl')
const engine = new Engine({ policyFile, listen: { host: '127.0.0.1', port: 0 }, router: { host: '127.0.0.1', port: router.port }, audit, sandboxId: 'sandbox-a', watch: false })
const gate = await engine.start()
t.teardown(async () => {
  await engine.stop()
  await router.close()
  await other.close()
})

/** CONNECT, then send `requests` (raw HTTP) inside the tunnel; resolves with everything received once `responses` answers are complete. */
function inTunnel(target: string, requests: string, responses: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port: gate.port, host: '127.0.0.1' })
    let buf = ''
    s.on('connect', () => s.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n${requests}`))
    s.on('data', (c) => {
      buf += c.toString('latin1')
      const bodies = [...buf.matchAll(/content-length: (\d+)\r\n(?:.*\r\n)*?\r\n/gi)]
      if (bodies.length >= responses) {
        const last = bodies[responses - 1]!
        if (buf.length >= last.index! + last[0].length + Number(last[1])) {
          s.destroy()
          resolve(buf)
        }
      }
    })
    s.on('error', reject)
    setTimeout(() => {
      s.destroy()
      resolve(buf)
    }, 5_000).unref()
  })
}

t.test('two keep-alive requests inside CONNECT inference.local:80 reach the router with the gate-set identity', async (t) => {
  const before = router.requests.length
  const out = await inTunnel(
    'inference.local:80',
    'GET /v1/models HTTP/1.1\r\nHost: inference.local\r\nX-Cordon-Sandbox: someone-else\r\n\r\n' +
      'POST /v1/responses HTTP/1.1\r\nHost: inference.local\r\nContent-Length: 2\r\n\r\n{}',
    2,
  )
  t.match(out, /^HTTP\/1\.1 200 Connection Established\r\n\r\nHTTP\/1\.1 200 /, 'the tunnel opens, then the first answer')
  t.match(out, /hello GET \/v1\/models/)
  t.match(out, /hello POST \/v1\/responses body=\{\}/)
  const seen = router.requests.slice(before)
  t.equal(seen.length, 2, 'the router got both requests')
  t.same(seen.map((r) => r.headers['x-cordon-sandbox']), ['sandbox-a', 'sandbox-a'], 'each carries the identity the gate set; the spoofed one is gone')
  t.same(seen.map((r) => r.host), ['inference.local', 'inference.local'])
})

t.test('every request inside the tunnel is decided and audited; the tunnel gets its end record', async (t) => {
  const connectDecision = () => readAudit(audit).find((r) => r.type === 'decision' && r.host === 'inference.local' && r.via === 'connect')
  // the inner requests have end records of their own; the tunnel's comes when its socket closes
  await waitFor(() => readAudit(audit).some((r) => r.type === 'end' && r.decision_id === connectDecision()?.id), 5_000, "the tunnel's end record")
  const recs = readAudit(audit)
  const decisions = recs.filter((r) => r.type === 'decision' && r.host === 'inference.local')
  t.ok(decisions.some((d) => d.via === 'connect'), 'the CONNECT itself')
  t.same(decisions.filter((d) => d.via === 'http').map((d) => d.path), ['/v1/models', '/v1/responses'], 'then each request inside it')
  const end = recs.find((r) => r.type === 'end' && r.decision_id === connectDecision()!.id)
  t.ok(end, 'the tunnel has an end record')
  t.ok(Number(end!.bytes_in) > 0 && Number(end!.bytes_out) > 0, `bytes counted both ways (${end!.bytes_in} in, ${end!.bytes_out} out)`)
})

t.test('an absolute URI to another host inside the tunnel still goes to the router, not to that host', async (t) => {
  const otherBefore = other.requests.length
  const out = await inTunnel('inference.local:80', `GET http://127.0.0.2:${other.port}/steal HTTP/1.1\r\nHost: 127.0.0.2:${other.port}\r\n\r\n`, 1)
  t.match(out, /hello GET \/steal/, 'answered by the router (the tunnel target)')
  t.equal(other.requests.length, otherBefore, 'the other host saw nothing')
  t.equal(router.requests.at(-1)!.host, 'inference.local', 'with the tunnel target as Host')
})
