// compilePlan under Landlock ABI 0/1/3/4/6/7 fixtures: masks, what is lost, requirements that
// refuse to start, network port rules, env scrub, probe path, hash; explainPlan's words.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { compilePlan, explainPlan, loadPolicy, planWarnings, PolicyError, SYSTEM_PATHS } from '../../lib/policy/index.js'
import type { KernelFeatures, Plan, ResolvedPolicy } from '../../lib/policy/index.js'
import { FS, NET, SCOPE, DIR_ONLY, fsRightsAt } from '../../lib/kernel/abi.js'

const dir = t.testdir({ ws: { 'a.txt': 'x' }, ro: { 'f.txt': 'y' }, bin: { tool: '#!/bin/sh\n' }, 'file.conf': 'z' })
const ws = fs.realpathSync(path.join(dir, 'ws'))

const features = (abi: number, over: Partial<KernelFeatures> = {}): KernelFeatures => ({
  arch: 'x86_64', landlockAbi: abi, seccomp: true, seccompTsync: true, userNamespaces: true,
  networkNamespaces: true, cgroupV2: true, isRoot: false, ...over,
})
const env = { PATH: '/usr/bin:/bin', HOME: '/root', LANG: 'C.UTF-8', LC_ALL: 'C', OPENAI_API_KEY: 'sk-secret', TERM: 'xterm' }

function errorOf(fn: () => unknown): PolicyError {
  try {
    fn()
  } catch (e) {
    if (e instanceof PolicyError) return e
    throw e
  }
  throw new Error('expected a PolicyError')
}
const rule = (plan: Plan, p: string) => plan.landlock!.paths.find((r) => r.path === p)

const policy = (): ResolvedPolicy => loadPolicy({
  filesystem: {
    workspace: ws,
    read_only: [path.join(dir, 'ro'), path.join(dir, 'file.conf'), { path: '/no/such/dir', optional: true }],
    executable: [path.join(dir, 'bin')],
  },
})

