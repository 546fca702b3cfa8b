import t from 'tap'
import { appendFileSync, readFileSync, statSync } from 'node:fs'
import path from 'node:path'
import { DurableLog, Inbox, Outbox, requestIdFor } from '../../lib/gateway/index.js'
import type { StoredInbound } from '../../lib/gateway/index.js'
import { tmpdir } from './helpers.js'

const stored = (id: string, text = 'x'): StoredInbound => ({
  msg: { id, request_id: requestIdFor(id), channel: 'tg', conversation: 'tg:1', sender: { id: '1', name: 'a' }, text, attachments: [], received_at: new Date().toISOString(), is_group: false },
  route: { chat: '1', message: id },
  sources: [],
})

t.test('log: appends survive reopen; a torn last line is dropped and truncated', async (t) => {
  const dir = tmpdir(t)
  const f = path.join(dir, 'q.log')
  const log = new DurableLog(f)
  t.same(await log.open(), [])
  await Promise.all([log.append({ t: 'a', n: 1 }), log.append({ t: 'a', n: 2 }), log.append({ t: 'a', n: 3 })])
  await log.close()
  appendFileSync(f, '{"t":"a","n":4') // a crash mid-write
  const log2 = new DurableLog(f)
  t.same((await log2.open()).map((r) => r.n), [1, 2, 3])
  t.equal(readFileSync(f, 'utf8').split('\n').filter(Boolean).length, 3, 'torn tail truncated')
  await log2.append({ t: 'a', n: 5 })
  await log2.close()
  t.same((await new DurableLog(f).open()).map((r) => r.n), [1, 2, 3, 5])
})

t.test('log: compaction is atomic and later appends land in the new file', async (t) => {
  const dir = tmpdir(t)
  const f = path.join(dir, 'q.log')
  const log = new DurableLog(f)
  await log.open()
  for (let i = 0; i < 100; i++) await log.append({ t: 'a', n: i })
  const before = statSync(f).size
  await log.compact([{ t: 'a', n: 99 }])
  await log.append({ t: 'a', n: 100 })
  await log.close()
  t.ok(statSync(f).size < before)
  t.same((await new DurableLog(f).open()).map((r) => r.n), [99, 100])
})

t.test('inbox: dedupe, lease, redelivery after expiry and restart, ack', async (t) => {
  const dir = tmpdir(t)
  const a = new Inbox(dir)
  await a.open()
  t.equal(await a.put(stored('m1')), 'stored')
  t.equal(await a.put(stored('m1')), 'duplicate')
  await a.put(stored('m2'))
  const first = a.take(10, 200)
  t.same(first.map((x) => x.s.msg.id), ['m1', 'm2'])
  t.same(a.take(10, 200), [], 'leased messages are not handed out twice')
  await new Promise((r) => setTimeout(r, 250))
  const again = a.take(1, 10000)
  t.same(again.map((x) => [x.s.msg.id, x.deliveries]), [['m1', 2]], 'redelivered after the lease ran out')
  t.equal(await a.ack('m1'), 'acked')
  t.equal(await a.ack('m1'), 'already')
  t.equal(await a.ack('nope'), 'unknown')
  await a.close()
  const b = new Inbox(dir)
  await b.open()
  t.same(b.take(10, 1000).map((x) => x.s.msg.id), ['m2'], 'after restart: only the unacked one')
  t.equal(await b.put(stored('m1')), 'duplicate', 'an acked id is still remembered')
  t.ok(b.conversations.get('tg:1'), 'conversations survive restart')
  await b.close()
})

t.test('inbox: long-poll wakes on a new message', async (t) => {
  const a = new Inbox(tmpdir(t))
  await a.open()
  const started = Date.now()
  const p = a.waitTake(5, 1000, 5000)
  setTimeout(() => void a.put(stored('late')), 100)
  const got = await p
  t.equal(got[0]!.s.msg.id, 'late')
  t.ok(Date.now() - started < 2000)
  await a.close()
})

t.test('outbox: parts and done survive restart; ids dedupe', async (t) => {
  const dir = tmpdir(t)
  const o = new Outbox(dir)
  await o.open()
  const r = { id: 'r1', conversation: 'tg:1', channel: 'tg', text: 'hi', route: { chat: '1' }, created_at: '' }
  t.equal(await o.put(r), 'queued')
  t.equal(await o.put(r), 'duplicate')
  await o.partSent('r1', 0)
  await o.close()
  const o2 = new Outbox(dir)
  await o2.open()
  t.same([...o2.list()[0]!.sent], [0])
  await o2.finish('r1')
  await o2.close()
  const o3 = new Outbox(dir)
  await o3.open()
  t.same(o3.list(), [])
  t.ok(o3.known('r1'))
  await o3.close()
})

t.test('many messages: compaction keeps exactly the live state', async (t) => {
  const dir = tmpdir(t)
  const a = new Inbox(dir)
  await a.open()
  for (let i = 0; i < 1500; i++) {
    await a.put(stored(`k${i}`))
    if (i % 10 !== 0) await a.ack(`k${i}`)
  }
  await new Promise((r) => setTimeout(r, 300))
  await a.close()
  const lines = readFileSync(path.join(dir, 'inbound.log'), 'utf8').trim().split('\n').length
  t.ok(lines < 3000, `log was compacted (${lines} lines for 3000+ records)`)
  const b = new Inbox(dir)
  await b.open()
  t.equal(b.stats().pending, 150)
  t.equal(await b.put(stored('k5')), 'duplicate', 'acked ids remembered across compaction')
  await b.close()
})
