/**
 * Bad requests get clear errors in the API's own format (OpenAI or Anthropic shape): malformed
 * JSON, huge bodies, unknown model, unknown path, wrong API for a route, and a route without a key
 * (a message an agent can relay to its operator). Client credentials never reach the provider.
 */
import t from 'tap'
import OpenAI from 'openai'
import Anthropic from '@anthropic-ai/sdk'
import { FakeProvider } from './fake-provider.js'
import { startRouter, raw, REAL_KEY } from './helpers.js'

const fake = await FakeProvider.start({ expectKey: REAL_KEY })
const h = await startRouter(`
max_body_bytes: 65536
routes:
  - name: fast
    models: [gpt-fast]
    targets:
      - { provider: openai, base_url: ${fake.baseUrl}, model: m1, key: { store: openai } }
  - name: claude
    models: [claude-x]
    targets:
      - { provider: anthropic, base_url: ${fake.baseUrl}, model: m2, key: { store: anthropic-missing } }
  - name: local
    models: [llama]
    targets:
      - { provider: openai-compatible, base_url: ${fake.baseUrl}, model: m3, key: { env: CORDON_TEST_UNSET_VAR } }
`)
t.teardown(async () => {
  await h.close()
  await fake.close()
})
const chat = `${h.url}/v1/chat/completions`
const msgs = `${h.url}/v1/messages`

t.test('malformed JSON', async (t) => {
  const o = await raw(chat, { body: '{"model": "gpt-fast", ' })
  t.equal(o.status, 400)
  const ob = JSON.parse(o.text)
  t.equal(ob.error.type, 'invalid_request_error')
  t.match(ob.error.message, /not valid JSON/)
  const a = await raw(msgs, { body: '{nope', headers: { 'anthropic-version': '2023-06-01' } })
  t.equal(a.status, 400)
  t.same(Object.keys(JSON.parse(a.text)), ['type', 'error'], 'anthropic error shape')
  t.equal(JSON.parse(a.text).error.type, 'invalid_request_error')
})

