/** `cordon run` exit statuses and `cordon doctor`, through the real CLI entry (lib/cli/main.ts). */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { tempDir } from '../fixtures/kernel/run.js'
import { probe } from '../../lib/kernel/probe.js'

const REPO = fileURLToPath(new URL('../..', import.meta.url))
const MAIN = join(REPO, 'lib', 'cli', 'main.ts')
const skip = probe().landlockAbi === 0 ? 'Landlock is not available on this kernel' : false

function cordon(args: string[], cwd: string, env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, ['--import', import.meta.resolve('tsx'), MAIN, ...args], {
    cwd, encoding: 'utf8', timeout: 60_000, env: { ...process.env, NODE_OPTIONS: '', ...env },
  })
  return { status: r.status, stdout: r.stdout, stderr: r.stderr }
}

t.test('cordon run passes the exit code through, 128+signal when killed', { skip }, async (t) => {
  const ws = tempDir(t)
  const a = cordon(['run', '--workspace', ws, '--', 'sh', '-c', 'echo out; exit 7'], ws)
  t.equal(a.status, 7, a.stderr)
  t.equal(a.stdout, 'out\n')
  const b = cordon(['run', '--', 'sh', '-c', 'kill -KILL $$'], ws)
  t.equal(b.status, 137, 'SIGKILL -> 137')
  const c = cordon(['run', '--', 'cordon-no-such-command'], ws)
  t.equal(c.status, 127)
  t.match(c.stderr, /cordon: exec: cordon-no-such-command: No such file or directory/)
})

t.test('cordon run: confined (denial shown, env scrubbed), refuses a bad policy with 125', { skip }, async (t) => {
  const ws = tempDir(t)
  const d = cordon(['run', '--', 'sh', '-c', 'cat /etc/shadow; printenv OPENAI_API_KEY; echo rc=$?'], ws, { OPENAI_API_KEY: 'sk-launcher' })
  t.equal(d.status, 0)
  t.match(d.stderr, /\/etc\/shadow: Permission denied/)
  t.match(d.stdout, /^rc=1$/m, 'OPENAI_API_KEY is not set inside')
  t.notMatch(d.stdout, /sk-launcher/)
  const bad = join(ws, 'bad.yaml')
  writeFileSync(bad, 'version: 1\nfilesystem:\n  read_only:\n    - /definitely/not/here\n')
  const e = cordon(['run', '--policy', bad, '--', 'echo', 'SHOULD-NOT-RUN'], ws)
  t.equal(e.status, 125)
  t.equal(e.stdout, '')
  t.match(e.stderr, /bad\.yaml:4/)
  t.match(e.stderr, /\/definitely\/not\/here/)
})

t.test('cordon doctor reports the kernel, and what a policy would lose', async (t) => {
  const ws = tempDir(t)
  const j = cordon(['doctor', '--json'], ws)
  t.equal(j.status, 0, j.stderr)
  const r = JSON.parse(j.stdout)
  t.equal(r.landlock.abi, probe().landlockAbi)
  t.equal(typeof r.features.seccomp, 'boolean')
  t.equal(r.landlock.tsync, r.landlock.abi >= 8)
  const h = cordon(['doctor'], ws)
  t.match(h.stdout, /landlock\s+ABI \d+/)
  t.match(h.stdout, /seccomp\s+(yes|no)/)
  t.match(h.stdout, /cgroup v2\s+(yes|no)/)
  const strict = join(ws, 'strict.yaml')
  writeFileSync(strict, 'version: 1\nrequirements:\n  landlock_abi: 99\n')
  const p = cordon(['doctor', '--policy', strict], ws)
  t.equal(p.status, 1)
  t.match(p.stdout, /would REFUSE to start here/)
})
