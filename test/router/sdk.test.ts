/**
 * The official openai and @anthropic-ai/sdk clients, pointed at the router with a dummy key,
 * streaming and not. The fake provider must see the real key; the client (every byte it received,
 * via a TCP recorder), the router's logs and its audit trail must never contain it, even when the
 * provider echoes it back in the body, a header, or split across stream chunks.
 */
import t from 'tap'
import OpenAI from 'openai'
import Anthropic from '@anthropic-ai/sdk'
import { FakeProvider } from './fake-provider.js'
import { startRouter, allBytes, REAL_KEY, REAL_ANT_KEY, raw } from './helpers.js'

const oa = await FakeProvider.start({ expectKey: REAL_KEY, name: 'oa' })
const an = await FakeProvider.start({ expectKey: REAL_ANT_KEY, name: 'an' })
const h = await startRouter(`
version: 1
prices:
  up-gpt: { input: 1.0, output: 2.0 }
routes:
  - name: fast
    models: [gpt-fast]
    default: true
    targets:
      - provider: openai
        base_url: ${oa.baseUrl}
        model: up-gpt
        key: { store: openai }
  - name: plain
    models: [gpt-plain]
    targets:
      - { provider: openai-compatible, base_url: ${oa.baseUrl}, model: up-plain, key: { store: openai }, stream_usage: false }
  - name: claude
    models: [claude-x]
    targets:
      - provider: anthropic
        base_url: ${an.baseUrl}
        model: up-claude
        key: { store: anthropic }
`)
t.teardown(async () => {
  await h.close()
  await oa.close()
  await an.close()
})

const openai = new OpenAI({ baseURL: `${h.url}/v1`, apiKey: 'dummy-client-key', maxRetries: 0 })
const anthropic = new Anthropic({ baseURL: h.url, apiKey: 'dummy-client-key', maxRetries: 0 })

t.test('openai chat, not streamed', async (t) => {
  const r = await openai.chat.completions.create({ model: 'gpt-fast', messages: [{ role: 'user', content: 'hi' }] })
  t.equal(r.choices[0]!.message.content, 'hello from oa')
  t.equal(r.usage?.prompt_tokens, 10)
  const seen = oa.requests.at(-1)!
  t.equal(seen.headers.authorization, `Bearer ${REAL_KEY}`, 'provider got the real key')
  t.equal(seen.body.model, 'up-gpt', 'alias rewritten to the upstream model')
  t.notOk(JSON.stringify(seen.headers).includes('dummy-client-key'), 'client key not forwarded')
})

t.test('openai chat, streamed; usage chunk the client did not ask for is filtered', async (t) => {
  const s = await openai.chat.completions.create({ model: 'gpt-fast', messages: [{ role: 'user', content: 'hi' }], stream: true })
  let text = ''
  let chunks = 0
  for await (const c of s) {
    chunks++
    t.ok(c.choices.length > 0, 'every chunk has choices (no injected usage chunk)')
    text += c.choices[0]?.delta?.content ?? ''
  }
  t.equal(text, 'hello from oa')
  t.ok(chunks >= 3)
  t.equal(oa.requests.at(-1)!.body.stream_options?.include_usage, true, 'router asked upstream for usage')
  const a = h.audit().at(-1)!
  t.equal(a.stream, true)
  t.equal(a.tokens_in, 10, 'input tokens from the stream usage')
  t.equal(a.tokens_out, 5)
  t.equal(a.cost_usd, (10 * 1 + 5 * 2) / 1e6)
})

t.test('SSE is passed through as it comes, not buffered', async (t) => {
  const t0 = Date.now()
  const s = await openai.chat.completions.create({ model: 'gpt-fast', messages: [{ role: 'user', content: 'fake:slow' }], stream: true })
  let first = 0
  let n = 0
  for await (const c of s) {
    if (c.choices[0]?.delta?.content && !first) first = Date.now() - t0
    n++
  }
  const total = Date.now() - t0
  t.ok(total >= 900, `the provider took ${total} ms for 40 chunks`)
  t.ok(first < total - 600, `first content after ${first} ms, long before the end (${total} ms)`)
  t.ok(n >= 40)
})

t.test('openai chat streamed with include_usage set by the client keeps the usage chunk', async (t) => {
  const s = await openai.chat.completions.create({ model: 'gpt-fast', messages: [{ role: 'user', content: 'hi' }], stream: true, stream_options: { include_usage: true } })
  let usage: unknown = null
  for await (const c of s) if (c.usage) usage = c.usage
  t.same(usage, { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 })
})

t.test('stream_usage: false leaves the request as the client sent it', async (t) => {
  const s = await openai.chat.completions.create({ model: 'gpt-plain', messages: [{ role: 'user', content: 'hi' }], stream: true })
  for await (const _c of s) {
    /* drain */
  }
  t.equal(oa.requests.at(-1)!.body.stream_options, undefined)
  t.equal(h.audit().at(-1)!.tokens_in, null, 'no usage: tokens unknown')
})

t.test('openai responses API, streamed and not', async (t) => {
  const r = await openai.responses.create({ model: 'gpt-fast', input: 'hi' })
  t.equal(r.output_text, 'hello from oa')
  const s = await openai.responses.create({ model: 'gpt-fast', input: 'hi', stream: true })
  let text = ''
  for await (const e of s) if (e.type === 'response.output_text.delta') text += e.delta
  t.equal(text, 'hello from oa')
  t.equal(h.audit().at(-1)!.tokens_out, 5)
})

