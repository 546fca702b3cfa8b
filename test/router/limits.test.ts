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
  burst-box: { limits: { spend: { usd: 0.00002, period: day } } }
  tpm-burst: { limits: { tpm: 10000 } }
listeners:
  - { listen: ${dir}/burst.sock, sandbox: burst-box }
  - { listen: ${dir}/tpm-burst.sock, sandbox: tpm-burst }
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

/**
 * Calls made at once: each holds an estimate of its cost while it runs, so a burst cannot take a
 * sandbox past its cap by more than the one call that crosses it (before holds, every call of a
 * burst was admitted against the same unspent budget).
 */
t.test('spend cap: a burst of concurrent calls is admitted only as far as the cap and the calls in flight allow', async (t) => {
  const burst = async (n: number) => {
    fake.failNext({ delayMs: 300 }, n)
    const rs = await Promise.all(Array.from({ length: n }, () => unixPost(`${h.dir}/burst.sock`, '/v1/chat/completions', req)))
    fake.clearQueue() // the delays of calls that never reached the provider
    return rs
  }
  const spent = () => h.router.limiter.snapshot()['burst-box']?.spendUsd ?? 0
  // one call costs $0.000015 (15 tokens at $1/M); each holds ~$0.0041 (4096 output tokens: it names no maximum)
  const first = await burst(10)
  t.equal(first.filter((r) => r.status === 200).length, 1, 'one call of the burst runs')
  const held = first.filter((r) => r.status === 429)
  t.equal(held.length, 9, 'the other nine are refused while it is in flight')
  t.ok(held.every((r) => r.json.error.type === 'rate_limit_exceeded' && r.headers['retry-after'] === '1'), '429 rate_limit_exceeded, Retry-After 1')
  t.match(held[0]!.json.error.message, /spend cap for sandbox burst-box: \$0\.0000 spent and up to \$0\.004\d held by 1 call in flight, of \$0\.00002 this day; retry when they have finished/)
  t.equal(spent(), 0.000015, 'the sandbox spent what one call costs')
  // under the cap still: the next burst's first call crosses it, the rest wait for it
  const second = await burst(5)
  t.equal(second.filter((r) => r.status === 200).length, 1, 'under the cap, one call of the next burst runs')
  t.ok(Math.abs(spent() - 0.00003) < 1e-12, 'and takes the sandbox past the cap by that one call only')
  const third = await burst(5)
  t.ok(third.every((r) => r.status === 429 && r.json.error.code === 'insufficient_quota'), 'over the cap: every call is refused as over budget')
})

t.test('tpm: concurrent calls hold their input estimate and declared max_tokens', async (t) => {
  const { holdFor } = await import('../../lib/router/server.js')
  const body = { ...req, max_tokens: 3000 }
  const hold = holdFor(JSON.stringify(body).length, body, '/chat/completions', undefined)
  t.equal(hold.tokens, Math.ceil(JSON.stringify(body).length / 4) + 3000, 'bytes / 4 for the input, max_tokens for the output')
  // tpm 10000: admitted while the tokens held by the calls in flight stay under it
  let expect = 0
  while (expect * hold.tokens < 10000) expect++
  fake.failNext({ delayMs: 300 }, 8)
  const rs = await Promise.all(Array.from({ length: 8 }, () => unixPost(`${h.dir}/tpm-burst.sock`, '/v1/chat/completions', body)))
  fake.clearQueue()
  t.equal(rs.filter((r) => r.status === 200).length, expect, `${expect} of 8 run at once (each holds ${hold.tokens} tokens)`)
  t.match(rs.find((r) => r.status === 429)!.json.error.message, new RegExp(`token rate limit for sandbox tpm-burst: 0 tokens used in the last minute and up to ${expect * hold.tokens} held by ${expect} calls in flight, of 10000`))
  // once they are done, only their real usage counts
  t.equal(h.router.limiter.snapshot()['tpm-burst']!.tpmUsed, expect * 15, 'the real usage of the calls that ran')
  t.equal((await unixPost(`${h.dir}/tpm-burst.sock`, '/v1/chat/completions', body)).status, 200, 'and a call after them runs')
  const failed = await unixPost(`${h.dir}/tpm-burst.sock`, '/v1/chat/completions', { ...body, messages: [{ role: 'user', content: 'fake:status=500' }] })
  t.ok(failed.status >= 500, `a failing call (${failed.status})`)
  t.equal(h.router.limiter.snapshot()['tpm-burst']!.tpmUsed, (expect + 1) * 15, 'holds nothing once it has failed')
  t.same(hold.held, undefined, 'holdFor only estimates')
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

t.test('limiter holds with a fake clock: in flight counts until released or recorded, once', async (t) => {
  const { Limiter } = await import('../../lib/router/limits.js')
  const now = Date.UTC(2026, 0, 5, 12, 0, 0)
  const l = new Limiter(null, () => now)
  const lim = { spend: { usd: 1, period: 'hour' as const } }
  const h1 = { tokens: 100, usd: 0.6 }
  const h2 = { tokens: 100, usd: 0.6 }
  t.equal(l.admit('a', lim, h1), null, 'the first call: nothing used, nothing in flight')
  t.equal(h1.held, true)
  t.equal(l.admit('a', lim, h2), null, '$0.60 held is under $1')
  const r = l.admit('a', lim, { tokens: 1, usd: 0.01 })!
  t.equal(r.kind, 'rate_limit', '$1.20 held: refused, not over budget')
  t.equal(r.retryAfterS, 1)
  t.match(r.message, /\$0\.0000 spent and up to \$1\.2000 held by 2 calls in flight, of \$1 this hour/)
  l.release('a', h1)
  l.release('a', h1)
  t.equal(h1.held, false, 'released once; a second release changes nothing')
  t.equal(l.admit('a', lim, { tokens: 1, usd: 0.01 }), null, 'with one call in flight there is room again')
  l.record('a', lim, 50, 0.3, h2)
  t.equal(h2.held, false, 'record() ends the hold')
  t.equal(l.snapshot().a!.spendUsd, 0.3, 'and counts what the call really cost')
  t.equal(l.admit('b', lim, { tokens: 1, usd: 5 }), null, 'a call whose own estimate is over the cap runs when nothing else is in flight')
  t.ok(l.admit('b', lim, { tokens: 1, usd: 0 }), 'and holds the sandbox until it ends')
  const rpmOnly = { tokens: 1, usd: 1 }
  t.equal(l.admit('c', { rpm: 10 }, rpmOnly), null)
  t.equal(rpmOnly.held, undefined, 'no hold under a requests-only limit')
})
