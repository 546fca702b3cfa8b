/**
 * process.others: a sandbox started as root gets a procfs of its own (hidepid=invisible), so the
 * host's processes are not listed and their cmdline and status cannot be read; the sandbox's own
 * processes, /proc/self and the system files in /proc stay. Without root, `hidden` gets the same
 * through a PID namespace of its own (last test). The attacks run inside a confined child; the
 * same reads succeed with `others: visible`, which is what every sandbox had before.
 */
import t, { type Test } from 'tap'
import { spawn } from '../../lib/sandbox/spawn.js'
import { probe } from '../../lib/kernel/probe.js'
import { compilePlan, loadPolicy } from '../../lib/policy/index.js'
import { helperArgv } from '../../lib/sandbox/argv.js'
import { tempDir } from '../fixtures/kernel/run.js'
import { spawn as spawnChild, spawnSync } from 'node:child_process'
import { chmodSync, chownSync, existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'

const ROOT = resolve(import.meta.dirname, '..', '..')

const f = probe()
const skip = f.landlockAbi === 0 ? 'Landlock is not available on this kernel' : !f.isRoot ? 'this case is the root one (hidepid); the unprivileged one is below' : false

function run(policy: object, script: string, ws: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const c = spawn(policy, 'sh', ['-c', script], { workspace: ws, stdio: 'pipe' })
    let stdout = ''
    let stderr = ''
    c.stdout!.setEncoding('utf8').on('data', (d) => (stdout += d))
    c.stderr!.setEncoding('utf8').on('data', (d) => (stderr += d))
    c.on('error', reject)
    c.on('close', (code) => resolve({ code, stdout, stderr }))
  })
}

// what an attacker inside looks at: the process list, the launcher's (this test runner's)
// command line and status, and whether it can put a full procfs back
const LOOK = `
echo "self=$$"
echo "pids=$(ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' ')"
if cat /proc/${process.pid}/cmdline >/dev/null 2>&1; then echo launcher_cmdline=readable; else echo launcher_cmdline=unreadable; fi
if [ -e /proc/${process.pid} ]; then echo launcher_listed=yes; else echo launcher_listed=no; fi
if grep -q '^Name:' /proc/self/status; then echo self_status=readable; fi
if grep -q '^MemTotal:' /proc/meminfo; then echo meminfo=readable; fi
sleep 1 & echo "child=$!"; echo "after=$(ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' ')"; kill $! 2>/dev/null
if umount /proc 2>/dev/null; then echo umount=done; else echo umount=refused; fi
if mount -t proc proc /proc 2>/dev/null; then echo mount=done; else echo mount=refused; fi
if [ -e /proc/${process.pid} ]; then echo launcher_listed_after=yes; else echo launcher_listed_after=no; fi
`
const parse = (s: string) => Object.fromEntries(s.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]))

t.test('as root the host processes are hidden; the same reads work with others: visible', { skip }, async (t) => {
  const ws = tempDir(t)
  const hidden = await run({}, LOOK, ws)
  t.equal(hidden.code, 0, hidden.stderr)
  const h = parse(hidden.stdout)
  const pids = h.pids!.trim().split(' ').map(Number)
  t.ok(pids.includes(Number(h.self)), `the sandbox lists itself (pid ${h.self})`)
  t.notOk(pids.includes(process.pid), "the launcher's pid is not listed")
  t.notOk(pids.includes(1), 'nor is pid 1')
  // the sandbox's shell and the processes it started for the listing (pids only grow meanwhile)
  t.ok(pids.every((p) => p >= Number(h.self)), `only the sandbox's own processes are listed (${h.pids})`)
  t.equal(h.launcher_cmdline, 'unreadable', "the launcher's /proc/<pid>/cmdline cannot be read")
  t.equal(h.launcher_listed, 'no')
  t.equal(h.self_status, 'readable', '/proc/self still works')
  t.equal(h.meminfo, 'readable', "the system's /proc files still work")
  t.ok(h.after!.split(' ').map(Number).includes(Number(h.child)), 'a process the sandbox starts is listed')
  t.equal(h.umount, 'refused', 'the sandbox cannot unmount its /proc')
  t.equal(h.mount, 'refused', 'nor mount a procfs of its own choosing')
  t.equal(h.launcher_listed_after, 'no', 'and the launcher stays hidden')

  const visible = await run({ process: { others: 'visible' } }, LOOK, ws)
  t.equal(visible.code, 0, visible.stderr)
  const v = parse(visible.stdout)
  t.equal(v.launcher_cmdline, 'readable', "control: with others: visible the launcher's cmdline is readable")
  t.ok(v.pids!.split(' ').map(Number).includes(process.pid), 'and its pid listed')
  t.ok(v.pids!.trim().split(' ').length > pids.length + 10, `with the whole host list (${v.pids!.trim().split(' ').length} pids against ${pids.length})`)
})

