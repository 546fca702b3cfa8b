/** The addon's shims: argument checks, errno mapping, probe facts. Nothing here confines the runner. */
import t from 'tap'
import { readFileSync } from 'node:fs'
import { addon, helperPath } from '../../lib/kernel/addon.js'
import { probe, doctor } from '../../lib/kernel/probe.js'

const a = addon()

t.test('exports exactly the documented shims', async (t) => {
  t.same(Object.keys(a).sort(), [
    'closeFd', 'execve', 'getNoNewPrivs', 'landlockAbi', 'landlockAddPathRule', 'landlockAddPortRule',
    'landlockCreateRuleset', 'landlockRestrictSelf', 'seccompGetMode', 'seccompSetFilter', 'setNoNewPrivs', 'setrlimit',
  ])
})

t.test('errors carry code, errno and syscall', async (t) => {
  const e1 = t.throws(() => a.landlockAddPathRule(9999, '/usr', 1)) as NodeJS.ErrnoException
  t.equal(e1.code, 'EBADF')
  t.equal(e1.errno, -9)
  t.equal(e1.syscall, 'landlock_add_rule')
  const e2 = t.throws(() => a.landlockAddPathRule(9999, '/no/such/path/for/cordon', 1)) as NodeJS.ErrnoException
  t.equal(e2.code, 'ENOENT')
  t.equal(e2.syscall, 'open')
  t.equal(e2.path, '/no/such/path/for/cordon')
  const e3 = t.throws(() => a.closeFd(99999)) as NodeJS.ErrnoException
  t.equal(e3.code, 'EBADF')
  const e4 = t.throws(() => a.execve('/no/such/exe', ['x'], [])) as NodeJS.ErrnoException
  t.equal(e4.code, 'ENOENT')
  t.equal(e4.syscall, 'execve')
  t.throws(() => a.seccompSetFilter(new Uint8Array(7), 0), TypeError, 'filter length is checked')
  t.throws(() => (a.landlockCreateRuleset as (...x: unknown[]) => number)(-1, 0, 0), TypeError)
  t.throws(() => (a.landlockAddPortRule as (...x: unknown[]) => void)(3, 70000, 1), TypeError)
})

t.test('probe() matches the kernel', async (t) => {
  const f = probe()
  t.equal(f.landlockAbi, a.landlockAbi())
  t.equal(f.arch, process.arch === 'arm64' ? 'aarch64' : 'x86_64')
  t.equal(f.isRoot, process.geteuid!() === 0)
  t.equal(a.getNoNewPrivs(), /NoNewPrivs:\s*1/.test(readFileSync('/proc/self/status', 'utf8')))
  t.equal(a.seccompGetMode(), Number(/Seccomp:\s*(\d)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]))
  if (f.landlockAbi > 0) {
    const fd = a.landlockCreateRuleset(1, 0, 0)
    t.ok(fd > 2, 'a ruleset fd')
    a.landlockAddPathRule(fd, '/usr', 1)
    a.closeFd(fd)
  }
  const d = doctor()
  t.equal(d.helper, helperPath())
  t.equal(d.landlock.abi, f.landlockAbi)
  t.equal(d.landlock.tsync, f.landlockAbi >= 8)
})