t.test('ABI 7: every fs right handled, masks per rule kind, scopes, nothing lost', async (t) => {
  const plan = compilePlan(policy(), features(7), { env })
  const ll = plan.landlock!
  t.equal(plan.abi, 7)
  t.equal(ll.handledFs, fsRightsAt(7), 'handles every fs right so everything not granted is denied')
  t.equal(ll.handledFs & FS.ioctl_dev, FS.ioctl_dev)
  t.equal(ll.scoped, SCOPE.abstract_unix_socket | SCOPE.signal)
  t.equal(ll.handledNet, 0, 'network none: TCP left unhandled so loopback in the empty namespace works')
  t.equal(ll.restrictFlags, 0)
  t.equal(rule(plan, ws)!.access, fsRightsAt(7), 'workspace: all rights')
  t.equal(rule(plan, path.join(dir, 'ro'))!.access, FS.read_file | FS.read_dir, 'read_only dir: read')
  t.equal(rule(plan, path.join(dir, 'file.conf'))!.access, FS.read_file, 'read_only file: dir-only rights stripped')
  t.equal(rule(plan, path.join(dir, 'bin'))!.access, FS.read_file | FS.read_dir | FS.execute, 'executable: read + execute')
  t.equal(rule(plan, '/no/such/dir'), undefined, 'a missing optional path is left out')
  t.equal(rule(plan, '/usr')!.access, FS.read_file | FS.read_dir | FS.execute, 'system: /usr read + execute')
  t.notOk(plan.landlock!.paths.some((r) => r.path === '/etc'), '/etc is not granted whole')
  t.notOk(plan.landlock!.paths.some((r) => r.path === '/etc/shadow'), '/etc/shadow is not granted')
  t.ok(rule(plan, '/etc/passwd'), '/etc/passwd is granted')
  t.notOk(plan.landlock!.paths.some((r) => ['/etc/ssl', '/etc/ssl/private', '/etc/pki', '/etc/environment', '/dev/pts', '/dev/shm'].includes(r.path)),
    'no private-key directories, /etc/environment, other terminals or shared memory')
  const devnull = rule(plan, '/dev/null')!
  t.equal(devnull.access & DIR_ONLY, 0, '/dev/null: no dir rights')
  t.ok(devnull.access & FS.write_file && devnull.access & FS.truncate, '/dev/null writable and truncatable (`> /dev/null`)')
  t.notOk(plan.landlock!.paths.some((r) => r.path === '/usr/bin'), 'rules covered by a broader rule are dropped')
  for (const r of ll.paths) {
    t.equal(r.access & ~ll.handledFs, 0, `${r.path}: only handled rights`)
    t.ok(path.isAbsolute(r.path), `${r.path}: absolute`)
  }
  t.same(plan.lost, [], 'nothing lost at ABI 7')
  t.equal(plan.probePath, '/', 'probe: / (nothing grants reading it)')
  // home, tmp, env
  t.equal(plan.privateTmp, path.join(ws, '.cordon/tmp'))
  t.same(plan.mkdirs, [path.join(ws, '.cordon/home'), path.join(ws, '.cordon/tmp')])
  t.ok(rule(plan, path.join(ws, '.cordon/tmp')), 'the private /tmp has its own rule (a bind mount is not under the workspace on the path walk)')
  t.same(plan.env, { HOME: path.join(ws, '.cordon/home'), LANG: 'C.UTF-8', LC_ALL: 'C', PATH: '/usr/bin:/bin', TERM: 'xterm', TMPDIR: '/tmp' },
    'only pass-listed variables (LC_* by prefix); the API key is scrubbed; HOME is the private home')
  t.same(plan.network, { mode: 'none' })
  t.equal(plan.dropCapabilities, true)
  t.same(plan.rlimits, [{ resource: 'core', soft: 0, hard: 0 }, { resource: 'nofile', soft: 4096, hard: 4096 }, { resource: 'nproc', soft: 4096, hard: 4096 }])
  t.equal(plan.seccomp!.arch, 'x86_64')
  t.equal(plan.seccomp!.source, 'agent')
  t.ok(plan.seccomp!.filter.length > 0 && plan.seccomp!.filter.length % 8 === 0)
  t.match(plan.hash, /^[0-9a-f]{64}$/)
})

t.test('the hash is stable and covers the plan', async (t) => {
  const a = compilePlan(policy(), features(7), { env })
  const b = compilePlan(policy(), features(7), { env })
  t.equal(a.hash, b.hash, 'same inputs, same hash')
  const c = compilePlan(policy(), features(7), { env: { ...env, TERM: 'vt100' } })
  t.not(a.hash, c.hash, 'a different environment changes the hash')
  const d = compilePlan(policy(), features(6), { env })
  t.not(a.hash, d.hash, 'a different ABI changes the hash')
})

t.test('ABI 1, 3, 4, 6: what is lost, in words', async (t) => {
  const p1 = compilePlan(policy(), features(1), { env })
  t.equal(p1.landlock!.handledFs, fsRightsAt(1))
  t.equal(p1.landlock!.handledFs & (FS.refer | FS.truncate | FS.ioctl_dev), 0, 'ABI 1 handles no refer/truncate/ioctl_dev')
  t.equal(rule(p1, ws)!.access, fsRightsAt(1), 'masks limited to the ABI')
  t.equal(p1.landlock!.scoped, 0)
  t.match(p1.lost.join('\n'), /fs\.refer.*ABI 2/)
  t.match(p1.lost.join('\n'), /fs\.truncate.*ABI 3/)
  t.match(p1.lost.join('\n'), /fs\.ioctl_dev.*ABI 5/)
  t.match(p1.lost.join('\n'), /scope\.signal.*ABI 6.*this kernel has Landlock ABI 1/)

  const p3 = compilePlan(policy(), features(3), { env })
  t.ok(p3.landlock!.handledFs & FS.truncate)
  t.notMatch(p3.lost.join('\n'), /truncate/, 'truncate is enforced at ABI 3')
  t.equal(p3.lost.length, 3, `ABI 3 loses ioctl_dev and both scopes: ${p3.lost.join(' | ')}`)

  const p4 = compilePlan(policy(), features(4), { env })
  t.equal(p4.lost.length, 3)
  t.equal(p4.landlock!.handledNet, 0, 'network none: no TCP rules even at ABI 4')

  const p6 = compilePlan(policy(), features(6), { env })
  t.same(p6.lost, [], 'ABI 6 enforces everything this policy asks')
  t.equal(p6.landlock!.scoped, SCOPE.abstract_unix_socket | SCOPE.signal)
})

