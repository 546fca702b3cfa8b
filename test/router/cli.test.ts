/**
 * The CLI as an operator uses it, in child processes: `keys set` reads the key from stdin and
 * never prints it, `keys list` shows fingerprints, `router check` reports file:line, and
 * `cordon router` serves, reloads on SIGHUP and stops cleanly on SIGTERM.
 * (Runs test/router/cli-entry.ts, which registers lib/cli/router.ts on a bare commander program,
 * so the test does not depend on the lead's CLI wiring.)
 */
import t from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, statSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { FakeProvider } from './fake-provider.js'
import { control, sleep } from './helpers.js'

const here = dirname(fileURLToPath(import.meta.url))
const entry = join(here, 'cli-entry.ts')
const dir = mkdtempSync(join(tmpdir(), 'cordon-router-cli-'))
const keys = join(dir, 'keys.json')
const SECRET = 'sk-cli-secret-5d41402abc4b2a76b9719d911017c592'
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

// one node process (no tsx wrapper in between), so signals reach the router itself
const node = (args: string[]) => [process.execPath, ['--import', 'tsx', entry, ...args]] as const
const cli = (args: string[], input?: string) => spawnSync(...node(args), { input, encoding: 'utf8', timeout: 60_000 })

t.test('keys set/list/rm', async (t) => {
  const s = cli(['keys', 'set', 'openai', '--keys', keys], `${SECRET}\n`)
  t.equal(s.status, 0, s.stderr)
  t.match(s.stdout, new RegExp(`stored key "openai" \\(sha256:[0-9a-f]{12}, ${SECRET.length} chars\\)`))
  t.notOk(s.stdout.includes(SECRET) || s.stderr.includes(SECRET), 'set never prints the key')
  t.equal(statSync(keys).mode & 0o777, 0o600, 'store is 0600')
  const l = cli(['keys', 'list', '--keys', keys])
  t.match(l.stdout, new RegExp(`^openai\\tsha256:[0-9a-f]{12}\\t${SECRET.length} chars`, 'm'))
  t.notOk(l.stdout.includes(SECRET))
  const e = cli(['keys', 'set', 'x', '--keys', keys], '')
  t.equal(e.status, 1)
  t.match(e.stderr, /the key is empty/)
  const r = cli(['keys', 'rm', 'nope', '--keys', keys])
  t.equal(r.status, 1)
  t.match(r.stderr, /no key named "nope"/)
})

t.test('router check reports file:line', async (t) => {
  const bad = join(dir, 'bad.yaml')
  writeFileSync(bad, 'routes:\n  - name: x\n    targets:\n      - { provider: openai, base_url: "http://h/v1", model: m, key: "sk-inline" }\n')
  const c = cli(['router', 'check', '--config', bad, '--keys', keys])
  t.equal(c.status, 2)
  t.match(c.stderr, new RegExp(`${bad.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:4:\\d+: .*a key is never written inline`))
})

t.test('cordon router serves, reloads on SIGHUP, stops on SIGTERM', async (t) => {
  const fake = await FakeProvider.start({ expectKey: SECRET })
  t.teardown(() => fake.close())
  const cfg = join(dir, 'router.yaml')
  const ctl = join(dir, 'ctl.sock')
  const audit = join(dir, 'audit.jsonl')
  writeFileSync(cfg, `routes:\n  - name: m\n    targets: [{ provider: openai, base_url: "${fake.baseUrl}", model: up, key: { store: openai } }]\n`)
  const p = spawn(...node(['router', '--config', cfg, '--listen', '127.0.0.1:0', '--control', ctl, '--keys', keys, '--audit', audit, '--state', join(dir, 'state'), '--no-watch']), { stdio: ['ignore', 'pipe', 'pipe'] })
  let err = ''
  p.stderr.on('data', (d) => (err += d))
  let port = 0
  for (let i = 0; i < 1200 && !port; i++) {
    const m = /listening on 127\.0\.0\.1:(\d+)/.exec(err)
    if (m) port = Number(m[1])
    else await sleep(50)
  }
  t.ok(port, 'router started')
  const r = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: 'Bearer x' }, body: JSON.stringify({ model: 'm', messages: [] }) })
  t.equal(r.status, 200)
  t.equal(fake.requests.at(-1)!.headers.authorization, `Bearer ${SECRET}`)
  writeFileSync(cfg, `routes:\n  - name: m2\n    targets: [{ provider: openai, base_url: "${fake.baseUrl}", model: up, key: { store: openai } }]\n`)
  p.kill('SIGHUP')
  let ok = false
  for (let i = 0; i < 300 && !ok; i++) {
    const s = await control(ctl, 'GET', '/status')
    ok = JSON.parse(s.body).routes[0].name === 'm2'
    if (!ok) await sleep(50)
  }
  t.ok(ok, 'SIGHUP reloaded the config')
  p.kill('SIGTERM')
  const code = await new Promise((res) => p.on('exit', (c) => res(c)))
  t.equal(code, 0, 'clean exit on SIGTERM')
  const lines = readFileSync(audit, 'utf8').trim().split('\n').map((l) => JSON.parse(l))
  t.equal(lines.length, 1)
  t.equal(lines[0].route, 'm')
  t.equal(lines[0].tokens_in, 10)
  t.notOk(err.includes(SECRET) || readFileSync(audit, 'utf8').includes(SECRET), 'neither logs nor audit hold the key')
})
