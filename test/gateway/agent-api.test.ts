/** The agent endpoint as documented: shapes (checked against the OpenAPI schema), errors, token. */
import t from 'tap'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { Ajv } from 'ajv'
import { FakeTelegram } from './fakes/telegram.js'
import { ROOT, startGateway, waitFor } from './helpers.js'
import { GatewayClient, inbox, requestHeaders } from '../../lib/agent/index.js'
import { requestIdFor } from '../../lib/gateway/index.js'

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

t.test('request ids: on each message, stable across redelivery and restart, in the audit of the message and its reply', async (t) => {
  const tg = await FakeTelegram.start(TOKEN)
  t.teardown(() => tg.close())
  const cfg = { agent: { visibility_timeout_s: 1 }, channels: [{ name: 'tg', type: 'telegram', token: { env: 'T' }, api_root: tg.apiRoot, poll_timeout_s: 1, allow: [1001] }] }
  const first = await startGateway(t, cfg, { env: { T: TOKEN } })
  tg.message({ from: 1001, text: 'trace me' })
  const c = new GatewayClient({ url: first.gw.agentUrl })
  const got: Awaited<ReturnType<GatewayClient['messages']>> = []
  for (let i = 0; i < 20 && !got.length; i++) got.push(...(await c.messages(1)))
  const m = got[0]!
  t.match(m.request_id, /^rq-[A-Za-z0-9_-]{22}$/)
  t.equal(m.request_id, requestIdFor(m.id), 'derived from the message id')
  t.not(m.request_id, m.id)
  const again = await c.messages(3) // the lease (1 s) runs out: the same message again
  t.equal(again[0]?.id, m.id)
  t.equal(again[0]?.delivery, 2)
  t.equal(again[0]?.request_id, m.request_id, 'same request id on redelivery')
  const inbound = first.gw.audit.recent.find((e) => e.event === 'inbound' && e.message === m.id)
  t.match(inbound, { outcome: 'delivered', request_id: m.request_id }, 'the inbound audit line carries it')

  // restart on the same state: the stored message comes back with the same request id
  await first.gw.stop()
  const second = await startGateway(t, cfg, { dir: first.dir, env: { T: TOKEN } })
  const c2 = new GatewayClient({ url: second.gw.agentUrl })
  const after = await c2.messages(2)
  t.equal(after[0]?.id, m.id)
  t.equal(after[0]?.request_id, m.request_id, 'same request id after a gateway restart')

  // a reply to the message is audited with the message's request id, whatever header comes with it
  await c2.reply({ id: `${m.id}.r1`, conversation: m.conversation, text: 'answer', in_reply_to: m.id }, 'rq-something-else')
  // a reply naming no known message: the header is the only label
  await c2.reply({ id: 'free.r1', conversation: m.conversation, text: 'unprompted' }, 'rq-agent-label')
  // a malformed header is not logged
  await c2.reply({ id: 'free.r2', conversation: m.conversation, text: 'unlabelled' }, 'bad label with spaces')
  await tg.waitSent(3)
  await waitFor(() => second.gw.audit.recent.filter((e) => e.event === 'reply' && e.outcome === 'sent').length === 3, 10000, 'three replies audited')
  const byId = (id: string) => second.gw.audit.recent.find((e) => e.event === 'reply' && e.reply === id)
  t.match(byId(`${m.id}.r1`), { outcome: 'sent', request_id: m.request_id, in_reply_to: m.id })
  t.match(byId('free.r1'), { outcome: 'sent', request_id: 'rq-agent-label' })
  t.equal(byId('free.r2')?.request_id, undefined)
  await c2.ack(m.id, m.request_id)
  t.ok(validMessage({ ...m, delivery: 1 }), `with request_id the message matches the OpenAPI schema: ${ajv.errorsText(validMessage.errors)}`)
  const { request_id: _drop, ...withoutRid } = m
  t.notOk(validMessage(withoutRid), 'request_id is required by the schema')
})

t.test('the agent client sends x-cordon-request-id on ack and replies; requestHeaders() builds it', async (t) => {
  const { createServer } = await import('node:http')
  const calls: { method: string; url: string; rid: string | undefined }[] = []
  let handed = false
  const msg = { id: 'tg.m1', request_id: 'rq-fromgateway', conversation: 'tg:1', channel: 'tg', sender: { id: '1', name: 'a' }, text: 'hi', attachments: [], received_at: new Date().toISOString(), is_group: false, delivery: 1 }
  // a stand-in gateway that records what the client sends
  const srv = createServer((req, res) => {
    calls.push({ method: req.method!, url: req.url!, rid: req.headers['x-cordon-request-id'] as string | undefined })
    req.resume()
    req.on('end', () => {
      res.setHeader('content-type', 'application/json')
      if (req.url!.startsWith('/v1/messages?')) {
        const messages = handed ? [] : [msg]
        handed = true
        return void res.end(JSON.stringify({ messages, lease_s: 60 }))
      }
      if (req.url === '/v1/replies') return void res.writeHead(202).end(JSON.stringify({ id: 'x', status: 'queued' }))
      res.end(JSON.stringify({ id: msg.id, status: 'acked' }))
    })
  })
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r))
  t.teardown(() => new Promise<void>((r) => (srv.close(() => r()), srv.closeAllConnections())))
  const url = `http://127.0.0.1:${(srv.address() as import('node:net').AddressInfo).port}`
  const ac = new AbortController()
  for await (const m of inbox({ url, wait: 0, signal: ac.signal })) {
    t.equal(m.request_id, 'rq-fromgateway')
    t.same(requestHeaders(m), { 'x-cordon-request-id': 'rq-fromgateway' }, 'for openai: { headers: requestHeaders(msg) }')
    await m.reply('answer')
    await m.ack()
    ac.abort()
  }
  const reply = calls.find((c) => c.method === 'POST' && c.url === '/v1/replies')
  const ack = calls.find((c) => c.method === 'POST' && c.url === '/v1/messages/tg.m1/ack')
  t.equal(reply?.rid, 'rq-fromgateway', 'reply carries the header')
  t.equal(ack?.rid, 'rq-fromgateway', 'ack carries the header')
  t.equal(calls.find((c) => c.method === 'GET')?.rid, undefined, 'polling is not labelled (it is for no message yet)')
  // an older gateway without request ids: the message id stands in
  t.same(requestHeaders({ id: 'tg.old' }), { 'x-cordon-request-id': 'tg.old' })
  t.same(requestHeaders('rq-x'), { 'x-cordon-request-id': 'rq-x' })
})
