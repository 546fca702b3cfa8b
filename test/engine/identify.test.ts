/**
 * Which process asked: decision records name the client's pid and binary (looked up once per
 * client connection through /proc), within a time budget for the /proc walks that says so in the
 * record when it is spent. The clients are real child processes in the engine's own network
 * namespace: `identify: 'all'` looks them up for every decision; the default ('sandboxes') does so
 * for registered sandbox namespaces (netns.test.ts) and for deny/ask decisions of anyone else.
 */
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { Engine } from '../../lib/engine/engine.js'
import { startUpstream, tmpdir, readAudit, nodeJson } from './helpers.js'

const up = await startUpstream('127.0.0.2')
t.teardown(() => up.close())
const dir = tmpdir()
const policyFile = path.join(dir, 'policy.yaml')
fs.writeFileSync(policyFile, `network:\n  mode: proxy\n  allow:\n    - api.example.com:${up.port}\n    - { cidr: 127.0.0.2/32, ports: [${up.port}] }\n`)
const node = fs.realpathSync(process.execPath)

/**
 * A child process that sends `n` requests through the gate on one keep-alive connection (or a new
 * connection each), then prints its pid and the statuses.
 */
function client(gatePort: number, n: number, keepAlive: boolean): Promise<{ pid: number; statuses: number[] }> {
  const script = `
const http = require('http'); const agent = new http.Agent({ keepAlive: ${keepAlive}, maxSockets: 1 });
const one = (i) => new Promise((res, rej) => { const r = http.request({ host: '127.0.0.1', port: ${gatePort}, agent, path: 'http://api.example.com:${up.port}/n' + i, headers: { host: 'api.example.com' } }, (x) => { x.resume(); x.on('end', () => res(x.statusCode)) }); r.on('error', rej); r.end() });
(async () => { const s = []; for (let i = 0; i < ${n}; i++) s.push(await one(i)); agent.destroy(); console.log(JSON.stringify({ pid: process.pid, statuses: s })) })()`
  return nodeJson(script)
}

async function withEngine(name: string, opts: Partial<ConstructorParameters<typeof Engine>[0]>, f: (e: Engine, port: number, audit: string) => Promise<void>): Promise<void> {
  const audit = path.join(dir, `${name}.jsonl`)
  const e = new Engine({ policyFile, listen: { host: '127.0.0.1', port: 0 }, audit, hosts: { 'api.example.com': ['127.0.0.2'] }, watch: false, ...opts })
  const g = await e.start()
  try {
    await f(e, g.port, audit)
  } finally {
    await e.stop()
  }
}

const lookups = async (e: Engine) => {
  const m = (await e.metrics.getSingleMetricAsString('cordon_engine_peer_lookups_total')).split('\n')
  const v = (r: string) => Number(m.find((l) => l.includes(`result="${r}"`))?.split(' ').pop() ?? 0)
  return { found: v('found'), unknown: v('unknown'), skipped: v('skipped') }
}

t.test('an allowed request names the process that asked (identify: all)', async (t) => {
  await withEngine('allow', { identify: 'all' }, async (e, port, audit) => {
    const c = await client(port, 3, true)
    t.same(c.statuses, [200, 200, 200])
    const recs = readAudit(audit).filter((r) => r.type === 'decision')
    t.equal(recs.length, 3, 'one decision per request')
    for (const r of recs) {
      t.equal(r.decision, 'allow')
      t.equal(r.pid, c.pid, 'the pid of the client process')
      t.equal(r.binary, node, 'and its binary')
      t.notOk('peer_lookup' in r)
    }
    t.same(await lookups(e), { found: 1, unknown: 0, skipped: 0 }, 'one /proc walk for the connection, not one per request')
  })
})

t.test('a denied request names it, by default too', async (t) => {
  await withEngine('deny', {}, async (_e, port, audit) => {
    const script = `require('http').request({ host: '127.0.0.1', port: ${port}, path: 'http://not-listed.example.com/' }, (x) => { console.log(process.pid + ' ' + x.statusCode); x.resume() }).end()`
    const out = await new Promise<string>((resolve) => {
      const c = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
      let o = ''
      c.stdout!.on('data', (d) => (o += d))
      c.on('exit', () => resolve(o.trim()))
    })
    const [pid, status] = out.split(' ').map(Number)
    t.equal(status, 403)
    const r = readAudit(audit).find((x) => x.type === 'decision')!
    t.equal(r.decision, 'deny')
    t.equal(r.pid, pid)
    t.equal(r.binary, node)
  })
})

t.test('when the lookup budget is spent the record says so, and the gate keeps serving', async (t) => {
  // a budget of almost nothing that never refills: the first lookup spends it, every later
  // connection is skipped
  await withEngine('budget', { identify: 'all', identifyBudgetMs: 0.001, identifyShare: 0 }, async (e, port, audit) => {
    const c = await client(port, 20, false)
    t.same(c.statuses, Array(20).fill(200), 'every request is served')
    const recs = readAudit(audit).filter((r) => r.type === 'decision')
    t.equal(recs.length, 20)
    t.equal(recs[0]!.pid, c.pid, 'the first connection is looked up')
    t.notOk('peer_lookup' in recs[0]!)
    const skipped = recs.filter((r) => r.peer_lookup === 'skipped')
    t.equal(skipped.length, 19, 'every later connection is skipped')
    t.ok(skipped.every((r) => r.pid === null && r.binary === null), 'a skipped lookup names no process')
    t.same(await lookups(e), { found: 1, unknown: 0, skipped: 19 }, 'the lookup and the skips are counted in the metrics')
  })
  // with a share of the time the budget refills, so later connections are looked up again
  await withEngine('refill', { identify: 'all', identifyBudgetMs: 0.001, identifyShare: 0.5 }, async (e, port, audit) => {
    const c = await client(port, 20, false)
    t.same(c.statuses, Array(20).fill(200))
    const recs = readAudit(audit).filter((r) => r.type === 'decision')
    const named = recs.filter((r) => r.peer_lookup !== 'skipped')
    t.ok(named.length >= 5, `with a 50% share the budget refills: ${named.length} of 20 connections looked up`)
    t.ok(named.every((r) => r.pid === c.pid && r.binary === node), 'each looked-up one names the client')
    t.equal((await lookups(e)).found, named.length)
  })
  t.throws(() => new Engine({ policyFile, listen: { host: '127.0.0.1', port: 0 }, audit: path.join(dir, 'x.jsonl'), identifyShare: 2 }), /identifyShare must be between 0 and 1 \(got 2\)/)
})

t.test('flagged (and the default, for a client outside any sandbox) looks up deny decisions only; none never', async (t) => {
  for (const [name, identify] of [['flagged', 'flagged'], ['default', undefined]] as const) {
    await withEngine(name, { identify }, async (e, port, audit) => {
      await client(port, 2, true)
      const recs = readAudit(audit).filter((r) => r.type === 'decision')
      t.ok(recs.length === 2 && recs.every((r) => r.pid === null && !('peer_lookup' in r)), `${name}: allowed requests carry no pid`)
      t.same(await lookups(e), { found: 0, unknown: 0, skipped: 0 })
    })
  }
  await withEngine('none', { identify: 'none' }, async (e, port, audit) => {
    await client(port, 2, true)
    t.ok(readAudit(audit).filter((r) => r.type === 'decision').every((r) => r.pid === null))
    t.same(await lookups(e), { found: 0, unknown: 0, skipped: 0 })
  })
})
