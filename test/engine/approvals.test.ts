/**
 * `cordon engine` as a separate process, driven by the CLI: approvals while a request waits,
 * --persist (restart.test.ts: restarts with and without --state).
 */
import t from 'tap'
import fs from 'node:fs'
import { startUpstream, viaProxy, spawnEngine, runCli, type EngineProc, askSetup, askEngineArgs as engineArgs, pendingFor } from './helpers.js'

const up = await startUpstream('127.0.0.2')
const P = up.port
t.teardown(() => up.close())

const setup = (unlisted = 'ask') => askSetup(P, unlisted)

t.test('approve and deny from the CLI while a request waits', async (t) => {
  const s = setup()
  let e: EngineProc = await spawnEngine(engineArgs(s))
  t.teardown(() => e.stop())
  let G = e.ready.gate.port
  const waiting = viaProxy(G, `http://wait.example.com:${P}/held`, 'GET', '', 60_000)
  const p = await pendingFor(s.sock, 'wait.example.com')
  t.equal(p.port, P)
  t.equal(p.method, 'GET')
  t.equal(p.pid, process.pid, 'the operator sees which process asked')
  t.equal(p.binary, fs.realpathSync(process.execPath))
  const human = await runCli(['approvals', '--control', s.sock])
  t.match(human.stdout, new RegExp(`${p.id}\\s+GET wait\\.example\\.com:${P}/held`))
  const ap = await runCli(['approve', String(p.id), '--control', s.sock])
  t.equal(ap.code, 0, ap.stderr)
  t.match(ap.stdout, /approved wait\.example\.com:\d+ for this session/)
  const r = await waiting
  t.equal(r.status, 200)
  t.equal(r.body, 'hello GET /held')
  t.equal((await viaProxy(G, `http://wait.example.com:${P}/again`)).status, 200, 'session approval applies to the next request')
  t.notMatch(fs.readFileSync(s.policy, 'utf8'), /wait\.example\.com/, 'a session approval is not written to the policy')

  const denied = viaProxy(G, `http://nope.example.com:${P}/`, 'GET', '', 60_000)
  const q = await pendingFor(s.sock, 'nope.example.com')
  const dn = await runCli(['deny', String(q.id), '--control', s.sock])
  t.equal(dn.code, 0, dn.stderr)
  const d = await denied
  t.equal(d.status, 403)
  t.match(d.body, /denied by the operator/)
  const bad = await runCli(['approve', 'nosuch', '--control', s.sock])
  t.not(bad.code, 0)
  t.match(bad.stderr, /no pending request "nosuch"/)

})

