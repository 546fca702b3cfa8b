/**
 * Hot reload: editing router.yaml swaps routes, limits and keys without a restart; a stream in
 * flight finishes on the old route; an invalid config is rejected with file:line and the old one
 * stays; the control socket reloads on demand, serves /metrics and /status (no keys in it).
 */
import t from 'tap'
import OpenAI from 'openai'
import { statSync } from 'node:fs'
import { FakeProvider } from './fake-provider.js'
import { startRouter, control, sleep, allBytes, REAL_KEY } from './helpers.js'
import { setKey } from '../../lib/router/keys.js'

const a = await FakeProvider.start({ name: 'a' })
const b = await FakeProvider.start({ name: 'b' })
const cfg = (target: FakeProvider, extra = '') => `
routes:
  - name: main
    models: [m]
    targets:
      - { provider: openai, base_url: ${target.baseUrl}, model: ${target.name}-model, key: { store: openai } }
${extra}`
const h = await startRouter(cfg(a))
t.teardown(async () => {
  await h.close()
  await a.close()
  await b.close()
})
const openai = new OpenAI({ baseURL: `${h.url}/v1`, apiKey: 'dummy', maxRetries: 0 })
const ask = async () => (await openai.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'hi' }] })).choices[0]!.message.content

async function waitFor(cond: () => boolean | Promise<boolean>, ms = 3000): Promise<boolean> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await cond()) return true
    await sleep(25)
  }
  return false
}

t.test('control socket is private (0600) and serves status without keys', async (t) => {
  t.equal(statSync(h.controlPath).mode & 0o777, 0o600)
  const s = await control(h.controlPath, 'GET', '/status')
  t.equal(s.status, 200)
  const j = JSON.parse(s.body)
  t.equal(j.routes[0].targets[0].key.set, true)
  t.match(j.routes[0].targets[0].key.fingerprint, /^sha256:[0-9a-f]{12}$/)
  t.notOk(s.body.includes(REAL_KEY))
})

t.test('a stream in flight finishes on the old route while new requests use the new one', async (t) => {
  t.equal(await ask(), 'hello from a')
  const s = await openai.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'fake:slow' }], stream: true })
  let text = ''
  let swapped = false
  let during = ''
  for await (const c of s) {
    text += c.choices[0]?.delta?.content ?? ''
    if (!swapped && text.length > 5) {
      swapped = true
      h.writeConfig(cfg(b))
      t.ok(await waitFor(async () => (await ask()) === 'hello from b'), 'file watch applied the new route')
      during = text
    }
  }
  t.ok(during.length < text.length, 'the stream continued after the swap')
  t.match(text, /^w0 w1 .* w39 $/, 'the old stream completed, all 40 chunks from a')
  t.equal(a.completedStreams >= 1, true)
  t.equal(await ask(), 'hello from b')
})

t.test('an invalid config is rejected with file:line; the old one stays', async (t) => {
  h.writeConfig(cfg(a).replace('model: a-model', 'modle: a-model'))
  const r = await control(h.controlPath, 'POST', '/reload')
  t.equal(r.status, 422)
  const j = JSON.parse(r.body)
  t.equal(j.ok, false)
  t.match(j.error, /router\.yaml:6:\d+: .*unknown field "modle"/)
  t.match(j.error, /missing required field "model"/)
  t.equal(await ask(), 'hello from b', 'still served by the old config')
  t.ok(h.logs.some((l) => l.includes('unknown field')), 'the rejection is logged')
})

t.test('keys rotate on reload; the old key is still redacted afterwards', async (t) => {
  h.writeConfig(cfg(b))
  await control(h.controlPath, 'POST', '/reload')
  const NEW = 'sk-rotated-0123456789abcdef0123456789abcdef'
  setKey(h.keysPath, 'openai', NEW)
  t.ok(await waitFor(async () => (await ask(), b.requests.at(-1)!.headers.authorization === `Bearer ${NEW}`)), 'new key in use after the store changed')
  // b echoes whatever credential it got plus we make it echo the old key too
  const old = REAL_KEY
  b.opts.answer = `old=${old}`
  const txt = await ask()
  b.opts.answer = undefined
  t.equal(txt, 'old=[REDACTED]', 'a rotated-out key stays redacted')
  t.notOk(allBytes(h).includes(NEW))
})

t.test('metrics on the control socket', async (t) => {
  const m = await control(h.controlPath, 'GET', '/metrics')
  t.equal(m.status, 200)
  t.match(m.body, /cordon_router_requests_total\{route="main",sandbox="addr:127\.0\.0\.1",status="200"\} \d+/)
  t.match(m.body, /cordon_router_config_reloads_total\{result="rejected"\} [1-9]/)
  t.match(m.body, /cordon_router_ttfb_seconds_bucket/)
  t.match(m.body, /cordon_router_tokens_total\{route="main",sandbox="addr:127\.0\.0\.1",direction="in"\}/)
  const u = await control(h.controlPath, 'GET', '/nope')
  t.equal(u.status, 404)
})
