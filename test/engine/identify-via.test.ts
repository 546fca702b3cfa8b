/**
 * --identify-via: a confined engine (its own Landlock domain, as `cordon up` runs it) cannot name
 * the process behind a client connection, because the kernel refuses it the client's /proc/PID/fd
 * and ns links; asking the lookup service of an unconfined process (lib/engine/lookup-service.ts,
 * served by the supervisor in `cordon up`) names it again. Run for real: the engine is a child
 * under `cordon run` with the engine service profile's rights, the client another child process.
 * Then what the engine does when the service is gone or silent (the request is served, the record
 * names no process), and what the service does with input that is not a query.
 */
import t from 'tap'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { spawn, type ChildProcess } from 'node:child_process'
import { probe } from '../../lib/kernel/probe.js'
import { Engine } from '../../lib/engine/engine.js'
import { serveLookups } from '../../lib/engine/lookup-service.js'
import { ROOT, startUpstream, readAudit, nodeJson } from './helpers.js'

const f = probe()
const bin = path.join(ROOT, 'bin', 'cordon.js')
const confinedSkip = f.landlockAbi === 0 ? 'Landlock is not available on this kernel' : !fs.existsSync(path.join(ROOT, 'dist', 'cli', 'index.js')) ? 'dist/ is not built (npm run build:ts)' : false
const node = fs.realpathSync(process.execPath)

const up = await startUpstream('127.0.0.2')
t.teardown(() => up.close())
// under /var/tmp, not /tmp: the confined engine gets a private /tmp
const dir = fs.mkdtempSync('/var/tmp/cordon-identify-via-')
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
const policyFile = path.join(dir, 'policy.yaml')
fs.writeFileSync(policyFile, `network:\n  mode: proxy\n  allow:\n    - api.example.com:${up.port}\n    - { cidr: 127.0.0.2/32, ports: [${up.port}] }\n`)

/** A child process that sends `n` requests on one keep-alive connection through the gate; prints its pid and the statuses. */
function client(gatePort: number, n: number): Promise<{ pid: number; statuses: number[] }> {
  const script = `
const http = require('http'); const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const one = (i) => new Promise((res, rej) => { const r = http.request({ host: '127.0.0.1', port: ${gatePort}, agent, path: 'http://api.example.com:${up.port}/n' + i }, (x) => { x.resume(); x.on('end', () => res(x.statusCode)) }); r.on('error', rej); r.end() });
(async () => { const s = []; for (let i = 0; i < ${n}; i++) s.push(await one(i)); agent.destroy(); console.log(JSON.stringify({ pid: process.pid, statuses: s })) })()`
  return nodeJson(script)
}

/** `cordon engine` under `cordon run` with the rights of profiles/services/engine.yaml (less seccomp) */
async function confinedEngine(name: string, extra: string[]): Promise<{ child: ChildProcess; port: number; audit: string; stop: () => Promise<void> }> {
  const state = path.join(dir, name)
  fs.mkdirSync(state)
  const sandboxPolicy = path.join(dir, `${name}-sandbox.yaml`)
  fs.writeFileSync(sandboxPolicy, `version: 1\nextends: none\nrequirements:\n  best_effort: true\nfilesystem:\n  system: true\n  home: none\n  tmp: private\n  read_only: [${ROOT}, ${policyFile}]\n  read_write: [${state}]\nnetwork: host\n`)
  const audit = path.join(state, 'audit.jsonl')
  const args = [bin, 'run', '--policy', sandboxPolicy, '--workspace', state, '--', process.execPath, bin, 'engine', '--policy', policyFile, '--listen', '127.0.0.1:0', '--control', path.join(state, 'control.sock'), '--audit', audit, '--resolve', 'api.example.com=127.0.0.2', '--identify', 'all', ...extra]
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_OPTIONS: '' } })
  let err = ''
  child.stderr!.on('data', (d) => (err += d))
  const port = await new Promise<number>((resolve, reject) => {
    let out = ''
    child.stdout!.on('data', (d) => {
      out += d
      const nl = out.indexOf('\n')
      if (nl >= 0) resolve(JSON.parse(out.slice(0, nl)).gate.port)
    })
    child.on('exit', (code) => reject(new Error(`confined engine exited ${code}: ${err}`)))
  })
  return {
    child,
    port,
    audit,
    stop: async () => {
      if (child.exitCode !== null) return
      const done = new Promise((r) => child.once('exit', r))
      child.kill('SIGTERM')
      await done
    },
  }
}