t.test('compile: auto, hidden and visible, as root and not', async (t) => {
  const ws = tempDir(t)
  const feat = (isRoot: boolean, abi = 7) => ({ ...f, landlockAbi: abi, isRoot })
  const plan = (others: string | undefined, isRoot: boolean, extra: object = {}, abi = 7) =>
    compilePlan(loadPolicy({ filesystem: { workspace: ws }, ...(others ? { process: { others } } : {}), ...extra }, { workspace: ws }), feat(isRoot, abi))
  t.equal(plan(undefined, true).hideProcesses, true, 'the default (auto) hides them as root')
  t.notOk(plan(undefined, true).hideProcessesBestEffort, 'and insists')
  t.equal(plan('visible', true).hideProcesses, false, 'visible never hides')
  // without root: `hidden` gets a PID namespace (in a user namespace) where one can be made
  const feat2 = (userNamespaces: boolean) => ({ ...f, landlockAbi: 7, isRoot: false, userNamespaces })
  const plan2 = (others: string, userNamespaces: boolean, opts: { inPlace?: boolean } = {}, extra: object = {}) =>
    compilePlan(loadPolicy({ filesystem: { workspace: ws }, process: { others }, ...extra }, { workspace: ws }), feat2(userNamespaces), opts)
  const nr = plan2('hidden', true)
  t.equal(nr.hideProcesses, true, 'hidden as non-root: hidden (a PID namespace of its own)')
  t.same(nr.lost, [], 'nothing lost')
  t.ok(helperArgv(nr).includes('--hide-processes') && !helperArgv(nr).includes('--hide-processes-try'), 'the helper must hide them or refuse')
  const auto = plan2('auto', true)
  t.same([auto.hideProcesses, auto.hideProcessesBestEffort, auto.lost], [true, true, []], 'auto as non-root: a PID namespace where the kernel allows one')
  t.ok(helperArgv(auto).includes('--hide-processes-try'), 'the helper may go on with the host list where the kernel refuses it')
  t.same([plan2('auto', false).hideProcesses, plan2('auto', false).lost], [false, []], 'auto without user namespaces: visible, nothing reported lost')
  t.same([plan2('auto', true, { inPlace: true }).hideProcesses, plan2('auto', true, { inPlace: true }).lost], [false, []], 'auto in lock() without root: visible, nothing reported lost')
  const noUserns = plan2('hidden', false)
  t.equal(noUserns.hideProcesses, false)
  t.match(noUserns.lost.join('\n'), /process\.others: hidden: the host's processes stay listed in \/proc .* user namespaces are not available/, 'without user namespaces: reported lost, saying why')
  t.throws(() => plan2('hidden', false, {}, { requirements: { best_effort: false } }), /cannot enforce everything the policy asks \(best_effort is false\): .*process\.others: hidden/, 'and refused when nothing may be lost')
  const inPlace = plan2('hidden', true, { inPlace: true })
  t.equal(inPlace.hideProcesses, false, 'lock() (in place) cannot move the process it confines into a PID namespace')
  t.match(inPlace.lost.join('\n'), /needs a PID namespace, which lock\(\) cannot give the process it confines/, 'and says so')
  t.equal(compilePlan(loadPolicy({ filesystem: { workspace: ws }, process: { others: 'hidden' } }, { workspace: ws }), feat(true), { inPlace: true }).hideProcesses, true, 'as root lock() hides them (hidepid keeps the pid)')
  t.ok(helperArgv(plan('hidden', true)).includes('--hide-processes'), 'the helper is told to hide them')
  t.notOk(helperArgv(plan('visible', true)).includes('--hide-processes'))
  t.not(plan('hidden', true).hash, plan('visible', true).hash, 'the plan hash covers it')
})

/**
 * Without root: `others: hidden` puts the sandbox in a PID namespace of its own (a user namespace
 * owns it), with the helper's init as pid 1 and a procfs of that namespace on /proc. The attacks
 * and the checks of what must still work (exit status, signals, no process outliving the sandbox)
 * run in a launcher that is uid 65534 (setpriv), through spawn() of the built package.
 */
const dist = join(ROOT, 'dist', 'sandbox', 'spawn.js')
const NOBODY = 65534
function nonRootSkip(): string | false {
  if (f.landlockAbi === 0) return 'Landlock is not available on this kernel'
  if (!f.userNamespaces) return 'user namespaces are not available on this kernel'
  if (!existsSync(dist)) return 'dist/ is not built (npm run build:ts)'
  if (process.getuid?.() === 0 && spawnSync('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', 'test', '-r', dist]).status !== 0)
    return `setpriv cannot run uid ${NOBODY}, or it cannot read ${dist}`
  return false
}

