import t from 'tap'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { createHmac } from 'node:crypto'
import { signWebhook } from '../../lib/gateway/index.js'
import { echoAgent, startGateway, waitFor } from './helpers.js'

const SECRET = 'webhook-shared-secret-0123456789'

async function setup(t: typeof import('tap').default) {
  const replies: { headers: Record<string, unknown>; body: Record<string, unknown>; raw: string }[] = []
  const sink = createServer((req, res) => {
    let raw = ''
    req.on('data', (d) => (raw += d))
    req.on('end', () => {
      replies.push({ headers: req.headers, body: JSON.parse(raw), raw })
      res.writeHead(204).end()
    })
  })
  await new Promise<void>((r) => sink.listen(0, '127.0.0.1', r))
  t.teardown(() => new Promise<void>((r) => sink.close(() => r())))
  const g = await startGateway(
    t,
    { public_listen: '127.0.0.1:0', channels: [{ name: 'hook', type: 'webhook', secret: { env: 'HOOK_SECRET' }, reply_url: `http://127.0.0.1:${(sink.address() as AddressInfo).port}/reply`, allow: ['svc-1'] }] },
    { env: { HOOK_SECRET: SECRET } },
  )
  const post = (body: string, headers: Record<string, string> = {}) => fetch(`${g.gw.publicUrl}/channels/hook`, { method: 'POST', body, headers: { 'content-type': 'application/json', ...headers } })
  const signed = (body: string, ts = Math.floor(Date.now() / 1000)) => ({ 'x-cordon-timestamp': String(ts), 'x-cordon-signature': signWebhook(SECRET, ts, body) })
  return { replies, post, signed, ...g }
}

const msg = (id: string, text: string) => JSON.stringify({ id, conversation: 'ticket-7', sender: { id: 'svc-1', name: 'CI' }, text })

t.test('signed webhook reaches the agent; the reply is POSTed back, signed', async (t) => {
  const { replies, post, signed, gw } = await setup(t)
  const agent = echoAgent(gw.agentUrl)
  t.teardown(agent.stop)
  const body = msg('m1', 'build failed')
  t.equal((await post(body, signed(body))).status, 200)
  await waitFor(() => replies.length >= 1, 10000, 'reply posted')
  const r = replies[0]!
  t.match(r.body, { id: /^hook\./, conversation: 'ticket-7', text: 'echo: build failed', part: 0, parts: 1 })
  const ts = String(r.headers['x-cordon-timestamp'])
  t.equal(r.headers['x-cordon-signature'], 'sha256=' + createHmac('sha256', SECRET).update(`${ts}.${r.raw}`).digest('hex'), 'reply signed with the shared secret')
  t.match(String(r.headers['idempotency-key']), /:0$/)
})

t.test('bad signature, stale timestamp and a replayed request are refused', async (t) => {
  const { post, signed, gw, logs } = await setup(t)
  const agent = echoAgent(gw.agentUrl)
  t.teardown(agent.stop)
  const body = msg('m2', 'hello')
  t.equal((await post(body, { 'x-cordon-timestamp': String(Math.floor(Date.now() / 1000)), 'x-cordon-signature': 'sha256=' + '0'.repeat(64) })).status, 401, 'forged signature')
  t.equal((await post(body)).status, 401, 'unsigned')
  t.equal((await post(body, signed(body, Math.floor(Date.now() / 1000) - 3600))).status, 401, 'old timestamp')
  const h = signed(body)
  t.equal((await post(body, h)).status, 200, 'first delivery accepted')
  const replay = await post(body, h)
  t.equal(replay.status, 409, 'the identical request replayed is refused')
  t.match(await replay.json(), { error: 'replayed request' })
  // re-signed with a new timestamp (a sender retry): accepted but deduplicated by message id
  await new Promise((r) => setTimeout(r, 1100))
  t.equal((await post(body, signed(body))).status, 200)
  await waitFor(() => agent.seen.length >= 1, 10000, 'delivery')
  await new Promise((r) => setTimeout(r, 800))
  t.equal(agent.seen.length, 1, 'delivered exactly once')
  t.match(logs.text(), /replayed request refused/)
})

t.test('a 10 MB body is refused with 413 and a log line; no crash', async (t) => {
  const { post, signed, gw, logs } = await setup(t)
  const big = msg('m3', 'x'.repeat(10 * 1024 * 1024))
  const r = await post(big, signed(big)).catch((e) => e as Error)
  if (r instanceof Error) t.pass(`connection closed by the gateway (${r.message})`)
  else t.equal(r.status, 413)
  await waitFor(() => /refused an inbound request: request body of \d+ bytes is over the limit/.test(logs.text()), 5000, 'log line')
  t.pass('clear log line')
  const body = msg('m4', 'still alive')
  t.equal((await post(body, signed(body))).status, 200)
  t.equal(gw.inbox.stats().pending, 1)
})

t.test('malformed JSON is refused', async (t) => {
  const { post, signed, logs } = await setup(t)
  const bad = '{"id": 1, "text":'
  t.equal((await post(bad, signed(bad))).status, 400)
  const noFields = JSON.stringify({ id: 5 })
  t.equal((await post(noFields, signed(noFields))).status, 400)
  t.match(logs.text(), /webhook body is not JSON/)
})
