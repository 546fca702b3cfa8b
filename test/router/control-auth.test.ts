/**
 * The control listener on TCP (HOST:PORT) requires a bearer token: the router refuses to open it
 * without one, and without the token nothing but a bare liveness answer comes back (no status,
 * no metrics, no reload). The operator's own commands (`cordon router status`) pass the token.
 */
import t from 'tap'
import http from 'node:http'
import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { PrivacyRouter } from '../../lib/router/index.js'
import { sleep, writeSecretFile } from './helpers.js'

const here = dirname(fileURLToPath(import.meta.url))
const entry = join(here, 'cli-entry.ts')
const dir = mkdtempSync(join(tmpdir(), 'cordon-router-ctl-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))
const cfgPath = join(dir, 'router.yaml')
const cfg = (name: string) => `routes:\n  - name: ${name}\n    default: true\n    targets: [{ provider: openai-compatible, base_url: "http://127.0.0.1:9/v1", model: m, auth: none }]\n`
writeFileSync(cfgPath, cfg('first'))
const TOKEN = 'ctl-3f0c8a9e1b2d4c6e8f0a1b3c5d7e9f11'
const quiet = { write: () => true }

function req(addr: string, method: string, path: string, auth?: string): Promise<{ status: number; body: string; headers: http.IncomingHttpHeaders }> {
  const i = addr.lastIndexOf(':')
  return new Promise((resolve, reject) => {
    const r = http.request({ host: addr.slice(0, i), port: Number(addr.slice(i + 1)), method, path, headers: auth ? { authorization: auth } : {} }, (res) => {
      let b = ''
      res.on('data', (c) => (b += c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: b, headers: res.headers }))
    })
    r.on('error', reject)
    r.end()
  })
}

t.test('a TCP control listener without a token is refused at start', async (t) => {
  await t.rejects(
    PrivacyRouter.start({ config: cfgPath, listen: ['127.0.0.1:0'], control: '127.0.0.1:0', state: null, watch: false, defaultMetrics: false, logDestination: quiet }),
    /refusing to open the control listener on 127\.0\.0\.1:0 \(TCP\) without authentication/,
  )
  await t.rejects(
    PrivacyRouter.start({ config: cfgPath, listen: ['127.0.0.1:0'], control: '127.0.0.1:0', controlToken: 'short', state: null, watch: false, defaultMetrics: false, logDestination: quiet }),
    /shorter than 16 characters/,
  )
  // a unix socket (0600) still works without a token
  const r = await PrivacyRouter.start({ config: cfgPath, listen: ['127.0.0.1:0'], control: join(dir, 'c.sock'), state: null, watch: false, defaultMetrics: false, logDestination: quiet })
  await r.close()
})

t.test('with a token: nothing without it, everything with it', async (t) => {
  const r = await PrivacyRouter.start({ config: cfgPath, listen: ['127.0.0.1:0'], control: '127.0.0.1:0', controlToken: TOKEN, state: null, watch: false, defaultMetrics: false, logDestination: quiet })
  t.teardown(() => r.close())
  const a = r.controlAddress!
  for (const [m, p] of [['GET', '/status'], ['GET', '/metrics'], ['POST', '/reload']] as const) {
    for (const auth of [undefined, `Bearer ${TOKEN}x`, `Bearer ${TOKEN.slice(0, -1)}`, `Basic ${Buffer.from(`u:${TOKEN}`).toString('base64')}`]) {
      const o = await req(a, m, p, auth)
      t.equal(o.status, 401, `${m} ${p} with ${auth ? auth.split(' ')[0] + ' (wrong)' : 'no'} credentials: 401`)
      t.notMatch(o.body, /first|routes|http_request|cordon_/, 'and no data in the answer')
    }
  }
  writeFileSync(cfgPath, cfg('second'))
  await req(a, 'POST', '/reload')
  t.equal(r.config.routes[0]!.name, 'first', 'an unauthenticated POST /reload did not reload')
  const h = await req(a, 'GET', '/healthz')
  t.equal(h.status, 200, 'bare liveness stays open for probes')
  t.same(JSON.parse(h.body), { ok: true }, 'and tells nothing else')
  const s = await req(a, 'GET', '/status', `Bearer ${TOKEN}`)
  t.equal(s.status, 200, 'status with the token')
  t.equal(JSON.parse(s.body).routes[0].name, 'first')
  t.equal((await req(a, 'GET', '/metrics', `bearer ${TOKEN}`)).status, 200, 'metrics with the token')
  const rl = await req(a, 'POST', '/reload', `Bearer ${TOKEN}`)
  t.equal(rl.status, 200, 'reload with the token')
  t.equal(r.config.routes[0]!.name, 'second', 'and it reloaded')
  writeFileSync(cfgPath, cfg('first'))
})

t.test('CLI: refuses --control HOST:PORT without a token; serves and answers its own status with one', async (t) => {
  const node = (args: string[]) => [process.execPath, ['--import', 'tsx', entry, ...args]] as const
  const env = { ...process.env }
  delete env.CORDON_ROUTER_TOKEN
  const keys = join(dir, 'keys.json')
  const base = ['router', '--config', cfgPath, '--listen', '127.0.0.1:0', '--keys', keys, '--state', join(dir, 'state'), '--no-watch']
  const refused = spawnSync(...node([...base, '--control', '127.0.0.1:0']), { encoding: 'utf8', env, timeout: 60_000 })
  t.equal(refused.status, 2, 'exit 2')
  t.match(refused.stderr, /refusing to open the control listener on 127\.0\.0\.1:0 \(TCP\) without authentication: give --control-token-file FILE/)
  const tokFile = join(dir, 'control.token')
  writeSecretFile(tokFile, `${TOKEN}\n`)
  const p = spawn(...node([...base, '--control', '127.0.0.1:0', '--control-token-file', tokFile]), { stdio: ['ignore', 'pipe', 'pipe'], env })
  t.teardown(() => {
    if (p.exitCode === null) p.kill('SIGTERM')
  })
  let err = ''
  p.stderr.on('data', (d) => (err += d))
  let ctl = ''
  for (let i = 0; i < 1200 && !ctl; i++) {
    const m = /control (127\.0\.0\.1:\d+)/.exec(err)
    if (m) ctl = m[1]!
    else await sleep(50)
  }
  t.ok(ctl, `router started with a control port (${err.trim()})`)
  t.equal((await req(ctl, 'GET', '/status')).status, 401, 'no token: 401')
  const st = spawnSync(...node(['router', 'status', '--control', ctl]), { encoding: 'utf8', env: { ...env, CORDON_ROUTER_TOKEN: TOKEN }, timeout: 60_000 })
  t.equal(st.status, 0, `cordon router status with CORDON_ROUTER_TOKEN works ${st.stderr}`)
  t.match(st.stdout, /"name": "first"/)
  const bad = spawnSync(...node(['router', 'status', '--control', ctl]), { encoding: 'utf8', env, timeout: 60_000 })
  t.equal(bad.status, 1, 'without the token the status command fails')
  t.match(bad.stdout, /requires Authorization: Bearer TOKEN/)
})
