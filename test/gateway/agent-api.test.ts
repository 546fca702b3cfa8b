/** The agent endpoint as documented: shapes (checked against the OpenAPI schema), errors, token. */
import t from 'tap'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { Ajv } from 'ajv'
import { FakeTelegram } from './fakes/telegram.js'
import { ROOT, startGateway, waitFor } from './helpers.js'
import { GatewayClient } from '../../lib/agent/index.js'

const TOKEN = '123456:TEST-telegram-token-api'
const spec = JSON.parse(readFileSync(path.join(ROOT, 'docs/agent-endpoint.openapi.json'), 'utf8'))
const ajv = new Ajv({ strict: false })
ajv.addSchema({ $id: 'spec', components: spec.components })
const validMessage = ajv.getSchema('spec#/components/schemas/Message')!

t.test('messages match the documented schema; errors are clear; replies only to known conversations', async (t) => {
  const tg = await FakeTelegram.start(TOKEN)
  t.teardown(() => tg.close())
  const { gw } = await startGateway(t, { channels: [{ name: 'tg', type: 'telegram', token: { env: 'T' }, api_root: tg.apiRoot, poll_timeout_s: 1, allow: [1001] }] }, { env: { T: TOKEN } })
  tg.message({ from: 1001, text: 'shape check' })
  const c = new GatewayClient({ url: gw.agentUrl })
  const msgs: Awaited<ReturnType<GatewayClient['messages']>> = []
  for (let i = 0; i < 20 && !msgs.length; i++) msgs.push(...(await c.messages(1)))
  t.equal(msgs.length, 1)
  t.ok(validMessage(msgs[0]), `message matches docs/agent-endpoint.openapi.json: ${ajv.errorsText(validMessage.errors)}`)

  const post = (p: string, body: unknown) => fetch(gw.agentUrl + p, { method: 'POST', body: typeof body === 'string' ? body : JSON.stringify(body), headers: { 'content-type': 'application/json' } })
  let r = await post('/v1/replies', { id: 'x1', conversation: 'tg:999', text: 'spam a stranger' })
  t.equal(r.status, 404, 'no replies to a conversation that never wrote to the agent')
  t.match((await r.json()).error, /unknown conversation tg:999/)
  r = await post('/v1/replies', { id: 'bad id with spaces', conversation: 'tg:1001', text: 'x' })
  t.equal(r.status, 400)
  r = await post('/v1/replies', '{not json')
  t.equal(r.status, 400)
  r = await post('/v1/replies', { id: 'ok1', conversation: 'tg:1001', text: '' })
  t.equal(r.status, 400, 'empty text refused')
  t.same(await c.reply({ id: 'ok1', conversation: 'tg:1001', text: 'fine' }), { id: 'ok1', status: 'queued' })
  t.same(await c.reply({ id: 'ok1', conversation: 'tg:1001', text: 'fine' }), { id: 'ok1', status: 'duplicate' })
  r = await post('/v1/messages/nope/ack', {})
  t.equal(r.status, 404)
  await c.ack(msgs[0]!.id)
  t.equal((await post(`/v1/messages/${msgs[0]!.id}/ack`, {})).status, 200, 'ack is idempotent')
  t.equal((await fetch(gw.agentUrl + '/v1/nothing')).status, 404)
  await tg.waitSent(1)
})

t.test('with agent.token set, requests without it are refused', async (t) => {
  const { gw } = await startGateway(t, { agent: { token: { env: 'AGENT_TOKEN' } }, channels: [] }, { env: { AGENT_TOKEN: 'agent-token-abcdef' } })
  t.equal((await fetch(gw.agentUrl + '/v1/messages')).status, 401)
  t.equal((await fetch(gw.agentUrl + '/v1/health')).status, 200, 'health needs no token')
  t.same(await new GatewayClient({ url: gw.agentUrl, token: 'agent-token-abcdef' }).messages(0), [])
})