t.test('huge body: 413 before it reaches the provider', async (t) => {
  const before = fake.requests.length
  const big = JSON.stringify({ model: 'gpt-fast', messages: [{ role: 'user', content: 'x'.repeat(200_000) }] })
  const o = await raw(chat, { body: big })
  t.equal(o.status, 413)
  t.match(JSON.parse(o.text).error.message, /exceeds the router's limit of 65536 bytes \(max_body_bytes/)
  // through the SDK
  const openai = new OpenAI({ baseURL: `${h.url}/v1`, apiKey: 'x', maxRetries: 0 })
  const e = await openai.chat.completions.create({ model: 'gpt-fast', messages: [{ role: 'user', content: 'y'.repeat(100_000) }] }).catch((e) => e)
  t.equal(e?.status, 413, 'the SDK sees a 413')
  // chunked, no content-length: cut off while reading
  const http = await import('node:http')
  const status = await new Promise<number>((resolve, reject) => {
    const r = http.request(`${h.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'transfer-encoding': 'chunked' } }, (res) => {
      res.resume()
      resolve(res.statusCode ?? 0)
    })
    r.on('error', reject)
    r.write('{"model":"gpt-fast","messages":[{"role":"user","content":"')
    for (let i = 0; i < 20; i++) r.write('z'.repeat(8192))
    r.end('"}]}')
  })
  t.equal(status, 413, 'chunked body over the limit')
  t.equal(fake.requests.length, before, 'nothing forwarded')
})

t.test('unknown model, with the list of models', async (t) => {
  const openai = new OpenAI({ baseURL: `${h.url}/v1`, apiKey: 'x', maxRetries: 0 })
  const e = await openai.chat.completions.create({ model: 'gpt-nope', messages: [] }).catch((e) => e)
  t.ok(e instanceof OpenAI.NotFoundError, 'SDK surfaces a NotFoundError')
  t.match(e.message, /model "gpt-nope" is not served by this router; available models: gpt-fast, claude-x, llama/)
  const anthropic = new Anthropic({ baseURL: h.url, apiKey: 'x', maxRetries: 0 })
  const ae = await anthropic.messages.create({ model: 'claude-nope', max_tokens: 5, messages: [{ role: 'user', content: 'hi' }] }).catch((e) => e)
  t.ok(ae instanceof Anthropic.NotFoundError)
  t.equal(ae.error?.error?.type, 'not_found_error')
})

t.test('unknown path and wrong method', async (t) => {
  const o = await raw(`${h.url}/v1/fine_tuning/jobs`, { body: '{}' })
  t.equal(o.status, 404)
  t.match(JSON.parse(o.text).error.message, /unknown path POST \/v1\/fine_tuning\/jobs/)
  const g = await raw(chat, { method: 'GET' })
  t.equal(g.status, 404)
  t.match(JSON.parse(g.text).error.message, /accepts POST only/)
})

t.test('a route speaks one API: calling it through the other is a clear 400', async (t) => {
  const o = await raw(chat, { body: JSON.stringify({ model: 'claude-x', messages: [] }) })
  t.equal(o.status, 400)
  t.match(JSON.parse(o.text).error.message, /speaks the anthropic API; call POST \/v1\/messages/)
})

t.test('no key configured: an error the agent can relay', async (t) => {
  const anthropic = new Anthropic({ baseURL: h.url, apiKey: 'x', maxRetries: 0 })
  const e = await anthropic.messages.create({ model: 'claude-x', max_tokens: 5, messages: [{ role: 'user', content: 'hi' }] }).catch((e) => e)
  t.equal(e.status, 401)
  t.equal(e.error.error.type, 'authentication_error')
  t.match(e.error.error.message, /no API key set for route claude: run `cordon keys set anthropic-missing`/)
  const o = await raw(chat, { body: JSON.stringify({ model: 'llama', messages: [] }) })
  t.equal(o.status, 401)
  t.equal(o.headers.get('x-should-retry'), 'false')
  t.equal(o.headers.get('retry-after'), null, 'no Retry-After: nothing changes by waiting')
  t.match(JSON.parse(o.text).error.message, /no API key set for route local: set CORDON_TEST_UNSET_VAR in the router's environment/)
  t.equal(JSON.parse(o.text).error.code, 'no_api_key')
})

t.test('no key: the official clients with their default retries fail fast, one request each', async (t) => {
  const count = (route: string) => h.audit().filter((r) => r.route === route).length
  const before = count('local')
  const openai = new OpenAI({ baseURL: `${h.url}/v1`, apiKey: 'x' }) // default maxRetries (2)
  const t0 = Date.now()
  const e = await openai.chat.completions.create({ model: 'llama', messages: [{ role: 'user', content: 'hi' }] }).catch((e) => e)
  const ms = Date.now() - t0
  t.ok(e instanceof OpenAI.AuthenticationError, `openai raises AuthenticationError (got ${e?.constructor?.name} ${e?.status})`)
  t.match(e.message, /no API key set for route local: set CORDON_TEST_UNSET_VAR/)
  t.equal(count('local') - before, 1, 'exactly one request reached the router (no SDK retries)')
  t.ok(ms < 1000, `failed in ${ms} ms`)
  const beforeA = count('claude')
  const anthropic = new Anthropic({ baseURL: h.url, apiKey: 'x' }) // default maxRetries (2)
  const ea = await anthropic.messages.create({ model: 'claude-x', max_tokens: 5, messages: [{ role: 'user', content: 'hi' }] }).catch((e) => e)
  t.ok(ea instanceof Anthropic.AuthenticationError, `anthropic raises AuthenticationError (got ${ea?.constructor?.name} ${ea?.status})`)
  t.equal(count('claude') - beforeA, 1, 'exactly one request reached the router (no SDK retries)')
})

t.test('client credentials and cookies are dropped; default anthropic-version added', async (t) => {
  await raw(chat, {
    body: JSON.stringify({ model: 'gpt-fast', messages: [] }),
    headers: { authorization: 'Bearer client-secret', 'x-api-key': 'client-secret', 'api-key': 'client-secret', cookie: 'a=client-secret', 'proxy-authorization': 'Basic client-secret', 'openai-organization': 'client-secret', 'x-cordon-sandbox': 'spoof' },
  })
  const seen = fake.requests.at(-1)!
  t.equal(seen.headers.authorization, `Bearer ${REAL_KEY}`)
  t.notOk(JSON.stringify(seen.headers).includes('client-secret'), 'no client credential forwarded')
  t.equal(seen.headers['x-cordon-sandbox'], undefined)
})

t.test('models list in both shapes, without calling upstream', async (t) => {
  const before = fake.requests.length
  const o = await raw(`${h.url}/v1/models`, { method: 'GET' })
  t.equal(JSON.parse(o.text).object, 'list')
  const a = await raw(`${h.url}/v1/models`, { method: 'GET', headers: { 'anthropic-version': '2023-06-01' } })
  t.equal(JSON.parse(a.text).has_more, false)
  t.equal(JSON.parse(a.text).data[0].type, 'model')
  t.equal(fake.requests.length, before)
})

t.test('absolute-form request line (as an HTTP proxy may pass it on)', async (t) => {
  const net = await import('node:net')
  const u = new URL(h.url)
  const body = JSON.stringify({ model: 'gpt-fast', messages: [] })
  const answer = await new Promise<string>((resolve, reject) => {
    const s = net.connect(Number(u.port), u.hostname, () => {
      s.write(`POST http://inference.local/v1/chat/completions HTTP/1.1\r\nHost: inference.local\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`)
    })
    let out = ''
    s.on('data', (d) => (out += d))
    s.on('end', () => resolve(out))
    s.on('error', reject)
  })
  t.match(answer, /^HTTP\/1\.1 200/)
  t.match(answer, /hello from fake/)
})
