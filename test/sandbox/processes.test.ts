/**
 * process.others: a sandbox started as root gets a procfs of its own (hidepid=invisible), so the
 * host's processes are not listed and their cmdline and status cannot be read; the sandbox's own
 * processes, /proc/self and the system files in /proc stay. The attacks run inside a confined child;
 * the same reads succeed with `others: visible`, which is what every sandbox had before.
 */
import t from 'tap'
import { spawn } from '../../lib/sandbox/spawn.js'
import { probe } from '../../lib/kernel/probe.js'
import { compilePlan, loadPolicy } from '../../lib/policy/index.js'
import { helperArgv } from '../../lib/sandbox/argv.js'
import { tempDir } from '../fixtures/kernel/run.js'

const f = probe()
const skip = f.landlockAbi === 0 ? 'Landlock is not available on this kernel' : !f.isRoot ? 'hiding other processes needs root (unprivileged sandboxes keep the host list: tested by the compile cases below)' : false

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
  t.same(plan(undefined, false).lost, [], 'and as non-root keeps them visible without a lost entry')
  t.equal(plan(undefined, false).hideProcesses, false)
  t.equal(plan('visible', true).hideProcesses, false, 'visible never hides')
  const nr = plan('hidden', false)
  t.equal(nr.hideProcesses, false)
  t.match(nr.lost.join('\n'), /process\.others: hidden: the host's processes stay listed in \/proc .* needs root/, 'hidden as non-root: reported lost')
  t.throws(() => plan('hidden', false, { requirements: { best_effort: false } }), /cannot enforce everything the policy asks \(best_effort is false\): .*process\.others: hidden/, 'and refused when nothing may be lost')
  t.ok(helperArgv(plan('hidden', true)).includes('--hide-processes'), 'the helper is told to hide them')
  t.notOk(helperArgv(plan('visible', true)).includes('--hide-processes'))
  t.not(plan('hidden', true).hash, plan('visible', true).hash, 'the plan hash covers it')
})