t.test('a confined engine names the client only through the lookup service', { skip: confinedSkip }, async (t) => {
  // without it: the engine tries /proc, and the kernel refuses it the client's links
  const blind = await confinedEngine('blind', [])
  try {
    const c = await client(blind.port, 2)
    t.same(c.statuses, [200, 200])
    const recs = readAudit(blind.audit).filter((r) => r.type === 'decision')
    t.equal(recs.length, 2)
    t.ok(recs.every((r) => r.pid === null && r.binary === null), 'confined, the engine cannot name the client process itself')
  } finally {
    await blind.stop()
  }

  const sock = path.join(dir, 'lookup.sock')
  const svc = await serveLookups(sock)
  t.teardown(() => svc.close())
  t.equal(fs.statSync(sock).mode & 0o777, 0o600, 'the lookup socket is for its owner only')
  const seeing = await confinedEngine('seeing', ['--identify-via', sock])
  try {
    const c = await client(seeing.port, 3)
    t.same(c.statuses, [200, 200, 200])
    const recs = readAudit(seeing.audit).filter((r) => r.type === 'decision')
    t.equal(recs.length, 3)
    for (const r of recs) {
      t.equal(r.pid, c.pid, 'the record names the client pid')
      t.equal(r.binary, node, 'and its binary')
    }
    t.same(svc.answered, { found: 1, unknown: 0 }, 'one lookup for the connection, not one per request')
  } finally {
    await seeing.stop()
  }
})

t.test('a lookup service that is gone or silent costs a bounded wait and names no process', async (t) => {
  const run = async (name: string, via: string) => {
    const audit = path.join(dir, `${name}.jsonl`)
    const e = new Engine({ policyFile, listen: { host: '127.0.0.1', port: 0 }, audit, hosts: { 'api.example.com': ['127.0.0.2'] }, watch: false, identify: 'all', identifyVia: via })
    const g = await e.start()
    try {
      const t0 = performance.now()
      const c = await client(g.port, 2)
      const ms = performance.now() - t0
      t.same(c.statuses, [200, 200], `${name}: the requests are served`)
      const recs = readAudit(audit).filter((r) => r.type === 'decision')
      t.ok(recs.length === 2 && recs.every((r) => r.pid === null && r.binary === null), `${name}: the records name no process`)
      const m = await e.metrics.getSingleMetricAsString('cordon_engine_peer_lookups_total')
      t.match(m, /result="unknown"\} 1/, `${name}: one unknown lookup for the connection`)
      return ms
    } finally {
      await e.stop()
    }
  }
  await run('gone', path.join(dir, 'nobody.sock'))
  // a service that accepts and never answers: the engine waits its 100 ms, then decides
  const silentPath = path.join(dir, 'silent.sock')
  const held: net.Socket[] = []
  const silent = net.createServer((s) => held.push(s))
  await new Promise<void>((r) => silent.listen(silentPath, () => r()))
  t.teardown(() => {
    for (const s of held) s.destroy()
    silent.close()
  })
  const ms = await run('silent', silentPath)
  t.ok(ms < 5_000, `a silent service delays the connection's first decision only (${ms.toFixed(0)} ms for the client process, start included)`)
  t.ok(held.length >= 1, 'the engine did ask it')
})

