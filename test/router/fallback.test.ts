/**
 * Fallback chain: on 429, 5xx, connect error and timeout the next target serves the request;
 * never after a stream began (the client gets an in-band error instead of a spliced answer);
 * a client that disconnects cancels the upstream request.
 */
import t from 'tap'
import OpenAI from 'openai'
import Anthropic from '@anthropic-ai/sdk'
import net from 'node:net'
import { gzipSync } from 'node:zlib'
import { FakeProvider } from './fake-provider.js'
import { startRouter, sleep, REAL_KEY } from './helpers.js'

const a = await FakeProvider.start({ expectKey: REAL_KEY, name: 'a' })
const b = await FakeProvider.start({ expectKey: REAL_KEY, name: 'b' })
// a port with nothing listening: connect error
const dead = net.createServer()
await new Promise<void>((r) => dead.listen(0, '127.0.0.1', () => r()))
const deadPort = (dead.address() as net.AddressInfo).port
await new Promise<void>((r) => dead.close(() => r()))

const h = await startRouter(`
routes:
  - name: chain
    models: [m]
    targets:
      - { provider: openai, base_url: ${a.baseUrl}, model: a-model, key: { store: openai }, timeout_ms: 400 }
      - { provider: openai, base_url: ${b.baseUrl}, model: b-model, key: { store: openai } }
  - name: dead-first
    models: [d]
    targets:
      - { provider: openai, base_url: http://127.0.0.1:${deadPort}/v1, model: x, key: { store: openai } }
      - { provider: openai, base_url: ${b.baseUrl}, model: b-model, key: { store: openai } }
  - name: only-5xx
    models: [s]
    fallback_on: [5xx]
    targets:
      - { provider: openai, base_url: ${a.baseUrl}, model: a-model, key: { store: openai } }
      - { provider: openai, base_url: ${b.baseUrl}, model: b-model, key: { store: openai } }
  - name: ant
    models: [c]
    targets:
      - { provider: anthropic, base_url: ${a.baseUrl}, model: a-model, key: { store: openai }, auth: bearer }
      - { provider: anthropic, base_url: ${b.baseUrl}, model: b-model, key: { store: openai }, auth: bearer }
`)
t.teardown(async () => {
  await h.close()
  await a.close()
  await b.close()
})
const openai = new OpenAI({ baseURL: `${h.url}/v1`, apiKey: 'dummy', maxRetries: 0 })
const ask = (model = 'm', content = 'hi') => openai.chat.completions.create({ model, messages: [{ role: 'user', content }] })

for (const status of [429, 500, 503]) {
  t.test(`fallback on ${status}`, async (t) => {
    a.failNext({ status })
    const r = await ask()
    t.equal(r.choices[0]!.message.content, 'hello from b')
    t.equal(b.requests.at(-1)!.body.model, 'b-model', 'second target gets its own upstream model')
    const rec = h.audit().at(-1)!
    t.same(rec.fallback, [{ target: 'chain[0] openai/a-model', reason: status === 429 ? '429' : '5xx', status }])
    t.equal(rec.target, 'chain[1] openai/b-model')
    t.equal(rec.status, 200)
  })
}

t.test('fallback on timeout (no response headers within timeout_ms)', async (t) => {
  a.failNext({ hang: true })
  const t0 = Date.now()
  const r = await ask()
  t.equal(r.choices[0]!.message.content, 'hello from b')
  t.ok(Date.now() - t0 >= 350, 'waited for the timeout')
  t.equal(h.audit().at(-1)!.fallback[0].reason, 'timeout')
})

t.test('fallback on connect error', async (t) => {
  const r = await ask('d')
  t.equal(r.choices[0]!.message.content, 'hello from b')
  t.equal(h.audit().at(-1)!.fallback[0].reason, 'connect')
})

t.test('fallback_on limits the conditions; the last target error is passed through', async (t) => {
  a.failNext({ status: 429 })
  const e = await ask('s').catch((e) => e)
  t.equal(e.status, 429, '429 not in fallback_on: returned as is')
  t.match(e.message, /fake a: failing on command with 429/)
  a.failNext({ status: 500 })
  b.failNext({ status: 502 })
  const e2 = await ask('s').catch((e) => e)
  t.equal(e2.status, 502, "the last target's own error goes back")
})

t.test('every target times out or fails: a clear 504/502 in the API format', async (t) => {
  a.failNext({ hang: true })
  b.failNext({ dropConnection: true })
  const e = await ask().catch((e) => e)
  t.equal(e.status, 502)
  t.match(e.message, /tried chain\[0\] openai\/a-model: timeout; chain\[1\] openai\/b-model: connect/)
})

