/** The addon's shims: argument checks, errno mapping, probe facts. Nothing here confines the runner. */
import t from 'tap'
import { readFileSync, openSync, closeSync } from 'node:fs'
import { addon, helperPath } from '../../lib/kernel/addon.js'
import { probe, doctor } from '../../lib/kernel/probe.js'

const a = addon()

t.test('exports exactly the documented shims and the relay', async (t) => {
  t.same(Object.keys(a).sort(), [
    'closeFd', 'execve', 'getNoNewPrivs', 'landlockAbi', 'landlockAddPathRule', 'landlockAddPortRule',
    'landlockCreateRuleset', 'landlockRestrictSelf', 'relayAdd', 'relayClose', 'relayStart', 'seccompGetMode',
    'seccompSetFilter', 'setNoNewPrivs', 'setrlimit',
  ])
})

t.test('the relay checks its arguments and refuses what is not a stream socket', async (t) => {
  t.throws(() => (a.relayAdd as (...x: unknown[]) => void)(0, 3, 4, null, null, 0), TypeError, 'id 0 is refused')
  t.throws(() => (a.relayAdd as (...x: unknown[]) => void)(1, 3, 4, 'text', null, 0), TypeError, 'toA must be bytes')
  t.throws(() => (a.relayAdd as (...x: unknown[]) => void)(1, 3, 4, null, null, 0, -1), TypeError, 'a negative send buffer is refused')
  t.throws(() => a.relayAdd(1, 3, 4, null, null, 0, 65 * 1024 * 1024), TypeError, 'a send buffer over 64 MiB is refused')
  t.throws(() => (a.relayClose as (...x: unknown[]) => void)(1), TypeError, 'a close needs a reason')
  // lib/kernel/relay.ts starts it once per process; a second start is a programming error
  a.relayStart(() => undefined)
  t.throws(() => a.relayStart(() => undefined), TypeError, 'started once per environment')
  const fd = openSync('/proc/self/status', 'r')
  const e = t.throws(() => a.relayAdd(1, fd, fd, null, null, 0)) as NodeJS.ErrnoException
  closeSync(fd)
  t.equal(e.code, 'ENOTSOCK', 'a file descriptor that is not a stream socket is refused with ENOTSOCK')
  t.equal(e.syscall, 'relayAdd')
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
