/**
 * A policy rule on a single file under the host's /tmp, with the sandbox's private /tmp: the helper
 * bind-mounts it back at the same path (it used to refuse to start: "Not a directory", as it only
 * kept directories). The file is readable, writes reach the host's file, and its neighbours in the
 * host's /tmp stay out of sight.
 */
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import { probe } from '../../lib/kernel/probe.js'
import { tempDir } from '../fixtures/kernel/run.js'

const f = probe()
const ROOT = path.resolve(import.meta.dirname, '..', '..')
const skip = f.landlockAbi === 0 ? 'Landlock is not available on this kernel' : false

t.test('a read-write file rule under the host /tmp stays reachable under a private /tmp', { skip }, async (t) => {
  const host = fs.mkdtempSync('/tmp/cordon-tmpfile-')
  t.teardown(() => fs.rmSync(host, { recursive: true, force: true }))
  const file = path.join(host, 'shared.txt')
  fs.writeFileSync(file, 'from the host\n')
  fs.writeFileSync(path.join(host, 'neighbour.txt'), 'not granted\n')
  const ws = tempDir(t, 'cordon-tmpfile-ws-', '/var/tmp')
  const pol = path.join(ws, 'p.yaml')
  fs.writeFileSync(pol, `version: 1\nfilesystem:\n  read_write: [${file}]\n`)
  const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'cordon.js'), 'run', '--policy', pol, '--workspace', ws, '--', 'sh', '-c',
    `cat ${file}; echo appended >> ${file}; ls ${host}; cat ${path.join(host, 'neighbour.txt')} 2>&1 || true`], { encoding: 'utf8' })
  t.equal(r.status, 0, r.stderr)
  t.match(r.stdout, /^from the host\n/, 'the file is readable inside')
  t.equal(fs.readFileSync(file, 'utf8'), 'from the host\nappended\n', "a write inside reaches the host's file")
  t.notMatch(r.stdout, /neighbour\.txt\n|not granted/, "its neighbours in the host's /tmp are not there")
})
