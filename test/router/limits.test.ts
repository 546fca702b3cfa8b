/**
 * Per-sandbox limits: requests per minute, tokens per minute and a spend cap, each answering 429
 * with Retry-After in the API's own format; sandboxes are told apart by the listener they came in
 * on (one unix socket each) and by mapped source address; counters survive a restart (--state).
 */
import t from 'tap'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FakeProvider } from './fake-provider.js'
import { startRouter, unixPost, raw, REAL_KEY } from './helpers.js'

const fake = await FakeProvider.start({ expectKey: REAL_KEY, usage: { input: 10, output: 5 } })
const stateDir = mkdtempSync(join(tmpdir(), 'cordon-router-state-'))
const config = (dir: string) => `
prices:
  m1: { input: 1.0, output: 1.0 }
sandboxes:
  rpm-box: { limits: { rpm: 3 } }
  tpm-box: { limits: { tpm: 20 } }
  spend-box: { limits: { spend: { usd: 0.00002, period: day } } }
  local: { addresses: [127.0.0.1/32, "::1"], limits: { rpm: 1000 } }
listeners:
  - { listen: ${dir}/rpm.sock, sandbox: rpm-box }
  - { listen: ${dir}/tpm.sock, sandbox: tpm-box }
  - { listen: ${dir}/spend.sock, sandbox: spend-box }
  - { listen: ${dir}/gate.sock, identity_header: x-cordon-sandbox }
routes:
  - name: fast
    models: [gpt-fast]
    targets: [{ provider: openai, base_url: ${fake.baseUrl}, model: m1, key: { store: openai } }]
  - name: claude
    models: [claude-x]
    targets: [{ provider: anthropic, base_url: ${fake.baseUrl}, model: m1, key: { store: openai }, auth: bearer }]
`
let h = await startRouter(config, { state: stateDir })
t.teardown(async () => {
  await h.close()
  await fake.close()
  rmSync(stateDir, { recursive: true, force: true })
})
const req = { model: 'gpt-fast', messages: [{ role: 'user', content: 'hi' }] }

t.test('rpm: the 4th request in a minute gets 429 + Retry-After, per sandbox', async (t) => {
  for (let i = 0; i < 3; i++) t.equal((await unixPost(`${h.dir}/rpm.sock`, '/v1/chat/completions', req)).status, 200)
  const r = await unixPost(`${h.dir}/rpm.sock`, '/v1/chat/completions', req)
  t.equal(r.status, 429)
  const ra = Number(r.headers['retry-after'])
  t.ok(ra >= 1 && ra <= 60, `Retry-After ${ra}`)
  t.equal(r.json.error.type, 'rate_limit_exceeded')
  t.match(r.json.error.message, /rate limit for sandbox rpm-box: 3 requests per minute/)
  const a = await unixPost(`${h.dir}/rpm.sock`, '/v1/messages', { model: 'claude-x', max_tokens: 5, messages: [] }, { 'anthropic-version': '2023-06-01' })
  t.equal(a.status, 429)
  t.same(a.json.type, 'error')
  t.equal(a.json.error.type, 'rate_limit_error', 'anthropic shape')
  // another sandbox is not affected
  t.equal((await raw(`${h.url}/v1/chat/completions`, { body: JSON.stringify(req) })).status, 200)
  t.equal(h.audit().filter((x) => x.sandbox === 'local').length >= 1, true, 'loopback mapped to sandbox "local" by address')
})

t.test('tpm counts tokens from usage', async (t) => {
  t.equal((await unixPost(`${h.dir}/tpm.sock`, '/v1/chat/completions', req)).status, 200) // 15 used
  t.equal((await unixPost(`${h.dir}/tpm.sock`, '/v1/chat/completions', req)).status, 200) // 30 used
  const r = await unixPost(`${h.dir}/tpm.sock`, '/v1/chat/completions', req)
  t.equal(r.status, 429)
  t.match(r.json.error.message, /token rate limit for sandbox tpm-box: 30 of 20 tokens/)
})

t.test('spend cap from the price table', async (t) => {
  t.equal((await unixPost(`${h.dir}/spend.sock`, '/v1/chat/completions', req)).status, 200) // $0.000015
  t.equal((await unixPost(`${h.dir}/spend.sock`, '/v1/chat/completions', req)).status, 200) // $0.00003
  const r = await unixPost(`${h.dir}/spend.sock`, '/v1/chat/completions', req)
  t.equal(r.status, 429)
  t.equal(r.json.error.code, 'insufficient_quota')
  t.match(r.json.error.message, /spend cap reached for sandbox spend-box/)
  const ra = Number(r.headers['retry-after'])
  t.ok(ra > 0 && ra <= 86400, 'retry after the period ends')
})

t.test('identity header listener (for the egress gate): required, and limits follow it', async (t) => {
  const none = await unixPost(`${h.dir}/gate.sock`, '/v1/chat/completions', req)
  t.equal(none.status, 403)
  t.match(none.json.error.message, /identifies sandboxes by the x-cordon-sandbox header/)
  const r = await unixPost(`${h.dir}/gate.sock`, '/v1/chat/completions', req, { 'x-cordon-sandbox': 'rpm-box' })
  t.equal(r.status, 429, 'rpm-box is still over its limit through the gate listener')
  t.equal(fake.requests.at(-1)!.headers['x-cordon-sandbox'], undefined, 'identity header not forwarded upstream')
})

t.test('counters survive a restart (--state)', async (t) => {
  const cfgPath = h.configPath
  await h.router.close()
  const { PrivacyRouter } = await import('../../lib/router/index.js')
  const r2 = await PrivacyRouter.start({ config: cfgPath, listen: [], keys: h.keysPath, state: stateDir, logDestination: { write: () => {} }, defaultMetrics: false, watch: false })
  h.router = r2
  const r = await unixPost(`${h.dir}/rpm.sock`, '/v1/chat/completions', req)
  t.equal(r.status, 429, 'rpm-box still limited after restart')
  const s = await unixPost(`${h.dir}/spend.sock`, '/v1/chat/completions', req)
  t.equal(s.status, 429, 'spend-box still over budget after restart')
})

t.test('limiter windows with a fake clock: sliding minute, Retry-After, period reset', async (t) => {
  const { Limiter } = await import('../../lib/router/limits.js')
  let now = Date.UTC(2026, 0, 5, 12, 0, 0, 500)
  const l = new Limiter(null, () => now)
  const lim = { rpm: 2, tpm: 100, spend: { usd: 1, period: 'hour' as const } }
  t.equal(l.admit('a', lim), null)
  now += 10_000
  t.equal(l.admit('a', lim), null)
  const r = l.admit('a', lim)!
  t.equal(r.kind, 'rate_limit')
  t.ok(r.retryAfterS > 49 && r.retryAfterS <= 50, `first request leaves the window in ~50 s (${r.retryAfterS})`)
  now += 50_000
  t.equal(l.admit('a', lim), null, 'the oldest request left the window')
  l.record('a', lim, 150, 0.5)
  now += 1000
  const tr = l.admit('a', { tpm: 100 })!
  t.match(tr.message, /150 of 100 tokens/)
  l.record('a', lim, 0, 0.6)
  now += 60_000
  const sr = l.admit('a', lim)!
  t.equal(sr.kind, 'budget', '$1.10 of $1 this hour')
  now = Date.UTC(2026, 0, 5, 13, 0, 1)
  t.equal(l.admit('a', lim), null, 'a new hour starts a new budget')
  t.equal(l.admit('b', lim), null, 'another sandbox has its own counters')
})
