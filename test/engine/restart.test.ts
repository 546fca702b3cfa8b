/**
 * `cordon engine` as a separate process, driven by the CLI: restarts with and without --state,
 * --persist.
 */
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { startUpstream, viaProxy, spawnEngine, runCli, type EngineProc, askSetup, askEngineArgs as engineArgs, pendingFor } from './helpers.js'
import { requestJson } from '../../lib/engine/client.js'

const up = await startUpstream('127.0.0.2')
const P = up.port
t.teardown(() => up.close())

const setup = (unlisted = 'ask') => askSetup(P, unlisted)

t.test('an approval does not survive a restart unless persisted (--persist keeps comments)', async (t) => {
  const s = setup()
  let e: EngineProc = await spawnEngine(engineArgs(s))
  t.teardown(() => e.stop())
  let G = e.ready.gate.port
  const first = viaProxy(G, `http://wait.example.com:${P}/first`, 'GET', '', 60_000)
  const p1 = await pendingFor(s.sock, 'wait.example.com')
  await requestJson({ socket: s.sock }, 'POST', `/v1/pending/${p1.id}/approve`, {})
  t.equal((await first).status, 200)
  // restart without --state: the session approval is gone
  await e.stop()
  e = await spawnEngine(engineArgs(s))
  G = e.ready.gate.port
  const again = viaProxy(G, `http://wait.example.com:${P}/after-restart`, 'GET', '', 60_000)
  const p2 = await pendingFor(s.sock, 'wait.example.com')
  t.pass('after a restart the host is unlisted again')
  const per = await runCli(['approve', String(p2.id), '--persist', '--control', s.sock])
  t.equal(per.code, 0, per.stderr)
  t.equal((await again).status, 200)
  const text = fs.readFileSync(s.policy, 'utf8')
  t.match(text, new RegExp(`- wait\\.example\\.com:${P}`), 'persisted to network.allow')
  t.match(text, /# operator's comment: keep me/, 'comments kept')
  t.match(text, /# the test upstream lives on loopback/)
  await e.stop()
  e = await spawnEngine(engineArgs(s))
  t.equal((await viaProxy(e.ready.gate.port, `http://wait.example.com:${P}/persisted`)).status, 200, 'a persisted approval survives a restart')
  const logs = await runCli(['logs', '--control', s.sock, '--tail', '5'])
  t.match(logs.stdout, /ALLOW\s+GET wait\.example\.com:\d+\/persisted/)
  const sum = await runCli(['logs', '--file', s.audit, '--summary', '--denied'])
  t.match(sum.stdout, new RegExp(`\\d+x PENDING wait\\.example\\.com:${P}`), 'grouped view of held/denied destinations')
})

t.test('session approvals survive a restart through --state, and never reach the policy file', async (t) => {
  const s = setup()
  const state = path.join(s.dir, 'state')
  let e = await spawnEngine(engineArgs(s, ['--state', state]))
  t.teardown(() => e.stop())
  const waiting = viaProxy(e.ready.gate.port, `http://wait.example.com:${P}/`, 'GET', '', 60_000)
  const p = await pendingFor(s.sock, 'wait.example.com')
  // a second pending request that nobody answers before the restart
  const orphan = viaProxy(e.ready.gate.port, `http://nope.example.com:${P}/`, 'GET', '', 60_000)
  await pendingFor(s.sock, 'nope.example.com')
  t.equal((await runCli(['approve', String(p.id), '--control', s.sock])).code, 0)
  t.equal((await waiting).status, 200)
  await e.stop()
  await orphan
  e = await spawnEngine(engineArgs(s, ['--state', state]))
  t.equal((await viaProxy(e.ready.gate.port, `http://wait.example.com:${P}/`)).status, 200, 'approval restored from --state')
  const pend = (await requestJson<Array<{ host: string }>>({ socket: s.sock }, 'GET', '/v1/pending')).body
  t.ok(pend.some((x) => x.host === 'nope.example.com'), 'pending requests restored for the operator')
  t.notMatch(fs.readFileSync(s.policy, 'utf8'), /wait\.example\.com/)
})

