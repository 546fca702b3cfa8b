/**
 * Pure parts of lib/sandbox: the plan -> helper argv serialization, the lock mode decision, the
 * ABI >= 8 in-process path (driven with a fake addon, since this kernel may be older), exit status.
 */
import t from 'tap'
import { helperArgv } from '../../lib/sandbox/argv.js'
import { chooseLockMode, applyInProcess, planGrants, ioUringFds, lockWith, SECCOMP_FILTER_FLAG_TSYNC, RLIMIT } from '../../lib/sandbox/lock.js'
import { symlinkSync } from 'node:fs'
import { exitStatus } from '../../lib/sandbox/spawn.js'
import type { CordonAddon } from '../../lib/kernel/addon.js'
import type { KernelFeatures, Plan } from '../../lib/policy/plan.js'
import { RESTRICT_SELF, FS, DIR_ONLY } from '../../lib/kernel/abi.js'
import { handPlan, REPO } from '../fixtures/kernel/handplan.js'

const feat = (abi: number): KernelFeatures => ({
  arch: 'x86_64', landlockAbi: abi, seccomp: true, seccompTsync: true, userNamespaces: true,
  networkNamespaces: true, cgroupV2: true, isRoot: true,
})

t.test('helperArgv serializes every plan element in a stable form', async (t) => {
  const plan = handPlan({ abi: 6, workspace: '/w', network: { mode: 'none' }, privateTmp: '/w/.cordon/tmp' })
  // handPlan grants the checkout too; leave it out here so the expected argv does not depend on
  // where the checkout lives (a clone under /tmp would add --keep-path)
  const noRepo = (p: Plan) => { p.landlock!.paths = p.landlock!.paths.filter((r) => r.path !== REPO); return p }
  noRepo(plan)
  plan.mkdirs = ['/w/.cordon/home']
  plan.rlimits = [{ resource: 'nofile', soft: 1024, hard: null }]
  plan.landlock!.ports = [{ port: 8080, access: 2, origin: 'x' }]
  plan.landlock!.restrictFlags = 2
  plan.seccomp = { arch: 'x86_64', filter: new Uint8Array([0x06, 0, 0, 0, 0, 0, 0xff, 0x7f]), source: 'allow' }
  const a = helperArgv(plan)
  t.same(a.slice(0, 4), ['--mkdir', '/w/.cordon/home', '--rlimit', 'nofile=1024:inf'])
  t.same(a.slice(4, 9), ['--netns', 'new', '--private-tmp', '/w/.cordon/tmp', '--drop-caps'])
  t.same(a.slice(9, 17), ['--ll-fs', String(plan.landlock!.handledFs), '--ll-net', '0', '--ll-scope', '3', '--ll-flags', '2'])
  t.ok(a.includes('--ll-path-opt') && a.includes('13:/lib64'), 'optional rule marked')
  t.ok(a.includes(`${plan.landlock!.paths.at(-1)!.access}:/w`), 'workspace rule')
  t.same(a.slice(-4), ['--ll-port', '2:8080', '--seccomp', '060000000000ff7f'])
  t.ok(a.includes(`${plan.landlock!.paths.at(-1)!.access}:/tmp`), '/tmp gets the rights of the private directory it shows')
  t.notOk(a.includes('--keep-path'), 'nothing under the host /tmp to keep')
  const inTmp = noRepo(handPlan({ abi: 6, workspace: '/tmp/ws', network: { mode: 'none' }, privateTmp: '/tmp/ws/.cordon/tmp', readWrite: ['/tmp/ws/sub', '/tmp/other'] }))
  const b = helperArgv(inTmp)
  t.same(b.filter((_, i) => b[i - 1] === '--keep-path'), ['/tmp/other', '/tmp/ws'], 'outermost rule paths under /tmp are kept visible')
  const join = helperArgv({ ...plan, network: { mode: 'join', path: '/run/netns/x' }, privateTmp: null, dropCapabilities: false, landlock: null, seccomp: null, mkdirs: [], rlimits: [] })
  t.same(join, ['--netns-path', '/run/netns/x'])
  t.same(helperArgv({ ...plan, network: { mode: 'host' }, privateTmp: null, dropCapabilities: false, landlock: null, seccomp: null, mkdirs: [], rlimits: [] }), [])
})