/** A directory for a uid 65534 launcher (its script) with a workspace in it that any uid may write
 * (the second test's launcher runs as a uid no file here is mapped to); removed after the test. */
function nobodyDirs(t: Test, prefix: string): { dir: string; ws: string } {
  const dir = tempDir(t, prefix, '/var/tmp')
  chmodSync(dir, 0o755) // the launcher reads its script here
  const ws = join(dir, 'ws')
  mkdirSync(ws)
  if (process.getuid?.() === 0) chownSync(ws, NOBODY, NOBODY)
  chmodSync(ws, 0o777)
  return { dir, ws }
}

/** Run `argv` as uid 65534 (through setpriv when this test runs as root), with only PATH in its
 * environment; asserts it exited 0 and returns the JSON of its last line of output. */
function runAsNobody(t: Test, argv: string[], cwd: string, ran: string): any {
  const full = process.getuid?.() === 0 ? ['setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', ...argv] : argv
  const r = spawnSync(full[0]!, full.slice(1), { cwd, encoding: 'utf8', timeout: 60_000, env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } })
  t.equal(r.status, 0, r.status === 0 ? ran : r.stderr)
  return JSON.parse(r.stdout.trim().split('\n').pop()!)
}

t.test('without root, hidden: a PID namespace of its own; exit codes, signals and cleanup still work', { skip: nonRootSkip() }, async (t) => {
  const { dir, ws } = nobodyDirs(t, 'cordon-pidns-')
  const host = spawnChild('sleep', ['60'], { stdio: 'ignore' }) // a host process the sandbox must not see
  t.teardown(() => host.kill())
  const script = join(dir, 'launcher.mjs')
  writeFileSync(script, `
import { spawn } from ${JSON.stringify(dist)}
import { execFileSync } from 'node:child_process'
const ws = ${JSON.stringify(ws)}
const out = {}
const wait = (c) => new Promise((r) => c.on('close', (code, signal) => r({ code, signal })))
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const run = async (others, cmd, args, f) => {
  const c = spawn({ process: { others } }, cmd, args, { workspace: ws, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = '', stderr = ''
  c.stdout.on('data', (d) => (stdout += d)); c.stderr.on('data', (d) => (stderr += d))
  if (f) await f(c)
  return { ...(await wait(c)), stdout, stderr }
}
const alive = (tag) => execFileSync('ps', ['-eo', 'args']).toString().split('\\n').filter((l) => l.startsWith('sleep ' + tag)).length
const LOOK = ${JSON.stringify(LOOK.replaceAll(String(process.pid), 'HOSTPID'))}.replaceAll('HOSTPID', String(${host.pid}))
out.hidden = await run('hidden', 'sh', ['-c', LOOK])
out.auto = await run('auto', 'sh', ['-c', LOOK])
out.visible = await run('visible', 'sh', ['-c', LOOK])
out.exit = await run('hidden', 'sh', ['-c', 'exit 7'])
out.term = await run('hidden', 'sleep', ['30'], async (c) => { await sleep(300); c.kill('SIGTERM') })
out.segv = await run('hidden', 'sh', ['-c', 'kill -SEGV $$'])
out.usr1 = await run('hidden', 'sh', ['-c', 'n=0; trap "n=\\\\$((n+1))" USR1; i=0; while [ $i -lt 20 ]; do sleep 0.05; i=$((i+1)); done; echo $n'], async (c) => { await sleep(300); c.kill('SIGUSR1') })
out.orphan = await run('hidden', 'sh', ['-c', '(sleep 4711 &); exit 3'])
await sleep(100)
out.orphanAlive = alive('4711')
out.killed = await run('hidden', 'sh', ['-c', 'sleep 4712 & sleep 4713'], async (c) => { await sleep(400); out.beforeKill = alive('471'); c.kill('SIGKILL') })
await sleep(200)
out.afterKill = alive('471')
// a launcher killed with SIGKILL (spawn's dieWithParent, as cordon run sets it) takes the sandbox along
const mid = (await import('node:child_process')).spawn(process.execPath, ['--input-type=module', '-e', \`
  const { spawn } = await import(\${JSON.stringify(${JSON.stringify(dist)})})
  spawn({ process: { others: 'hidden' } }, 'sh', ['-c', 'sleep 4714 & sleep 4715'], { workspace: \${JSON.stringify(ws)}, stdio: 'ignore', dieWithParent: true })
  setInterval(() => {}, 1000)\`], { stdio: 'ignore' })
await sleep(800)
out.beforeLauncherKill = alive('471')
mid.kill('SIGKILL')
await sleep(300)
out.afterLauncherKill = alive('471')
out.launcher = process.pid
console.log(JSON.stringify(out))
`)
  const o = runAsNobody(t, [process.execPath, script], ws, `the launcher ran as uid ${process.getuid?.() === 0 ? NOBODY : process.getuid?.()}`)

  t.equal(o.hidden.code, 0, o.hidden.stderr)
  const h = parse(o.hidden.stdout)
  const pids = h.pids!.trim().split(' ').map(Number)
  t.equal(Number(h.self), 2, 'the program is pid 2 of its namespace (the helper\'s init is 1)')
  t.ok(pids.length <= 6 && pids.every((p) => p < 20), `only the namespace's processes are listed (${h.pids})`)
  t.equal(h.launcher_listed, 'no', 'a host process (pid ' + host.pid + ') is not listed')
  t.equal(h.launcher_cmdline, 'unreadable', 'nor its cmdline readable')
  t.equal(h.self_status, 'readable', '/proc/self still works')
  t.equal(h.meminfo, 'readable', "the system's /proc files still work")
  t.ok(h.after!.split(' ').map(Number).includes(Number(h.child)), 'a process the sandbox starts is listed')
  t.equal(h.umount, 'refused', 'the sandbox cannot unmount its /proc')
  t.equal(h.mount, 'refused', 'nor mount another')
  t.equal(h.launcher_listed_after, 'no')
  t.equal(o.auto.code, 0, o.auto.stderr)
  const a = parse(o.auto.stdout)
  t.same([a.self, a.launcher_listed, a.launcher_cmdline], ['2', 'no', 'unreadable'], 'the default (auto) does the same where it can')
  t.equal(o.visible.code, 0, o.visible.stderr)
  t.equal(parse(o.visible.stdout).launcher_cmdline, 'readable', 'control: with others: visible the host process is readable')

  t.same([o.exit.code, o.exit.signal], [7, null], 'the exit code comes through')
  t.same([o.term.code, o.term.signal], [null, 'SIGTERM'], 'a SIGTERM to the sandbox reaches the program, which dies of it, and the launcher sees that')
  t.same([o.segv.code, o.segv.signal], [null, 'SIGSEGV'], 'a program killed by a signal is reported killed by that signal')
  t.same([o.usr1.code, o.usr1.stdout.trim()], [0, '1'], 'a signal the program handles is delivered once')
  t.same([o.orphan.code, o.orphanAlive], [3, 0], 'a process the program left running ends with the sandbox')
  t.equal(o.beforeKill, 2, 'the sandbox\'s processes run')
  t.same([o.killed.signal, o.afterKill], ['SIGKILL', 0], 'SIGKILL of the process the launcher started ends every process of the sandbox')
  t.same([o.beforeLauncherKill, o.afterLauncherKill], [2, 0], 'with dieWithParent, SIGKILL of the launcher itself ends them too')
})

