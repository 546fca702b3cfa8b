/** Per-sender rate limit, Telegram webhook mode, the remote control API, Socket Mode reconnect. */
import t from 'tap'
import { readFileSync } from 'node:fs'
import { FakeTelegram } from './fakes/telegram.js'
import { FakeSlack, slackMessageEvent } from './fakes/slack.js'
import { echoAgent, startGateway, waitFor } from './helpers.js'

const TOKEN = '123456:TEST-telegram-token-extras'

t.test('per-sender rate limit: refusal to the sender, audit line, nothing to the agent', async (t) => {
  const tg = await FakeTelegram.start(TOKEN)
  t.teardown(() => tg.close())
  const { gw, audit } = await startGateway(t, { channels: [{ name: 'tg', type: 'telegram', token: { env: 'T' }, api_root: tg.apiRoot, poll_timeout_s: 1, allow: [1001, 1002], rate_per_minute: 2 }] }, { env: { T: TOKEN } })
  const agent = echoAgent(gw.agentUrl, () => null)
  t.teardown(agent.stop)
  for (let i = 0; i < 4; i++) tg.message({ from: 1001, text: `m${i}` })
  tg.message({ from: 1002, text: 'other sender' })
  const [refusal] = await tg.waitSent(1, 10000, 1001)
  t.match(refusal!.text, /too fast/)
  await waitFor(() => agent.seen.length >= 3, 10000, 'three deliveries')
  await new Promise((r) => setTimeout(r, 500))
  t.same(agent.seen.map((m) => m.text).sort(), ['m0', 'm1', 'other sender'], 'two from the fast sender, the other sender unaffected')
  t.equal(tg.sentTo(1001).length, 1, 'one refusal, not one per message')
  const outcomes = readFileSync(audit, 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((l) => l.event === 'inbound' && l.sender === '1001').map((l) => l.outcome)
  t.same(outcomes.sort(), ['delivered', 'delivered', 'rate-limited', 'rate-limited'])
})

t.test('Telegram webhook mode: secret token checked, update stored before 200', async (t) => {
  const tg = await FakeTelegram.start(TOKEN)
  t.teardown(() => tg.close())
  const { gw } = await startGateway(
    t,
    { public_listen: '127.0.0.1:0', channels: [{ name: 'tgw', type: 'telegram', mode: 'webhook', token: { env: 'T' }, webhook_secret: { env: 'WS' }, api_root: tg.apiRoot, allow: [1001] }] },
    { env: { T: TOKEN, WS: 'tg-webhook-secret' } },
  )
  await waitFor(() => gw.status().channels[0]?.state === 'healthy', 10000, 'healthy')
  const update = JSON.stringify({ update_id: 77, message: { message_id: 5, date: 0, from: { id: 1001, is_bot: false, first_name: 'A' }, chat: { id: 1001, type: 'private' }, text: 'via webhook' } })
  const post = (secret?: string) => fetch(`${gw.publicUrl}/channels/tgw`, { method: 'POST', body: update, headers: { 'content-type': 'application/json', ...(secret ? { 'x-telegram-bot-api-secret-token': secret } : {}) } })
  t.equal((await post()).status, 401)
  t.equal((await post('wrong')).status, 401)
  t.equal(gw.inbox.stats().pending, 0)
  t.equal((await post('tg-webhook-secret')).status, 200)
  t.equal(gw.inbox.stats().pending, 1, 'stored by the time Telegram got its 200')
  const agent = echoAgent(gw.agentUrl)
  t.teardown(agent.stop)
  const [sent] = await tg.waitSent(1)
  t.equal(sent!.text, 'echo: via webhook')
})

t.test('control API over HTTP needs its bearer token', async (t) => {
  const { gw } = await startGateway(t, { control_http: { listen: '127.0.0.1:0', token: { env: 'CT' } }, channels: [] }, { env: { CT: 'control-token-123456' } })
  const url = gw.controlHttpUrl
  t.equal((await fetch(`${url}/v1/status`)).status, 401)
  t.equal((await fetch(`${url}/v1/status`, { headers: { authorization: 'Bearer nope' } })).status, 401)
  const r = await fetch(`${url}/v1/status`, { headers: { authorization: 'Bearer control-token-123456' } })
  t.equal(r.status, 200)
  t.match(await r.json(), { ok: true, channels: [{ name: 'local' }] })
})

t.test('Slack Socket Mode reconnects after the connection drops', async (t) => {
  const sl = await FakeSlack.start()
  t.teardown(() => sl.close())
  const { gw } = await startGateway(t, { channels: [{ name: 'sl', type: 'slack', mode: 'socket', token: { env: 'B' }, app_token: { env: 'A' }, api_url: sl.apiUrl, allow: ['U1'] }] }, { env: { B: sl.token, A: sl.appToken } })
  await waitFor(() => gw.status().channels.find((c) => c.name === 'sl')?.state === 'healthy', 10000, 'connected')
  const agent = echoAgent(gw.agentUrl)
  t.teardown(agent.stop)
  const opens = () => sl.calls.filter((c) => c.method === 'apps.connections.open').length
  t.equal(opens(), 1)
  sl.dropSockets()
  await waitFor(() => opens() >= 2 && sl.connected === 1, 15000, 'reconnected')
  sl.pushSocketEvent(slackMessageEvent({ user: 'U1', text: 'after reconnect' }))
  const [p] = await sl.waitPosts(1)
  t.equal(p!.text, 'echo: after reconnect')
})