t.test('lock mode: in-process TSYNC only when nothing per-thread or in-memory remains', async (t) => {
  const env = { PATH: '/usr/bin', HOME: '/w' }
  const base = (): Plan => ({ ...handPlan({ abi: 8, workspace: '/w', network: { mode: 'host' }, env }), dropCapabilities: false })
  t.same(chooseLockMode(base(), feat(8), { ...env }, false), { mode: 'tsync', reasons: [] })
  t.equal(chooseLockMode(base(), feat(7), { ...env }, false).mode, 'reexec', 'ABI 7')
  t.match(chooseLockMode(base(), feat(7), { ...env }, false).reasons[0], /ABI 7 < 8/)
  t.equal(chooseLockMode({ ...base(), network: { mode: 'none' } }, feat(8), { ...env }, false).mode, 'reexec', 'netns')
  t.equal(chooseLockMode({ ...base(), privateTmp: '/w/t' }, feat(8), { ...env }, false).mode, 'reexec', 'private tmp')
  t.equal(chooseLockMode({ ...base(), dropCapabilities: true }, feat(8), { ...env }, true).mode, 'reexec', 'caps held')
  t.equal(chooseLockMode({ ...base(), dropCapabilities: true }, feat(8), { ...env }, false).mode, 'tsync', 'no caps to drop')
  t.equal(chooseLockMode(base(), feat(8), { ...env, OPENAI_API_KEY: 'sk' }, false).mode, 'reexec', 'env scrub')
  t.equal(chooseLockMode(base(), { ...feat(8), seccompTsync: false }, { ...env }, false).mode, 'tsync', 'no seccomp in plan')
  t.equal(chooseLockMode({ ...base(), seccomp: { arch: 'x86_64', filter: new Uint8Array(8), source: 'x' } }, { ...feat(8), seccompTsync: false }, { ...env }, false).mode, 'reexec')
})

t.test('lock mode: a process holding io_uring rings (libuv in Node >= 24) is re-executed, never filtered in place', async (t) => {
  const env = { PATH: '/usr/bin', HOME: '/w' }
  const plan: Plan = { ...handPlan({ abi: 8, workspace: '/w', network: { mode: 'host' }, env }), dropCapabilities: false }
  const m = chooseLockMode(plan, feat(8), { ...env }, false, 3)
  t.equal(m.mode, 'reexec')
  t.match(m.reasons.join('\n'), /3 io_uring instance/)
  t.equal(chooseLockMode(plan, feat(8), { ...env }, false, 0).mode, 'tsync')
  // detection reads the fd links: only anon_inode:[io_uring] counts
  const dir = t.testdir({})
  symlinkSync('anon_inode:[io_uring]', `${dir}/4`)
  symlinkSync('anon_inode:[io_uring]', `${dir}/12`)
  symlinkSync('anon_inode:[eventpoll]', `${dir}/5`)
  symlinkSync('/dev/null', `${dir}/0`)
  t.equal(ioUringFds(dir), 2)
  t.equal(typeof ioUringFds(), 'number', 'reads /proc/self/fd of this process')
})

