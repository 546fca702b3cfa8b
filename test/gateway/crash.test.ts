/**
 * kill -9 of the gateway (a child process running the real CLI) between receipt and delivery,
 * and between reply and send: nothing is lost, ids stay the same, each reply reaches the channel once.
 */
import t from 'tap'
import { writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
const require = createRequire(import.meta.url)
import path from 'node:path'
import { FakeTelegram } from './fakes/telegram.js'
import { spawnGateway, tmpdir, waitFor, waitOutput } from './helpers.js'
import { GatewayClient } from '../../lib/agent/index.js'

const TOKEN = '123456:TEST-telegram-token-crash'

async function harness(t: typeof import('tap').default) {
  const tg = await FakeTelegram.start(TOKEN)
  t.teardown(() => tg.close())
  const dir = tmpdir(t)
  const cfg = path.join(dir, 'gateway.yaml')
  writeFileSync(cfg, `channels:\n  - name: tg\n    type: telegram\n    token: { env: TG_TOKEN }\n    api_root: ${tg.apiRoot}\n    poll_timeout_s: 1\n    allow: [1001]\n`)
  const children: ReturnType<typeof spawnGateway>[] = []
  t.teardown(() => children.forEach((c) => c.exitCode === null && c.kill('SIGKILL')))
  const start = async () => {
    const c = spawnGateway(['--config', cfg, '--agent-listen', '127.0.0.1:0', '--control', path.join(dir, 'ctl.sock'), '--state', path.join(dir, 'state'), '--audit', path.join(dir, 'audit.jsonl')], { TG_TOKEN: TOKEN })
    children.push(c)
    const m = await waitOutput(c, /agent endpoint (http:\/\/\S+),/, 60000)
    return { child: c, client: new GatewayClient({ url: m[1]! }) }
  }
  const kill9 = async (c: ReturnType<typeof spawnGateway>) => {
    c.kill('SIGKILL')
    await new Promise((r) => (c.exitCode !== null || c.signalCode !== null ? r(null) : c.once('exit', r)))
  }
  return { tg, start, kill9, dir }
}

t.test('kill -9 between receipt and delivery: every message reaches the agent, same ids', async (t) => {
  const { tg, start, kill9 } = await harness(t)
  let g = await start()
  for (let i = 0; i < 5; i++) tg.message({ from: 1001, text: `msg ${i}` })
  // the gateway confirms updates to Telegram only after storing them
  await waitFor(() => tg.confirmed >= 6, 15000, 'all five updates confirmed to Telegram')
  // an agent takes two of them (leased, not acked) and dies with the gateway
  const taken = await g.client.messages(0, 2)
  t.equal(taken.length, 2)
  await kill9(g.child)
  t.equal(tg.updates.length, 0, 'Telegram will not redeliver: the gateway owns them now')

  g = await start()
  const got: Awaited<ReturnType<GatewayClient['messages']>> = []
  for (let i = 0; i < 10 && got.length < 5; i++) got.push(...(await g.client.messages(1, 10)))
  t.same(got.map((m) => m.text).sort(), ['msg 0', 'msg 1', 'msg 2', 'msg 3', 'msg 4'], 'no loss')
  t.same(got.filter((m) => taken.some((x) => x.id === m.id)).map((m) => m.id).sort(), taken.map((m) => m.id).sort(), 'the leased ones come back with the same ids')
  for (const m of got) await g.client.ack(m.id)
  await kill9(g.child)

  g = await start()
  t.same(await g.client.messages(1, 10), [], 'acked messages are not redelivered after another restart')
  await kill9(g.child)
})

t.test('kill -9 between reply and send: every reply reaches the channel exactly once', async (t) => {
  const { tg, start, kill9, dir } = await harness(t)
  t.teardown(() => { if (process.env.DEBUG_CRASH) console.error(require('fs').readFileSync(path.join(dir, 'state/outbound.log'), 'utf8')) })
  let g = await start()
  tg.message({ from: 1001, text: 'q1' })
  tg.message({ from: 1001, text: 'q2' })
  const msgs: Awaited<ReturnType<GatewayClient['messages']>> = []
  for (let i = 0; i < 10 && msgs.length < 2; i++) msgs.push(...(await g.client.messages(1, 10)))
  // the channel accepts part 1 of the long answer, then the next send hangs: kill -9 mid-send
  tg.scripts.push({ kind: 'ok' }, { kind: 'hang' })
  const long = 'alpha '.repeat(600) + '\n\n' + 'omega '.repeat(600) // 7202 chars: two parts at 4096
  const r1 = await g.client.reply({ id: 'r-long', conversation: msgs[0]!.conversation, text: long, in_reply_to: msgs[0]!.id })
  t.equal(r1.status, 'queued')
  await waitFor(() => tg.hung.length === 1, 10000, 'second part in flight')
  t.equal(tg.sent.length, 1, 'part 1 accepted before the crash')
  const r2 = await g.client.reply({ id: 'r-short', conversation: msgs[1]!.conversation, text: 'short answer', in_reply_to: msgs[1]!.id })
  t.equal(r2.status, 'queued', 'stored while the channel is stuck')
  await kill9(g.child)
  tg.releaseHung()

  g = await start()
  // the agent, unsure whether its POST landed, retries with the same ids
  t.equal((await g.client.reply({ id: 'r-short', conversation: msgs[1]!.conversation, text: 'short answer' })).status, 'duplicate')
  await tg.waitSent(3, 15000)
  await new Promise((r) => setTimeout(r, 1500))
  const texts = tg.sent.map((s) => s.text)
  t.equal(texts.length, 3, `exactly three sends: ${texts.map((x) => x.slice(0, 12)).join(' | ')}`)
  t.equal(texts.filter((x) => x.startsWith('alpha')).length, 1, 'part 1 not resent')
  t.equal(texts.filter((x) => x.startsWith('omega')).length, 1, 'part 2 sent once after restart')
  t.equal(texts.filter((x) => x === 'short answer').length, 1, 'the short reply sent once')
  await kill9(g.child)
  g = await start()
  await new Promise((r) => setTimeout(r, 1500))
  t.equal(tg.sent.length, 3, 'nothing resent after a further restart')
  await kill9(g.child)
})