t.test('a channel with a bad token is reported unhealthy, others keep working, the token is never logged', async (t) => {
  const tg = await FakeTelegram.start(TOKEN)
  t.teardown(() => tg.close())
  const WRONG = '999:WRONG-token-that-must-not-leak'
  const { gw, logs, audit } = await startGateway(
    t,
    {
      channels: [
        { name: 'bad', type: 'telegram', token: { env: 'BAD' }, api_root: tg.apiRoot, poll_timeout_s: 1 },
        { name: 'good', type: 'telegram', token: { env: 'GOOD' }, api_root: tg.apiRoot, poll_timeout_s: 1, allow: [1001] },
      ],
    },
    { env: { BAD: WRONG, GOOD: TOKEN } },
  )
  await waitFor(() => gw.status().channels.find((c) => c.name === 'bad')?.state === 'unhealthy', 10000, 'bad channel unhealthy')
  await waitFor(() => gw.status().channels.find((c) => c.name === 'good')?.state === 'healthy', 10000, 'good channel healthy')
  t.pass('the other channel is healthy')
  t.match(gw.status().channels.find((c) => c.name === 'bad')!.detail, /401/)
  tg.message({ from: 1001, text: 'still served' })
  const c = new GatewayClient({ url: gw.agentUrl })
  const got = []
  for (let i = 0; i < 20 && !got.length; i++) got.push(...(await c.messages(1)))
  t.equal(got[0]?.text, 'still served')
  const everything = JSON.stringify(logs.lines) + JSON.stringify(gw.status()) + readFileSync(audit, 'utf8')
  t.notOk(everything.includes(WRONG) || everything.includes(TOKEN), 'no token in logs, status or audit')
})

t.test('the client reaches http://gateway.local through HTTP_PROXY (as the egress gate provides it)', async (t) => {
  const { createServer, request } = await import('node:http')
  const { gw } = await startGateway(t, { channels: [] })
  const target = new URL(gw.agentUrl)
  const seen: string[] = []
  // a stand-in for the egress gate: absolute-URI forward proxy that maps gateway.local to the gateway
  const proxy = createServer((req, res) => {
    const u = new URL(req.url!)
    seen.push(`${req.method} ${u.host}${u.pathname}`)
    if (u.hostname !== 'gateway.local') return void res.writeHead(403).end()
    const up = request({ host: target.hostname, port: target.port, method: req.method, path: u.pathname + u.search, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode!, r.headers)
      r.pipe(res)
    })
    req.pipe(up)
  })
  // undici tunnels even plain HTTP with CONNECT; the gate serves that too (DESIGN.md)
  const { connect } = await import('node:net')
  const tunnels: import('node:net').Socket[] = []
  proxy.on('connect', (req, sock, head) => {
    seen.push(`CONNECT ${req.url}`)
    if (req.url !== 'gateway.local:80') return void sock.end('HTTP/1.1 403 Forbidden\r\n\r\n')
    const up = connect(Number(target.port), target.hostname, () => {
      sock.write('HTTP/1.1 200 Connection Established\r\n\r\n')
      up.write(head)
      up.pipe(sock)
      sock.pipe(up)
    })
    tunnels.push(sock, up)
    up.on('error', () => sock.destroy())
    sock.on('error', () => up.destroy())
  })
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r))
  t.teardown(() => new Promise<void>((r) => (tunnels.forEach((x) => x.destroy()), proxy.close(() => r()), proxy.closeAllConnections())))
  const saved = { ...process.env }
  t.teardown(() => {
    for (const k of ['HTTP_PROXY', 'http_proxy', 'NO_PROXY', 'no_proxy', 'CORDON_GATEWAY_URL']) {
      if (saved[k] === undefined) delete process.env[k]
      else process.env[k] = saved[k]
    }
  })
  for (const k of ['http_proxy', 'NO_PROXY', 'no_proxy']) delete process.env[k]
  process.env.HTTP_PROXY = `http://127.0.0.1:${(proxy.address() as import('node:net').AddressInfo).port}`
  delete process.env.CORDON_GATEWAY_URL
  const c = new GatewayClient() // defaults: http://gateway.local, proxy from the environment
  t.equal(c.base, 'http://gateway.local')
  t.same(await c.messages(0), [])
  t.same(await c.messages(0), [])
  t.ok(seen.length >= 1 && seen.every((x) => x === 'CONNECT gateway.local:80' || x === 'GET gateway.local/v1/messages'), `the requests went through the proxy, addressed to gateway.local: ${seen.join(', ')}`)
})
