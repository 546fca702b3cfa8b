/**
 * Audit durability and the request id, in a real router process:
 *  - every call whose response the client saw complete has its audit record on disk even when
 *    the router is killed with SIGKILL right after (the record is committed before end());
 *  - `x-cordon-request-id` from the client is logged as request_id (logs and audit) and never
 *    reaches the provider.
 */
import t from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync, readFileSync, writeFileSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { FakeProvider } from './fake-provider.js'
import { sleep } from './helpers.js'
import { setKey } from '../../lib/router/keys.js'

const here = dirname(fileURLToPath(import.meta.url))
const entry = join(here, 'cli-entry.ts')
const SECRET = 'sk-durable-0c1f9e8d7a6b5c4d3e2f1a0b9c8d7e6f'

async function startRouter(t: { teardown(fn: () => unknown): void }, fakeUrl: string): Promise<{ p: ChildProcess; port: number; audit: string; stderr: () => string }> {
  const dir = mkdtempSync(join(tmpdir(), 'cordon-router-durable-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const keys = join(dir, 'keys.json')
  setKey(keys, 'openai', SECRET)
  const cfg = join(dir, 'router.yaml')
  const audit = join(dir, 'audit', 'audit.jsonl')
  writeFileSync(cfg, `routes:\n  - name: m\n    targets: [{ provider: openai, base_url: "${fakeUrl}", model: up, key: { store: openai } }]\n`)
  const p = spawn(process.execPath, ['--import', 'tsx', entry, 'router', '--config', cfg, '--listen', '127.0.0.1:0', '--keys', keys, '--audit', audit, '--state', join(dir, 'state'), '--no-watch'], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => {
    if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL')
  })
  let err = ''
  p.stderr!.on('data', (d) => (err += d))
  p.stdout!.resume()
  let port = 0
  for (let i = 0; i < 1200 && !port; i++) {
    const m = /listening on 127\.0\.0\.1:(\d+)/.exec(err)
    if (m) port = Number(m[1])
    else await sleep(50)
  }
  if (!port) throw new Error(`router did not start:\n${err}`)
  return { p, port, audit, stderr: () => err }
}

const call = (port: number, i: number, headers: Record<string, string> = {}) =>
  fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: `call ${i}` }], stream: i % 2 === 1 }),
  }).then(async (r) => ({ status: r.status, text: await r.text() }))

t.test('SIGKILL right after N completed calls: all N audit records are on disk', async (t) => {
  const fake = await FakeProvider.start({ expectKey: SECRET })
  t.teardown(() => fake.close())
  const r = await startRouter(t, fake.baseUrl)
  const N = 40
  // half sequential, half concurrent (the concurrent ones share group commits)
  const done: number[] = []
  for (let i = 0; i < N / 2; i++) done.push((await call(r.port, i)).status)
  done.push(...(await Promise.all(Array.from({ length: N / 2 }, (_, j) => call(r.port, N / 2 + j)))).map((x) => x.status))
  t.same(done, Array(N).fill(200), 'all calls completed')
  r.p.kill('SIGKILL')
  await new Promise((res) => r.p.once('exit', res))
  t.ok(existsSync(r.audit), 'audit file exists')
  const lines = readFileSync(r.audit, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l))
  t.equal(lines.length, N, `all ${N} records of completed calls survived the SIGKILL`)
  t.equal(lines.filter((l) => l.status === 200 && l.route === 'm').length, N, 'each with its route and status')
  t.equal(lines.filter((l) => l.stream).length, N / 2, 'streamed calls included')
})
