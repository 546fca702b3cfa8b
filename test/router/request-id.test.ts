/**
 * `x-cordon-request-id`: the agent's id for a call is logged as request_id by the router (log
 * line and audit record) so both sides' logs join, and it never reaches the provider.
 */
import t from 'tap'
import OpenAI from 'openai'
import { FakeProvider } from './fake-provider.js'
import { startRouter, raw, REAL_KEY } from './helpers.js'

const fake = await FakeProvider.start({ expectKey: REAL_KEY })
const h = await startRouter(
  `
routes:
  - name: fast
    models: [gpt-fast]
    targets:
      - { provider: openai, base_url: ${fake.baseUrl}, model: m1, key: { store: openai } }
`,
  { logLevel: 'debug' },
)
t.teardown(async () => {
  await h.close()
  await fake.close()
})

const logLines = () => h.logs.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l))

t.test('a successful call: audit and log carry request_id, the provider never sees the header', async (t) => {
  const openai = new OpenAI({ baseURL: `${h.url}/v1`, apiKey: 'x', maxRetries: 0 })
  const rid = 'req-7d1e4c2a-ok'
  const r = await openai.chat.completions.create({ model: 'gpt-fast', messages: [{ role: 'user', content: 'hi' }] }, { headers: { 'x-cordon-request-id': rid } })
  t.ok(r.choices.length, 'answered')
  const up = fake.requests.at(-1)!
  t.notOk('x-cordon-request-id' in up.headers, 'the provider did not receive x-cordon-request-id')
  t.notOk(JSON.stringify(up).includes(rid), 'the id appears nowhere in what the provider received')
  const a = h.audit().find((x) => x.request_id === rid)
  t.ok(a, 'audit record has request_id')
  t.equal(a?.status, 200)
  t.ok(logLines().some((l) => l.request_id === rid && l.status === 200), 'a log line has request_id')
})

t.test('a failed call: its log line and audit record carry request_id', async (t) => {
  const rid = 'req-unknown-model-42'
  const o = await raw(`${h.url}/v1/chat/completions`, { body: JSON.stringify({ model: 'nope', messages: [] }), headers: { 'x-cordon-request-id': rid } })
  t.equal(o.status, 404)
  t.equal(h.audit().find((x) => x.request_id === rid)?.status, 404)
  t.ok(logLines().some((l) => l.request_id === rid && l.level === 30 && l.status === 404), 'info line for the failure has request_id')
})

t.test('the id is bounded and printable; absent when the client sends none', async (t) => {
  await raw(`${h.url}/v1/chat/completions`, { body: JSON.stringify({ model: 'gpt-fast', messages: [] }), headers: { 'x-cordon-request-id': 'a'.repeat(500) } })
  t.equal(h.audit().at(-1)?.request_id, 'a'.repeat(128))
  await raw(`${h.url}/v1/chat/completions`, { body: JSON.stringify({ model: 'gpt-fast', messages: [] }) })
  t.notOk('request_id' in h.audit().at(-1)!, 'no request_id without the header')
})
