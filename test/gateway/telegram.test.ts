import t from 'tap'
import { readFileSync } from 'node:fs'
import { FakeTelegram } from './fakes/telegram.js'
import { echoAgent, startGateway, waitFor } from './helpers.js'
import { GatewayClient } from '../../lib/agent/index.js'

const TOKEN = '123456:TEST-telegram-token-abcdef'

async function setup(t: Tap.Test, extra: Record<string, unknown> = {}, gwExtra: Record<string, unknown> = {}) {
  const tg = await FakeTelegram.start(TOKEN)
  t.teardown(() => tg.close())
  const g = await startGateway(
    t,
    { channels: [{ name: 'tg', type: 'telegram', token: { env: 'TG_TOKEN' }, api_root: tg.apiRoot, poll_timeout_s: 1, allow: [1001], ...extra }], ...gwExtra },
    { env: { TG_TOKEN: TOKEN } },
  )
  await waitFor(() => g.gw.status().channels.find((c) => c.name === 'tg')?.state === 'healthy', 10000, 'telegram healthy')
  return { tg, ...g }
}
type Tap = { Test: typeof t }
declare namespace Tap { type Test = typeof t }

t.test('allowlisted sender: message reaches the agent, the reply reaches Telegram', async (t) => {
  const { tg, gw, audit } = await setup(t)
  const agent = echoAgent(gw.agentUrl)
  t.teardown(agent.stop)
  tg.message({ from: 1001, text: 'hello agent' })
  const [sent] = await tg.waitSent(1)
  t.equal(sent!.text, 'echo: hello agent')
  t.equal(sent!.chat_id, '1001')
  t.equal(agent.seen[0]!.channel, 'tg')
  t.equal(agent.seen[0]!.conversation, 'tg:1001')
  t.equal(agent.seen[0]!.sender.id, '1001')
  t.equal(agent.seen[0]!.delivery, 1)
  t.ok(sent!.reply_to, 'the reply quotes the message it answers')
  // the update was confirmed to Telegram (offset moved past it)
  await waitFor(() => tg.confirmed >= 2, 5000, 'offset confirmed')
  await waitFor(() => readFileSync(audit, 'utf8').includes('"outcome":"sent"'), 5000, 'audit reply line')
  const lines = readFileSync(audit, 'utf8').trim().split('\n').map((l) => JSON.parse(l))
  const inbound = lines.find((l) => l.event === 'inbound')
  t.match(inbound, { channel: 'tg', sender: '1001', conversation: 'tg:1001', outcome: 'delivered', size: 11 })
  t.notOk('text' in inbound, 'no message text in the audit unless include_text is on')
  t.notOk(readFileSync(audit, 'utf8').includes(TOKEN), 'token never in the audit')
})

t.test('unknown sender gets a pairing code; nothing reaches the agent until approve', async (t) => {
  const { tg, gw, audit } = await setup(t)
  const agent = echoAgent(gw.agentUrl)
  t.teardown(agent.stop)
  tg.message({ from: 2002, text: 'let me in' })
  const [notice] = await tg.waitSent(1, 10000, 2002)
  const code = /code is ([A-Z0-9]{8})/.exec(notice!.text)?.[1]
  t.ok(code, `pairing notice carries a code: ${notice!.text}`)
  t.match(notice!.text, /cordon pair approve/)
  tg.message({ from: 2002, text: 'still waiting' })
  await new Promise((r) => setTimeout(r, 1500))
  t.equal(agent.seen.length, 0, 'the agent saw nothing from the unpaired sender')
  t.equal(tg.sentTo(2002).length, 1, 'a second message does not mint a second code')
  // operator approves through the control API (same path the CLI uses)
  const { control } = await import('../../lib/cli/gateway.js')
  const list = await control({ control: (gw as unknown as { opts: { control: string } }).opts.control }, 'GET', '/v1/pairings')
  t.equal((list.data.pairings as { code: string }[])[0]!.code, code)
  const r = await control({ control: (gw as unknown as { opts: { control: string } }).opts.control }, 'POST', `/v1/pairings/${code}/approve`, {})
  t.equal(r.status, 200)
  await tg.waitSent(2, 10000, 2002) // "you are approved"
  tg.message({ from: 2002, text: 'now?' })
  const sent = await tg.waitSent(3, 10000, 2002)
  t.equal(sent[2]!.text, 'echo: now?')
  t.equal(agent.seen.length, 1)
  t.equal(agent.seen[0]!.text, 'now?')
  const events = readFileSync(audit, 'utf8').trim().split('\n').map((l) => JSON.parse(l))
  t.ok(events.some((e) => e.event === 'inbound' && e.sender === '2002' && e.outcome === 'pairing'), 'audit: pairing outcome')
  t.ok(events.some((e) => e.event === 'pairing' && e.sender === '2002' && e.decision === 'approved'), 'audit: the decision')
})

