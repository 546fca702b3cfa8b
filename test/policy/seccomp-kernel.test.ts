// The compiled filters on the real kernel (in child processes: the test runner is never
// filtered): the kernel accepts them, denied calls fail with EPERM, ordinary work goes on.
import t from 'tap'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { probe } from '../../lib/kernel/index.js'

const here = path.dirname(fileURLToPath(import.meta.url))
let seccomp = false
let why = ''
try {
  seccomp = probe().seccomp
  if (!seccomp) why = 'this kernel has no seccomp filter mode'
} catch (e) {
  why = `the cordon addon is not built (${(e as Error).message})`
}

function child(which: string): Record<string, string> {
  const dir = t.testdir({})
  const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(here, 'fixtures/seccomp-child.ts'), which, dir],
    { encoding: 'utf8', timeout: 60_000, cwd: path.resolve(here, '../..') })
  if (r.status !== 0) throw new Error(`child failed (${r.status}): ${r.stderr}`)
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, string>
}

t.test('agent profile on this kernel', { skip: seccomp ? false : why }, async (t) => {
  const o = child('agent')
  t.equal(o.unixListen, 'EPERM', 'socket(AF_UNIX) for a pathname socket server fails with EPERM')
  t.equal(o.tcpListen, 'ok', 'a TCP server on loopback still works')
  t.equal(o.child, 'hi', 'child processes and pipes still work (socketpair, clone without namespace flags)')
  t.match(o.unshare, /^1 .*Operation not permitted/, 'unshare -U fails with EPERM')
  t.equal(o.mkdir, 'ok', 'ordinary filesystem work goes on')
  if (o.reexec !== '0') {
    // Node with libuv io_uring rings (24+): the filter was installed, then the child re-executed
    t.equal(o.seccompStatus, '2', `filter kept across execve (${o.reexec} io_uring rings before)`)
    t.equal(o.ringsAfter, '0', 'no io_uring instance under the filter (io_uring_setup denied; libuv fell back)')
  }
})

t.test('a program with long jumps is accepted and right', { skip: seccomp ? false : why }, async (t) => {
  const o = child('long')
  t.ok(Number(o.instructions) > 1000, `${o.instructions} instructions: jumps over the ioctl block are longer than 255`)
  t.equal(o.mkdir, 'EPERM', 'the conditional mkdir rule past the long blocks applies')
  t.equal(o.tcpListen, 'ok')
  t.equal(o.child, 'hi')
})