t.test('proxy mode: Landlock TCP rules at ABI >= 4, lost below', async (t) => {
  const p = loadPolicy({ filesystem: { workspace: ws }, network: { mode: 'proxy', bind: [8080], allow: ['example.com'] } })
  const plan = compilePlan(p, features(7), { env, gatePorts: [3128, 80, 3128] })
  t.same(plan.network, { mode: 'none' }, 'plan.network stays none (the engine wiring joins the gate namespace)')
  t.equal(plan.landlock!.handledNet, NET.bind_tcp | NET.connect_tcp)
  t.same(plan.landlock!.ports.map((r) => [r.port, r.access]), [[80, NET.connect_tcp], [3128, NET.connect_tcp], [8080, NET.bind_tcp]],
    'connect only to the gate ports, bind only network.bind')
  const p3 = compilePlan(p, features(3), { env, gatePorts: [3128] })
  t.equal(p3.landlock!.handledNet, 0)
  t.same(p3.landlock!.ports, [])
  t.match(p3.lost.join('\n'), /net\.connect_tcp.*ABI 4/)
  t.match(p3.lost.join('\n'), /net\.bind_tcp.*ABI 4/)
  const host = compilePlan(loadPolicy({ filesystem: { workspace: ws }, network: 'host' }), features(7), { env })
  t.same(host.network, { mode: 'host' })
  t.equal(host.landlock!.handledNet, 0)
})

t.test('requirements refuse to start; Landlock absent fails closed', async (t) => {
  const e0 = errorOf(() => compilePlan(policy(), features(0), { env }))
  t.match(e0.message, /requirements\.landlock_abi: this kernel has no Landlock.*refuses to run unconfined; .*requirements\.landlock_abi: 0/)
  const ok0 = compilePlan(loadPolicy({ filesystem: { workspace: ws }, requirements: { landlock_abi: 0 } }), features(0), { env })
  t.equal(ok0.landlock, null, 'explicitly accepted: no Landlock plan')
  t.match(ok0.lost[0], /NO filesystem confinement/)
  t.equal(ok0.probePath, null)

  const f = path.join(dir, 'req.yaml')
  fs.writeFileSync(f, `version: 1\nfilesystem:\n  workspace: ${ws}\nrequirements:\n  landlock_abi: 6\n`)
  const e6 = errorOf(() => compilePlan(loadPolicy(f), features(4), { env }))
  t.match(e6.message, new RegExp(`^${f.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:5: requirements\\.landlock_abi: the policy requires Landlock ABI 6; this kernel has ABI 4`))
  t.ok(compilePlan(loadPolicy(f), features(6), { env }), 'ABI 6 is enough')

  const er = errorOf(() => compilePlan(loadPolicy({ filesystem: { workspace: ws }, requirements: { rights: ['scope.signal'] } }), features(5), { env }))
  t.match(er.message, /requirements\.rights: the policy requires scope\.signal, which needs Landlock ABI 6; this kernel has ABI 5/)

  const strict = loadPolicy({ filesystem: { workspace: ws }, requirements: { best_effort: false } })
  const eb = errorOf(() => compilePlan(strict, features(5), { env }))
  t.match(eb.message, /requirements\.best_effort: this kernel cannot enforce everything.*scope\.abstract_unix_socket/)
  t.same(compilePlan(strict, features(7), { env }).lost, [], 'best_effort false is fine when nothing is lost')

  const noSeccomp = compilePlan(policy(), features(7, { seccomp: false }), { env })
  t.equal(noSeccomp.seccomp, null)
  t.match(noSeccomp.lost.join('\n'), /seccomp: not available/)
})