t.test('groups: only messages that mention the bot reach the agent', async (t) => {
  const { tg, gw } = await setup(t, { allow: [1001, 1002] })
  const agent = echoAgent(gw.agentUrl)
  t.teardown(agent.stop)
  tg.message({ from: 1002, chat: -500, chatType: 'group', text: 'chatting among ourselves' })
  const text = '@cordon_test_bot what time is it'
  tg.message({ from: 1001, chat: -500, chatType: 'group', text, entities: [{ type: 'mention', offset: 0, length: 16 }] })
  const sent = await tg.waitSent(1, 10000, -500)
  t.equal(sent[0]!.text, `echo: ${text}`)
  t.equal(agent.seen.length, 1)
  t.equal(agent.seen[0]!.is_group, true)
})

t.test('429 retry_after is honoured', async (t) => {
  const { tg, gw, logs } = await setup(t)
  const agent = echoAgent(gw.agentUrl)
  t.teardown(agent.stop)
  tg.scripts.push({ kind: '429', retryAfter: 2 })
  tg.message({ from: 1001, text: 'ping' })
  await waitFor(() => tg.calls.some((c) => c.method === 'sendMessage'), 10000, 'first send attempt')
  const first = tg.calls.find((c) => c.method === 'sendMessage')!.at
  const [sent] = await tg.waitSent(1, 15000)
  t.equal(sent!.text, 'echo: ping')
  t.ok(sent!.at - first >= 1900, `resent after retry_after (waited ${sent!.at - first} ms)`)
  t.equal(tg.sent.length, 1, 'sent exactly once')
  t.match(logs.text(), /rate limit \(429\); waiting 2s/)
})

t.test('a 10 MB message is refused with a clear log line; the gateway keeps working', async (t) => {
  const { tg, gw, logs } = await setup(t)
  const agent = echoAgent(gw.agentUrl)
  t.teardown(agent.stop)
  tg.message({ from: 1001, text: 'x'.repeat(10 * 1024 * 1024) })
  const [refusal] = await tg.waitSent(1, 20000)
  t.match(refusal!.text, /Message too large \(10485760 bytes; the limit is 32768\)/)
  t.match(logs.text(), /refused a message of 10485760 bytes from 1001 on tg: over max_message_bytes/)
  tg.message({ from: 1001, text: 'small one' })
  const sent = await tg.waitSent(2, 10000)
  t.equal(sent[1]!.text, 'echo: small one')
  t.equal(agent.seen.length, 1, 'the agent got only the small message')
})

t.test('malformed updates are refused with a log line and no crash', async (t) => {
  const { tg, gw, logs } = await setup(t)
  const agent = echoAgent(gw.agentUrl)
  t.teardown(agent.stop)
  tg.pushRaw({ message: { message_id: 'nope', text: 'no chat' } })
  tg.pushRaw({ update_id: 'x' as unknown as number, message: 5 })
  tg.message({ from: 1001, text: 'after the junk' })
  const [sent] = await tg.waitSent(1, 10000)
  t.equal(sent!.text, 'echo: after the junk')
  t.match(logs.text(), /telegram: malformed input refused: update \d+: message lacks chat\.id/)
  t.equal(gw.status().channels.find((c) => c.name === 'tg')!.state, 'healthy')
})

t.test('long replies are split at 4096 characters', async (t) => {
  const { tg, gw } = await setup(t)
  const word = 'lorem '
  const agent = echoAgent(gw.agentUrl, () => word.repeat(1500)) // 9000 chars
  t.teardown(agent.stop)
  tg.message({ from: 1001, text: 'write a lot' })
  const sent = await tg.waitSent(3, 10000)
  t.ok(sent.every((s) => s.text.length <= 4096), 'every part within the limit')
  t.equal(sent.map((s) => s.text).join(' ').replace(/\s+/g, ' ').trim(), word.repeat(1500).trim())
})

t.test('attachments are fetched through the gateway with a size limit', async (t) => {
  const { tg, gw } = await setup(t, {}, { agent: { max_attachment_bytes: 1000 } })
  tg.files.set('small', Buffer.from('file-content'))
  tg.files.set('big', Buffer.alloc(5000, 1))
  tg.message({ from: 1001, text: '', extra: { caption: 'two files', document: { file_id: 'small', file_name: 'a.txt', file_size: 12 } } })
  tg.message({ from: 1001, text: '', extra: { document: { file_id: 'big', file_name: 'b.bin' } } })
  const c = new GatewayClient({ url: gw.agentUrl })
  const msgs = []
  for (let i = 0; i < 20 && msgs.length < 2; i++) msgs.push(...(await c.messages(1, 10)))
  t.equal(msgs.length, 2)
  t.equal(msgs[0]!.text, 'two files')
  const ref = msgs[0]!.attachments[0]!
  t.match(ref, { name: 'a.txt', size: 12 })
  t.notMatch(JSON.stringify(msgs), TOKEN, 'no token in what the agent sees')
  t.equal((await c.attachment(ref)).toString(), 'file-content')
  await t.rejects(c.attachment(msgs[1]!.attachments[0]!), /HTTP 413/)
})
