/**
 * Log rotation the way logrotate does it (rename the file, then `kill -HUP` the engine): the real
 * `cordon engine` process continues its audit trail in a new file at the same path, and no
 * decision is lost or written to the wrong file.
 */
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { startUpstream, spawnEngine, tmpdir, viaProxy, readAudit, waitFor } from './helpers.js'

const up = await startUpstream('127.0.0.2')
const dir = tmpdir()
const policy = path.join(dir, 'policy.yaml')
fs.writeFileSync(policy, `network:\n  mode: proxy\n  allow:\n    - { cidr: 127.0.0.2/32, ports: [${up.port}] }\n`)
const audit = path.join(dir, 'state', 'audit.jsonl')
const e = await spawnEngine(['--policy', policy, '--listen', '127.0.0.1:0', '--control', path.join(dir, 'engine.sock'), '--audit', audit])
t.teardown(async () => {
  await e.stop()
  await up.close()
})

t.test('rename + SIGHUP: the engine writes on in a new file; each decision is in exactly one', async (t) => {
  const r1 = await viaProxy(e.ready.gate.port, `http://127.0.0.2:${up.port}/before`)
  t.equal(r1.status, 200)
  fs.renameSync(audit, `${audit}.1`)
  e.child.kill('SIGHUP')
  await waitFor(() => fs.existsSync(audit) && readAudit(audit).some((r) => r.type === 'reopen'), 5_000, 'the reopen record in the new file')
  const r2 = await viaProxy(e.ready.gate.port, `http://127.0.0.2:${up.port}/after`)
  t.equal(r2.status, 200)
  await waitFor(() => readAudit(audit).some((r) => r.path === '/after'), 5_000, 'the second decision')
  const paths = (f: string) => readAudit(f).filter((r) => r.type === 'decision').map((r) => r.path)
  t.same(paths(`${audit}.1`), ['/before'], 'the rotated file keeps the decision made before')
  t.same(paths(audit), ['/after'], 'the new file has the one made after')
  t.equal(readAudit(audit)[0]?.type, 'reopen', 'the new file starts with the reopen record')
  t.equal(readAudit(audit)[0]?.trigger, 'SIGHUP', 'naming what caused it')
})