t.test('no fallback after the stream began: in-band error, no answer from b spliced in', async (t) => {
  const bBefore = b.requests.length
  const s = await openai.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'fake:die' }], stream: true })
  let text = ''
  const err = await (async () => {
    for await (const c of s) text += c.choices[0]?.delta?.content ?? ''
  })().catch((e) => e)
  t.ok(err, 'the client sees the stream fail')
  t.match(String(err?.message), /upstream stream failed after it began/)
  t.equal(text, 'hello from ', 'got the part a sent before it died')
  t.equal(b.requests.length, bBefore, 'b was never asked')
  const rec = h.audit().at(-1)!
  t.equal(rec.fallback.length, 0)
  t.match(rec.error, /stream broke after it began/)

  const anthropic = new Anthropic({ baseURL: h.url, apiKey: 'dummy', maxRetries: 0 })
  const as = anthropic.messages.stream({ model: 'c', max_tokens: 5, messages: [{ role: 'user', content: 'fake:die' }] })
  const aerr = await as.finalMessage().catch((e) => e)
  t.ok(aerr instanceof Error, 'anthropic client sees an error event')
  t.equal(b.requests.length, bBefore)
})

t.test('client disconnect cancels the upstream stream', async (t) => {
  const before = a.abortedStreams
  const ac = new AbortController()
  const s = await openai.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'fake:slow' }], stream: true }, { signal: ac.signal })
  let n = 0
  await (async () => {
    for await (const _c of s) {
      if (++n === 3) ac.abort()
    }
  })().catch(() => {})
  for (let i = 0; i < 40 && a.abortedStreams === before; i++) await sleep(25)
  t.equal(a.abortedStreams, before + 1, 'the provider saw its stream cancelled')
  await sleep(50)
  t.equal(h.audit().at(-1)!.client_aborted, true, 'audited as client_aborted')
})

t.test('a non-streamed answer whose body stalls after the headers falls back on timeout', async (t) => {
  const closed = new Promise((r) => a.once('stalled-closed', r))
  a.failNext({ stallBody: true })
  const t0 = Date.now()
  const r = await ask()
  t.equal(r.choices[0]!.message.content, 'hello from b', 'the next target answered')
  t.ok(Date.now() - t0 >= 350, 'after the body timeout of the first target')
  const rec = h.audit().at(-1)!
  t.same(rec.fallback, [{ target: 'chain[0] openai/a-model', reason: 'timeout' }])
  t.equal(rec.target, 'chain[1] openai/b-model')
  t.ok(await Promise.race([closed.then(() => true), sleep(2000).then(() => false)]), 'the stalled upstream connection was closed')
})

t.test('a client that gives up on a slow non-streamed call cancels it upstream', async (t) => {
  const closed = new Promise((r) => a.once('hung-closed', r))
  const ac = new AbortController()
  const p = openai.chat.completions.create({ model: 's', messages: [{ role: 'user', content: 'fake:hang' }] }, { signal: ac.signal }).catch((e) => e)
  await sleep(100)
  ac.abort()
  await p
  const ok = await Promise.race([closed.then(() => true), sleep(2000).then(() => false)])
  t.ok(ok, 'upstream connection closed')
})

t.test('redirects are never followed; Location never reaches the client', async (t) => {
  const before = b.requests.length
  a.failNext({ status: 307, body: {}, headers: { location: `${b.baseUrl}/chat/completions?key=${REAL_KEY}` } })
  const r = await fetch(`${h.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'm', messages: [] }), redirect: 'manual' })
  t.equal(r.status, 502)
  t.equal(r.headers.get('location'), null)
  const j = await r.json()
  t.match(j.error.message, /answered with a redirect \(307\); the router does not follow redirects/)
  t.equal(b.requests.length, before, 'the redirect target was not called')
})

t.test('an upstream that gzips anyway is decoded, so redaction still applies', async (t) => {
  const body = { id: 'x', object: 'chat.completion', created: 0, model: 'a', choices: [{ index: 0, message: { role: 'assistant', content: `k=${REAL_KEY}` }, finish_reason: 'stop' }], usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 } }
  a.failNext({ status: 200, raw: gzipSync(JSON.stringify(body)), headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' } })
  const r = await ask()
  t.equal(r.choices[0]!.message.content, 'k=[REDACTED]')
  t.equal(h.audit().at(-1)!.tokens_out, 4)
})
