/**
 * lock() confines every thread of the calling process. Each case runs in a child process (the
 * tap runner itself is never locked); the child starts a worker thread, locks, then tries the
 * denied file from the main thread, the libuv threadpool, the old worker and a new worker.
 */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { writeFileSync, existsSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { tempDir } from '../fixtures/kernel/run.js'
import { probe } from '../../lib/kernel/probe.js'

const CHILD = fileURLToPath(new URL('../fixtures/kernel/lock-child.ts', import.meta.url))
const abi = probe().landlockAbi
const skip = abi === 0 ? 'Landlock is not available on this kernel' : false

function runChild(cfg: Record<string, unknown>, extraEnv: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', CHILD, JSON.stringify(cfg)], {
    cwd: fileURLToPath(new URL('../..', import.meta.url)),
    env: { ...process.env, OPENAI_API_KEY: 'sk-outside-secret', ...extraEnv },
    encoding: 'utf8',
    timeout: 60_000,
  })
  const line = r.stdout.trim().split('\n').pop() ?? ''
  let out: Record<string, any> = {}
  try {
    out = JSON.parse(line)
  } catch {
    /* reported below */
  }
  return { status: r.status, stderr: r.stderr, out }
}

function setup(t: { teardown(fn: () => void): void }) {
  const workspace = tempDir(t)
  // not under /tmp: with a private /tmp a secret there would merely be hidden, not denied
  const outside = tempDir(t, 'cordon-outside-', '/var/tmp')
  const secret = join(outside, 'secret.txt')
  writeFileSync(secret, 'TOP SECRET')
  return { workspace, outside, secret }
}

t.test('hand-made plan: every thread is confined after lock() (re-exec below ABI 8)', { skip }, async (t) => {
  const s = setup(t)
  const r = runChild({ kind: 'hand', ...s })
  t.equal(r.status, 0, r.out.lockError ?? r.stderr)
  const o = r.out
  t.match(r.stderr, /lock-child: run pid=\d+ marker=no worker-read=ok/, 'control: a worker could read the secret before lock()')
  t.equal(o.report?.mode, 'reexec', 'a fresh network namespace is per-thread: the re-exec path on every ABI')
  t.equal(o.readSync, 'EACCES', 'readFileSync denied')
  t.equal(o.readAsync, 'EACCES', 'fs.readFile on the threadpool denied')
  t.equal(o.workerBefore, 'EACCES', 'worker created before lock() denied')
  t.equal(o.workerAfter, 'EACCES', 'worker created after lock() denied')
  t.equal(o.readAllowed, 'ok', 'system files still readable')
  t.equal(o.writeOutside, 'EACCES', 'write outside the workspace denied')
  t.equal(o.writeInside, 'ok', 'write inside the workspace works')
  t.notOk(existsSync(join(s.outside, 'written-by-child')))
  t.equal(o.key, null, 'OPENAI_API_KEY scrubbed from the environment')
  t.equal(o.marker, null, 'the re-exec marker is removed from process.env')
  t.ok(o.report.threadsVerified >= 2, 'several threads verified')
  t.equal(o.netns, '1')
  t.equal((r.stderr.match(/lock-child: run/g) ?? []).length, abi >= 8 ? 1 : 2, 'code before lock() ran twice (documented)')
})

t.test('a plan that changes across the re-exec is refused, not trusted', { skip: skip || (abi >= 8 && 'in-process path') }, async (t) => {
  const s = setup(t)
  const r = runChild({ kind: 'hand', drift: true, ...s })
  t.equal(r.status, 3)
  t.match(r.out.lockError, /differs from the one applied/)
})

t.test('a forged marker in an unconfined process is caught by verification', { skip }, async (t) => {
  const s = setup(t)
  const r = runChild({ kind: 'hand', forge: true, ...s })
  t.equal(r.status, 3)
  t.match(r.out.lockError, /differs|not confined/)
})

t.test('a marker from another pid is ignored (a normal lock follows)', { skip }, async (t) => {
  const s = setup(t)
  const r = runChild({ kind: 'hand', ...s }, { CORDON_LOCK_REEXEC: JSON.stringify({ v: 1, pid: 1, hash: 'x', netns: 'y' }) })
  t.equal(r.status, 0, r.out.lockError ?? r.stderr)
  t.equal(r.out.readAsync, 'EACCES')
})

t.test('default agent policy (+ the repo read-only, executable): lock() confines every thread', { skip }, async (t) => {
  const s = setup(t)
  const repo = fileURLToPath(new URL('../..', import.meta.url))
  // executable: tsx (which runs this TypeScript fixture) starts esbuild from node_modules
  const r = runChild({ kind: 'policy', policy: { filesystem: { executable: [repo] } }, ...s })
  t.equal(r.status, 0, r.out.lockError ?? r.stderr)
  const o = r.out
  t.equal(o.report?.mode, 'reexec', 'network none and a private /tmp need the re-exec path')
  t.equal(o.report?.network, 'none')
  t.ok(o.report?.seccomp?.instructions > 10, 'the agent seccomp filter is installed')
  t.equal(o.readSync, 'EACCES')
  t.equal(o.readAsync, 'EACCES')
  t.equal(o.workerBefore, 'EACCES')
  t.equal(o.workerAfter, 'EACCES')
  t.equal(o.readAllowed, 'ok')
  t.equal(o.writeOutside, 'EACCES')
  t.equal(o.writeInside, 'ok')
  t.equal(o.key, null, 'OPENAI_API_KEY scrubbed')
  const root = process.getuid?.() === 0
  t.equal(o.report?.hideProcesses, root, `other processes ${root ? 'hidden (root)' : 'visible (not root: process.others auto)'}`)
  t.equal(o.parentCmdline, root ? 'ENOENT' : 'ok', "the launcher's /proc/<pid>/cmdline")
})

t.test('lock() refuses, before re-exec, a policy under which the launcher could not run', { skip }, async (t) => {
  const s = setup(t)
  const r = runChild({ kind: 'policy', policy: {}, ...s })
  t.equal(r.status, 3)
  t.match(r.out.lockError, /would not be readable in the re-executed, confined process; add its directory to filesystem.read_only/)
  t.equal((r.stderr.match(/lock-child: run/g) ?? []).length, 1, 'no re-exec happened')
})