t.test('in-process path (ABI >= 8) restricts with TSYNC and installs seccomp with TSYNC', async (t) => {
  const calls: Array<[string, ...unknown[]]> = []
  const fake: CordonAddon = {
    landlockAbi: () => 8,
    landlockCreateRuleset: (...a) => (calls.push(['create', ...a]), 42),
    landlockAddPathRule: (...a) => void calls.push(['path', ...a]),
    landlockAddPortRule: (...a) => void calls.push(['port', ...a]),
    landlockRestrictSelf: (...a) => void calls.push(['restrict', ...a]),
    setNoNewPrivs: () => void calls.push(['nnp']),
    getNoNewPrivs: () => true,
    seccompSetFilter: (...a) => void calls.push(['seccomp', ...a]),
    seccompGetMode: () => 2,
    setrlimit: (...a) => void calls.push(['rlimit', ...a]),
    closeFd: (...a) => void calls.push(['close', ...a]),
    execve: () => { throw new Error('must not re-exec') },
  }
  const plan = handPlan({ abi: 8, workspace: '/tmp', network: { mode: 'host' } })
  plan.landlock!.restrictFlags = RESTRICT_SELF.log_new_exec_on
  plan.landlock!.paths.push({ path: '/etc/hostname', access: FS.read_file | FS.read_dir, optional: false, origin: 'file' })
  plan.landlock!.paths.push({ path: '/no/such/optional', access: FS.read_file, optional: true, origin: 'opt' })
  plan.landlock!.ports = [{ port: 443, access: 2, origin: 'p' }]
  plan.rlimits = [{ resource: 'nofile', soft: 100, hard: 200 }]
  const filter = new Uint8Array(16)
  plan.seccomp = { arch: 'x86_64', filter, source: 'test' }
  applyInProcess(plan, fake)
  const names = calls.map((c) => c[0])
  t.same(names.slice(0, 2), ['rlimit', 'create'])
  t.same(calls[0], ['rlimit', RLIMIT.nofile, 100, 200])
  t.ok(names.indexOf('nnp') < names.indexOf('restrict'), 'no_new_privs before restrict_self')
  t.ok(names.indexOf('restrict') < names.indexOf('seccomp'), 'Landlock before seccomp')
  const restrict = calls.find((c) => c[0] === 'restrict')!
  t.equal((restrict[2] as number) & RESTRICT_SELF.tsync, RESTRICT_SELF.tsync, 'LANDLOCK_RESTRICT_SELF_TSYNC set')
  t.equal((restrict[2] as number) & RESTRICT_SELF.log_new_exec_on, RESTRICT_SELF.log_new_exec_on, 'plan flags kept')
  const sc = calls.find((c) => c[0] === 'seccomp')!
  t.equal(sc[1], filter)
  t.equal(sc[2], SECCOMP_FILTER_FLAG_TSYNC, 'SECCOMP_FILTER_FLAG_TSYNC')
  const file = calls.find((c) => c[0] === 'path' && c[2] === '/etc/hostname')!
  t.equal((file[3] as number) & DIR_ONLY, 0, 'directory-only rights stripped on a file')
  t.notOk(calls.some((c) => c[2] === '/no/such/optional'), 'missing optional path skipped')
  t.ok(calls.some((c) => c[0] === 'port' && c[2] === 443))
  t.same(calls.at(-2), ['close', 42])

  // lockWith on ABI 8: in place only without io_uring rings, before and after the restriction
  const env = Object.fromEntries(Object.entries(process.env).filter((e): e is [string, string] => e[1] !== undefined))
  const inPlace = () => ({ ...handPlan({ abi: 8, workspace: '/tmp', network: { mode: 'host' }, env }), dropCapabilities: false })
  const deps = (counts: number[]) => ({ addon: fake, features: feat(8), ioUringFds: () => counts.shift() ?? 0 })
  calls.length = 0
  t.equal((await lockWith(inPlace, deps([0, 0]))).mode, 'tsync', 'no rings: confined in place')
  t.ok(calls.some((c) => c[0] === 'restrict'))
  calls.length = 0
  await t.rejects(lockWith(inPlace, deps([3])), /plan cannot be applied here|must not re-exec/, 'rings present: the re-exec path (here it cannot run the ABI 8 plan)')
  t.notOk(calls.some((c) => c[0] === 'restrict' || c[0] === 'seccomp'), 'nothing installed in place while rings exist')
  calls.length = 0
  await t.rejects(lockWith(inPlace, deps([0, 1])), /io_uring instance\(s\) appeared while confining in place/, 'a ring that appeared meanwhile: lock() fails')

  // a missing required path stops before anything is restricted
  calls.length = 0
  const bad = handPlan({ abi: 8, workspace: '/no/such/workspace', network: { mode: 'host' } })
  t.throws(() => applyInProcess(bad, fake), /no\/such\/workspace/)
  t.notOk(calls.some((c) => c[0] === 'restrict' || c[0] === 'seccomp'))
  t.ok(calls.some((c) => c[0] === 'close'), 'ruleset fd closed')
})

t.test('planGrants: subtree coverage for the re-exec preflight', async (t) => {
  const plan = handPlan({ abi: 7, workspace: '/w', network: { mode: 'host' } })
  t.ok(planGrants(plan, '/usr/bin/node', FS.execute | FS.read_file))
  t.ok(planGrants(plan, '/w/x/y.js', FS.read_file))
  t.notOk(planGrants(plan, '/wx/y.js', FS.read_file), 'prefix is per path component')
  t.notOk(planGrants(plan, '/opt/app/main.js', FS.read_file))
  t.ok(planGrants({ ...plan, landlock: null }, '/opt/x', FS.read_file))
})

t.test('exitStatus: code, or 128 + signal number', async (t) => {
  t.equal(exitStatus(3, null), 3)
  t.equal(exitStatus(null, 'SIGKILL'), 137)
  t.equal(exitStatus(null, 'SIGTERM'), 143)
})