t.test('openai embeddings and models', async (t) => {
  const e = await openai.embeddings.create({ model: 'gpt-fast', input: 'x', encoding_format: 'float' })
  t.same(e.data[0]!.embedding, [0.1, 0.2, 0.3])
  const models = []
  for await (const m of openai.models.list()) models.push(m.id)
  t.same(models.sort(), ['claude-x', 'gpt-fast', 'gpt-plain'])
})

t.test('anthropic messages, not streamed', async (t) => {
  const m = await anthropic.messages.create({ model: 'claude-x', max_tokens: 20, messages: [{ role: 'user', content: 'hi' }] })
  t.same(m.content, [{ type: 'text', text: 'hello from an' }])
  const seen = an.requests.at(-1)!
  t.equal(seen.headers['x-api-key'], REAL_ANT_KEY)
  t.match(seen.headers['anthropic-version'], /^\d{4}-\d{2}-\d{2}$/, "the client's anthropic-version is forwarded")
  t.equal(seen.headers.authorization, undefined)
  t.equal(seen.body.model, 'up-claude')
})

t.test('anthropic messages, streamed', async (t) => {
  const s = anthropic.messages.stream({ model: 'claude-x', max_tokens: 20, messages: [{ role: 'user', content: 'hi' }] })
  let text = ''
  s.on('text', (d) => (text += d))
  const final = await s.finalMessage()
  t.equal(text, 'hello from an')
  t.equal(final.usage.output_tokens, 5)
  const a = h.audit().at(-1)!
  t.equal(a.route, 'claude')
  t.equal(a.tokens_in, 10)
  t.equal(a.tokens_out, 5)
  t.equal(a.upstream_model, 'up-claude')
  t.type(a.ttfb_ms, 'number')
})

t.test('the provider echoes the key: redacted in body, headers and stream (split across chunks)', async (t) => {
  const r = await openai.chat.completions.create({ model: 'gpt-fast', messages: [{ role: 'user', content: 'fake:echo' }] })
  const c = r.choices[0]!.message.content!
  t.match(c, /\[REDACTED\]/, 'echoed key replaced')
  t.notOk(c.includes(REAL_KEY))
  const withHdr = await openai.chat.completions.create({ model: 'gpt-fast', messages: [{ role: 'user', content: 'fake:echo' }] }).withResponse()
  t.equal(withHdr.response.headers.get('x-request-id'), 'req-[REDACTED]', 'echoed header value redacted')

  let text = ''
  const s = await openai.chat.completions.create({ model: 'gpt-fast', messages: [{ role: 'user', content: 'fake:echo-split' }], stream: true })
  for await (const ch of s) text += ch.choices[0]?.delta?.content ?? ''
  t.equal(text, 'leak [REDACTED] end', 'a key split across two stream chunks is redacted')

  const as = anthropic.messages.stream({ model: 'claude-x', max_tokens: 5, messages: [{ role: 'user', content: 'fake:echo-split' }] })
  let atext = ''
  as.on('text', (d) => (atext += d))
  await as.finalMessage()
  t.equal(atext, 'leak [REDACTED] end')

  // encoded echoes: base64 at every alignment (a Basic authorization among them) and hex
  const enc = await openai.chat.completions.create({ model: 'gpt-fast', messages: [{ role: 'user', content: 'fake:echo-encoded' }] }).withResponse()
  const encText = enc.data.choices[0]!.message.content!
  const encForms = (s: string) => [Buffer.from(s).toString('base64'), Buffer.from(s).toString('hex')]
  for (const plain of [REAL_KEY, `user:${REAL_KEY}`, `ab${REAL_KEY}!`]) {
    for (const f of encForms(plain)) t.notOk(encText.includes(f), `the key encoded (${f.slice(0, 10)}...) is not in the answer`)
  }
  t.ok(encText.split('[REDACTED]').length - 1 >= 6, 'the six encoded keys (and the raw one in the echoed headers) replaced')
  t.equal(enc.response.headers.get('x-request-id'), 'req-dXNlcjpz[REDACTED]', 'a Basic authorization echoed in a response header is redacted')

  // an upstream 401 that quotes the credential
  oa.opts.expectKey = 'something-else'
  const bad = await raw(`${h.url}/v1/chat/completions`, { body: JSON.stringify({ model: 'gpt-fast', messages: [{ role: 'user', content: 'fake:echo' }] }) })
  oa.opts.expectKey = REAL_KEY
  t.equal(bad.status, 401)
  t.match(JSON.parse(bad.text).error.message, /invalid credential "\[REDACTED\]"/)
})

t.test('no byte the client or the logs received contains a real key', async (t) => {
  await new Promise((r) => setTimeout(r, 50))
  const all = allBytes(h)
  t.ok(all.length > 10_000, `checked ${all.length} bytes`)
  for (const k of [REAL_KEY, REAL_ANT_KEY]) {
    t.notOk(all.includes(k), 'full key absent')
    t.notOk(all.includes(k.slice(0, 20)), 'first half absent')
    t.notOk(all.includes(k.slice(-20)), 'second half absent')
  }
  t.ok(all.includes('[REDACTED]'), 'redaction markers present (the echo really happened)')
  t.ok(oa.requests.some((r) => r.headers.authorization === `Bearer ${REAL_KEY}`))
})
