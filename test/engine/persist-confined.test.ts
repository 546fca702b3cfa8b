/**
 * `cordon approve ID --persist` from a confined engine (cordon up's default): its Landlock domain
 * may write the policy file but not create files beside it, so the usual write-then-rename cannot
 * work there. The rule is then written into the same file in place (same inode, so the engine's
 * rule on it still covers it). Run for real: the writer is a child under `cordon run` with exactly
 * those rights.
 */
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import { parse } from 'yaml'
import { probe } from '../../lib/kernel/probe.js'
import { ROOT } from './helpers.js'

const f = probe()
const dist = path.join(ROOT, 'dist', 'engine', 'policy.js')
const skip = f.landlockAbi === 0 ? 'Landlock is not available on this kernel' : !fs.existsSync(dist) ? 'dist/ is not built (npm run build:ts)' : false

t.test('a confined engine persists an approval into its policy file in place', { skip }, async (t) => {
  // under /var/tmp, not /tmp: the sandbox's private /tmp would show a bind mount of the file
  const dir = fs.mkdtempSync('/var/tmp/cordon-persist-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const etc = path.join(dir, 'etc') // stands for /etc/cordon: the policy beside other files
  const ws = path.join(dir, 'ws')
  fs.mkdirSync(etc)
  fs.mkdirSync(ws)
  const policyFile = path.join(etc, 'policy.yaml')
  fs.writeFileSync(policyFile, 'version: 1\n# the operator\'s comment stays\nnetwork:\n  mode: proxy\n  allow:\n    - pypi.org:443\n')
  fs.writeFileSync(path.join(etc, 'keys.json'), '{}')
  const ino = fs.statSync(policyFile).ino
  const sandboxPolicy = path.join(dir, 'writer.yaml')
  fs.writeFileSync(sandboxPolicy, `version: 1\nfilesystem:\n  read_only: [${ROOT}]\n  read_write: [${policyFile}]\n`)
  const script = `
const m = await import(${JSON.stringify(dist)})
const out = {}
try { m.atomicWrite(${JSON.stringify(policyFile)}, 'x') ; out.atomic = 'ok' } catch (e) { out.atomic = e.code }
try { m.persistAllowRule(${JSON.stringify(policyFile)}, 'api.example.com:443'); out.persist = 'ok' } catch (e) { out.persist = e.code + ' ' + e.message }
console.log(JSON.stringify(out))`
  const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'cordon.js'), 'run', '--policy', sandboxPolicy, '--workspace', ws, '--', process.execPath, '--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } })
  t.equal(r.status, 0, r.stderr)
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!)
  t.equal(out.atomic, 'EACCES', 'inside, a file beside the policy cannot be created (so rename cannot be used)')
  t.equal(out.persist, 'ok', 'the approval is persisted anyway')
  const text = fs.readFileSync(policyFile, 'utf8')
  t.same(parse(text).network.allow, ['pypi.org:443', 'api.example.com:443'], 'the rule is added to the allow list')
  t.match(text, /# the operator's comment stays/, 'the rest of the file is kept')
  t.equal(fs.statSync(policyFile).ino, ino, 'same inode: the engine\'s rule on the file still covers it')
  t.same(fs.readdirSync(etc).sort(), ['keys.json', 'policy.yaml'], 'nothing left beside it')
})