t.test('a burst of new connections keeps at most 16 remote lookups waiting; the rest are skipped', async (t) => {
  const sock = path.join(dir, 'slow.sock')
  let queries = 0
  const held: net.Socket[] = []
  const slow = net.createServer((s) => {
    held.push(s)
    s.on('data', (d) => (queries += String(d).split('\n').filter(Boolean).length))
  })
  await new Promise<void>((r) => slow.listen(sock, () => r()))
  t.teardown(() => {
    for (const s of held) s.destroy()
    slow.close()
  })
  const audit = path.join(dir, 'burst.jsonl')
  // answers never come, and none times out during the burst, however slowly the client opens its connections
  const e = new Engine({ policyFile, listen: { host: '127.0.0.1', port: 0 }, audit, hosts: { 'api.example.com': ['127.0.0.2'] }, watch: false, identify: 'all', identifyVia: sock, identifyViaTimeoutMs: 3_000 })
  const g = await e.start()
  try {
    const n = 40
    const c = await nodeJson<{ statuses: number[] }>(`
const http = require('http'); const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
const one = (i) => new Promise((res, rej) => { const r = http.request({ host: '127.0.0.1', port: ${g.port}, agent, path: 'http://api.example.com:${up.port}/b' + i }, (x) => { x.resume(); x.on('end', () => res(x.statusCode)) }); r.on('error', rej); r.end() });
Promise.all(Array.from({ length: ${n} }, (_, i) => one(i))).then((s) => console.log(JSON.stringify({ statuses: s })))`)
    t.same(c.statuses, Array(n).fill(200), 'every request is served')
    const m = await e.metrics.getSingleMetricAsString('cordon_engine_peer_lookups_total')
    const v = (r: string) => Number(m.split('\n').find((l) => l.includes(`result="${r}"`))?.split(' ').pop() ?? 0)
    t.equal(queries, 16, 'the service was asked 16 times')
    t.same([v('unknown'), v('skipped')], [16, n - 16], 'those 16 connections waited for it (and got no answer); the other 24 were skipped')
    const recs = readAudit(audit).filter((r) => r.type === 'decision')
    t.equal(recs.filter((r) => r.peer_lookup === 'skipped').length, v('skipped'), 'and their records say so')
  } finally {
    await e.stop()
  }
})

t.test('the lookup service closes a connection that does not send queries, and keeps serving', async (t) => {
  const sock = path.join(dir, 'strict.sock')
  const svc = await serveLookups(sock, () => ({ pid: 4242, binary: '/bin/fake' }))
  t.teardown(() => svc.close())
  const exchange = (lines: string) =>
    new Promise<{ out: string; closed: boolean }>((resolve) => {
      const s = net.connect(sock)
      let out = ''
      s.setEncoding('utf8').on('data', (d) => (out += d))
      s.on('close', () => resolve({ out, closed: true }))
      s.on('error', () => {})
      s.write(lines)
      setTimeout(() => {
        resolve({ out, closed: false })
        s.destroy()
      }, 300)
    })
  const q = { client: '10.0.0.2', clientPort: 41000, gate: '169.254.77.1', gatePort: 3128, elsewhere: true }
  for (const [what, bad] of [
    ['not JSON', 'hello\n'],
    ['a query without a valid address', JSON.stringify({ ...q, id: 1, client: '/etc/passwd' }) + '\n'],
    ['a port out of range', JSON.stringify({ ...q, id: 1, gatePort: 70000 }) + '\n'],
    ['a line longer than a query can be', 'x'.repeat(5000)],
  ]) {
    const r = await exchange(bad!)
    t.ok(r.closed && r.out === '', `${what}: closed without an answer`)
  }
  const good = await exchange(JSON.stringify({ ...q, id: 7 }) + '\n' + JSON.stringify({ ...q, id: 8 }) + '\n')
  t.same(good.out.trim().split('\n').map((l) => JSON.parse(l)), [{ id: 7, pid: 4242, binary: '/bin/fake' }, { id: 8, pid: 4242, binary: '/bin/fake' }], 'well-formed queries are answered, in order')
})