t.test('shared and no /tmp, no home, set overrides, aarch64 filter, probe path', async (t) => {
  const p = loadPolicy({
    filesystem: { workspace: ws, tmp: 'shared', home: 'none', read_only: ['/'] },
    process: { env: { pass: ['PATH', 'HOME'], set: { HOME: '/custom', MODE: 'x' } }, seccomp: 'none' },
  })
  const plan = compilePlan(p, features(7, { arch: 'aarch64' }), { env })
  t.equal(plan.privateTmp, null)
  t.same(plan.mkdirs, [])
  t.equal(rule(plan, fs.realpathSync('/tmp'))!.access, fsRightsAt(7), 'shared: the host /tmp read-write')
  t.same(plan.env, { HOME: '/custom', MODE: 'x', PATH: '/usr/bin:/bin' }, 'set wins; no TMPDIR without a private /tmp')
  t.equal(plan.seccomp, null, 'seccomp: none')
  t.not(plan.probePath, '/', 'the probe is not a path a rule grants read on')
  t.equal(plan.probePath, null, 'everything readable: no probe path')
  const q = compilePlan(loadPolicy({ filesystem: { workspace: ws } }), features(7, { arch: 'aarch64' }), { env: {} })
  t.equal(q.seccomp!.arch, 'aarch64')
  t.equal(q.env.PATH, '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'a default PATH when none is passed')
})

t.test('every system path is absolute and has a reason', async (t) => {
  for (const s of SYSTEM_PATHS) {
    t.ok(path.isAbsolute(s.path) && s.why.length > 0, s.path)
    t.notOk(/^\/etc\/(shadow|gshadow|sudoers|ssh\/ssh_host)/.test(s.path), `${s.path} is not a secret`)
  }
})

t.test('warnings: PATH directories the sandbox cannot execute from', async (t) => {
  const p = policy()
  const plan = compilePlan(p, features(7), { env: { PATH: `/usr/local/bin:/bin:${path.join(dir, 'bin')}:/root/.pyenv/shims` } })
  t.same(planWarnings(plan), [
    'PATH lists directories the sandbox cannot execute from: /root/.pyenv/shims (add them to filesystem.executable, or drop them from PATH)',
  ])
  t.match(explainPlan(plan, p), /Warnings\n {2}- PATH lists directories the sandbox cannot execute from: \/root\/\.pyenv\/shims/)
  t.same(planWarnings(compilePlan(p, features(7), { env })), [], 'no warning for system PATHs')
  const wide = compilePlan(loadPolicy({ filesystem: { workspace: ws, read_only: ['/'] } }), features(7), { env })
  t.match(planWarnings(wide).join('\n'), /^\/ \(filesystem\.read_only\[0\]\) contains your home directory .*~\/\.ssh/m, 'granting / warns about the home directory')
})

t.test('explainPlan says it in words', async (t) => {
  const p = policy()
  const text = explainPlan(compilePlan(p, features(3), { env }), p)
  t.match(text, /Landlock cannot deny anything inside an allowed tree/)
  t.match(text, new RegExp(`${ws.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}\\s+everything \\(read, write, create, delete, rename, execute\\)`))
  t.match(text, /\/usr\s+read, execute/)
  t.match(text, /ptrace, process_vm_readv.*fails with errno 1 \(EPERM\)/)
  t.match(text, /clone3: fails with errno 38 \(ENOSYS\)/)
  t.match(text, /other architectures and the x32 ABI fail with errno 1/)
  t.match(text, /none: a fresh network namespace with only loopback/)
  t.match(text, /environment: only these \d+ variables/)
  t.notMatch(text, /sk-secret/, 'the scrubbed key does not appear')
  t.match(text, /rlimits: core=0, nofile=4096, nproc=4096/)
  t.match(text, /Lost on this kernel\n {2}- ioctl on devices/)
  t.match(text, /Not scoped \(Landlock ABI < 6\)/)
  t.match(text, /opening \/ must fail with EACCES/)
})