t.test('without root where the kernel refuses a PID namespace: auto runs with the host list, hidden refuses', { skip: nonRootSkip() || (spawnSync('unshare', ['--help'], { encoding: 'utf8' }).stdout.includes('--map-user') ? false : 'util-linux unshare has no --map-user') }, async (t) => {
  const { dir, ws } = nobodyDirs(t, 'cordon-pidns-limit-')
  const script = join(dir, 'launcher.mjs')
  writeFileSync(script, `
import { spawn } from ${JSON.stringify(dist)}
const wait = (c) => new Promise((r) => { let o = '', e = ''; c.stdout.on('data', (d) => (o += d)); c.stderr.on('data', (d) => (e += d)); c.on('close', (code) => r({ code, out: o.trim(), err: e.trim() })) })
const look = 'echo self=$$; ls /proc | grep -cE "^[0-9]+$"'
const out = {}
for (const others of ['auto', 'hidden']) out[others] = await wait(spawn({ process: { others } }, 'sh', ['-c', look], { workspace: ${JSON.stringify(ws)}, stdio: ['ignore', 'pipe', 'pipe'] }))
console.log(JSON.stringify(out))
`)
  // a user namespace whose limit on PID namespaces is 0 (its root may set it), then one more level
  // so that the launcher is not root there: everything below it is refused a PID namespace
  const inner = `echo 0 > /proc/sys/user/max_pid_namespaces && exec unshare -U --map-user=${NOBODY + 1} --map-group=${NOBODY + 1} ${process.execPath} ${script}`
  const o = runAsNobody(t, ['unshare', '-U', '--map-root-user', 'sh', '-c', inner], ws, 'the launcher ran in a user namespace limited to 0 PID namespaces')
  t.equal(o.auto.code, 0, `auto: the program runs (${o.auto.err})`)
  t.notMatch(o.auto.out, /self=2\b/, 'auto: not in a PID namespace of its own')
  t.ok(Number(o.auto.out.split('\n').pop()) > 20, 'auto: the host list stays visible, as auto promises no more')
  t.equal(o.hidden.code, 125, 'hidden: cordon refuses to run the program')
  t.match(o.hidden.err, /cordon: hide-processes: unshare\(CLONE_NEWPID\): No space left on device/, 'and says which step the kernel refused')
  t.equal(o.hidden.out, '', 'the program never ran')
})
