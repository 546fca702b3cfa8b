/**
 * lock(): confine the CURRENT process, every thread of it, then return.
 *
 * Landlock (before ABI 8) and unshare() act on the calling thread only, and Node always has other
 * threads (V8 platform workers, the libuv threadpool that runs async fs, worker_threads, a thread
 * that blocks every signal). Restricting only the main thread would leave fs.readFile on the
 * threadpool unconfined. So lock() has two sound paths:
 *
 *  - tsync (Landlock ABI >= 8, nothing per-thread left to do): in process, with
 *    LANDLOCK_RESTRICT_SELF_TSYNC and SECCOMP_FILTER_FLAG_TSYNC, which apply to every thread.
 *    Only when the plan needs no namespace, no private /tmp, no capability drop while the process
 *    holds capabilities, no environment scrub (the launcher's environment block would stay in
 *    this process's memory, readable by the agent), and the process holds no io_uring instance
 *    (see ioUringFds(): the libuv of Node 24 and 26 sets rings up at start, even with UV_USE_IO_URING=0).
 *  - re-exec (everything else, including every kernel below ABI 8): validate the plan, then
 *    execve() the cordon-exec helper from the main thread — execve ends every other thread — with
 *    the plan as options followed by this same node binary, execArgv and argv. The helper applies
 *    the plan in its single thread and execs node again, with the same pid, cwd and stdio, the
 *    plan's scrubbed environment and a marker variable. In that second run lock() sees the marker,
 *    recompiles the policy, checks the plan hash matches, verifies the confinement from inside
 *    (every thread: NoNewPrivs 1, Seccomp 2; plan.probePath denied from the main thread and from
 *    the threadpool; the network namespace and /tmp are the new ones), deletes the marker from
 *    process.env and returns the report.
 *
 * CONSEQUENCE: on the re-exec path, code that runs before lock() runs twice (once unconfined,
 * once confined, in the same pid). Put lock() first in the launcher and keep side effects after.
 * lock() never returns while a thread is unconfined: when it cannot confine or cannot verify, it
 * throws (a failure after partial in-process confinement leaves the process MORE confined).
 */
import { mkdirSync, readdirSync, readFileSync, readlinkSync, realpathSync, statSync, openSync, closeSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import type { KernelFeatures, Plan, RlimitName } from '../policy/plan.js'
import { addon as realAddon, helperPath, packageRoot, type CordonAddon } from '../kernel/addon.js'
import { probe } from '../kernel/probe.js'
import { FS, NET, SCOPE, DIR_ONLY, RESTRICT_SELF, rightNames } from '../kernel/abi.js'
import { helperArgv, HELPER_FAILED } from './argv.js'
import { preparePlan, type PolicyInput, type PrepareOptions } from './prepare.js'

/** node:child_process loaded on first use (~7 ms CPU; the confined image after a re-exec never needs it). */
const childProcess = () => createRequire(import.meta.url)('node:child_process') as typeof import('node:child_process')

/** Environment variable carrying the first run's facts into the re-executed process. */
export const LOCK_MARKER = 'CORDON_LOCK_REEXEC'

export const SECCOMP_FILTER_FLAG_TSYNC = 1

/** RLIMIT_* numbers (asm-generic; identical on x86_64 and aarch64). */
export const RLIMIT: Record<RlimitName, number> = {
  cpu: 0, fsize: 1, data: 2, stack: 3, core: 4, nproc: 6, nofile: 7, memlock: 8, as: 9,
}

export interface LockReport {
  /** how the process was confined */
  mode: 'reexec' | 'tsync'
  /** Landlock ABI of this kernel (the plan was compiled for it) */
  abi: number
  landlock: { fs: string[]; net: string[]; scoped: string[]; pathRules: number; portRules: number } | null
  seccomp: { source: string; instructions: number } | null
  noNewPrivs: true
  network: Plan['network']['mode']
  privateTmp: string | null
  /** /proc lists only the sandbox's own processes (policy process.others) */
  hideProcesses: boolean
  /** names of the environment variables the confined process received */
  env: string[]
  /** threads checked in /proc/self/task when lock() returned */
  threadsVerified: number
  /** what the policy asked for that this kernel could not enforce */
  lost: string[]
  planHash: string
}

export class LockError extends Error {
  override name = 'LockError'
  constructor(message: string, readonly code: string = 'CORDON_LOCK') {
    super(message)
  }
}

interface Marker {
  v: 1
  pid: number
  hash: string
  /** readlink(/proc/self/ns/net) before the re-exec */
  netns: string
}

// ---------------------------------------------------------------------------------------------
// Decision (pure)

export interface LockMode {
  mode: 'reexec' | 'tsync'
  /** why not tsync */
  reasons: string[]
}

export function envEqual(a: NodeJS.ProcessEnv, b: Record<string, string>): boolean {
  const ka = Object.keys(a).filter((k) => a[k] !== undefined)
  if (ka.length !== Object.keys(b).length) return false
  return ka.every((k) => b[k] === a[k])
}

export function chooseLockMode(
  plan: Plan,
  features: KernelFeatures,
  currentEnv: NodeJS.ProcessEnv,
  holdsCapabilities: boolean,
  ioUringInstances = 0,
): LockMode {
  const reasons: string[] = []
  if (ioUringInstances > 0)
    reasons.push(
      `this process holds ${ioUringInstances} io_uring instance(s) (libuv's); a filter denying io_uring_enter would abort ` +
        'Node, and a ring created before the restriction may run requests with the old credentials',
    )
  if (plan.landlock && features.landlockAbi < 8)
    reasons.push(`Landlock ABI ${features.landlockAbi} < 8 cannot restrict all threads at once`)
  if (plan.seccomp && !features.seccompTsync) reasons.push('seccomp TSYNC is unavailable')
  if (plan.network.mode !== 'host') reasons.push(`network ${plan.network.mode} needs a namespace (per-thread)`)
  if (plan.privateTmp) reasons.push('a private /tmp needs a mount namespace (single-threaded)')
  if (plan.hideProcesses) reasons.push('hiding other processes needs a mount namespace (single-threaded)')
  if (plan.dropCapabilities && holdsCapabilities) reasons.push('capabilities are per-thread')
  if (!envEqual(currentEnv, plan.env)) reasons.push('the environment must be scrubbed (the original stays in memory otherwise)')
  return { mode: reasons.length ? 'reexec' : 'tsync', reasons }
}

// ---------------------------------------------------------------------------------------------
// Facts from /proc

/** /proc is a procfs mounted with hidepid=invisible (the helper's --hide-processes) */
function procHidesOthers(): boolean {
  // mountinfo: id parent major:minor root mountpoint options ... - fstype source superoptions
  const lines = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.split(' ')[4] === '/proc')
  const top = lines[lines.length - 1] // the last mount on /proc is the one in effect
  return !!top && / - proc \S+ \S*\bhidepid=(invisible|2)\b/.test(top)
}

function statusField(status: string, field: string): string | null {
  const m = new RegExp(`^${field}:\\s*(\\S+)`, 'm').exec(status)
  return m ? m[1]! : null
}

/**
 * Number of io_uring instances this process holds (fds reading anon_inode:[io_uring]). Newer libuv
 * (1.52 in Node 24/26; not 1.46 in Node 20) creates rings at start-up, e.g. for epoll batching. Installing a seccomp
 * filter that denies io_uring_enter into such a process makes libuv's next getevents fail with
 * EPERM, and libuv aborts; and a ring set up before the restriction (SQPOLL, registered
 * personalities) keeps the credentials of its creator, i.e. works outside the Landlock domain.
 * So such a process is confined by the re-exec path: after execve no ring survives, and in the
 * confined image io_uring_setup fails with EPERM, on which libuv falls back to its threadpool.
 */
export function ioUringFds(fdDir = '/proc/self/fd'): number {
  let n = 0
  let fds: string[]
  try {
    fds = readdirSync(fdDir)
  } catch (err) {
    throw new LockError(`lock(): cannot list ${fdDir} to look for io_uring instances: ${(err as Error).message}`)
  }
  for (const fd of fds) {
    try {
      if (readlinkSync(`${fdDir}/${fd}`) === 'anon_inode:[io_uring]') n++
    } catch {
      /* closed meanwhile (the fd readdir itself used) */
    }
  }
  return n
}

function holdsCapabilities(): boolean {
  const s = readFileSync('/proc/self/status', 'utf8')
  return [statusField(s, 'CapEff'), statusField(s, 'CapPrm')].some((v) => v !== null && /[1-9a-f]/i.test(v))
}

/** Checks every thread of this process; returns how many were checked. */
export function verifyThreads(expectSeccomp: boolean, taskDir = '/proc/self/task'): number {
  let n = 0
  for (const tid of readdirSync(taskDir)) {
    let status: string
    try {
      status = readFileSync(`${taskDir}/${tid}/status`, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue // thread exited meanwhile
      throw err
    }
    const nnp = statusField(status, 'NoNewPrivs')
    const sc = statusField(status, 'Seccomp')
    if (nnp !== '1') throw new LockError(`lock(): thread ${tid} is not confined (NoNewPrivs ${nnp}); refusing to continue`)
    if (expectSeccomp && sc !== '2')
      throw new LockError(`lock(): thread ${tid} has no seccomp filter (Seccomp ${sc}); refusing to continue`)
    n++
  }
  if (n === 0) throw new LockError('lock(): could not read /proc/self/task to verify the confinement')
  return n
}

async function verifyLandlock(plan: Plan): Promise<void> {
  if (!plan.landlock || !plan.probePath) return
  const p = plan.probePath
  try {
    closeSync(openSync(p, 'r'))
    throw new LockError(`lock(): ${p} is still readable from the main thread: Landlock is not in force`)
  } catch (err) {
    if (err instanceof LockError) throw err
    if ((err as NodeJS.ErrnoException).code !== 'EACCES') throw new LockError(`lock(): probing ${p}: ${(err as Error).message}`)
  }
  try {
    await readFile(p) // runs on a libuv threadpool thread
    throw new LockError(`lock(): ${p} is still readable from the threadpool: Landlock is not in force on every thread`)
  } catch (err) {
    if (err instanceof LockError) throw err
    if ((err as NodeJS.ErrnoException).code !== 'EACCES')
      throw new LockError(`lock(): probing ${p} from the threadpool: ${(err as Error).message}`)
  }
}

function sameFile(a: string, b: string): boolean {
  const sa = statSync(a)
  const sb = statSync(b)
  return sa.dev === sb.dev && sa.ino === sb.ino
}

function report(plan: Plan, mode: 'reexec' | 'tsync', threads: number): LockReport {
  const ll = plan.landlock
  return {
    mode,
    abi: plan.abi,
    landlock: ll
      ? {
          fs: rightNames(FS, ll.handledFs),
          net: rightNames(NET, ll.handledNet),
          scoped: rightNames(SCOPE, ll.scoped),
          pathRules: ll.paths.length,
          portRules: ll.ports.length,
        }
      : null,
    seccomp: plan.seccomp ? { source: plan.seccomp.source, instructions: plan.seccomp.filter.byteLength / 8 } : null,
    noNewPrivs: true,
    network: plan.network.mode,
    privateTmp: plan.privateTmp,
    hideProcesses: plan.hideProcesses,
    env: Object.keys(plan.env).sort(),
    threadsVerified: threads,
    lost: [...plan.lost],
    planHash: plan.hash,
  }
}

// ---------------------------------------------------------------------------------------------
// In-process path (Landlock ABI >= 8)

export function applyInProcess(plan: Plan, a: CordonAddon): void {
  for (const d of plan.mkdirs) mkdirSync(d, { recursive: true, mode: 0o700 })
  for (const r of plan.rlimits) a.setrlimit(RLIMIT[r.resource], r.soft, r.hard)
  const ll = plan.landlock
  let fd = -1
  try {
    if (ll) {
      fd = a.landlockCreateRuleset(ll.handledFs, ll.handledNet, ll.scoped)
      for (const rule of ll.paths) {
        let isDir: boolean
        try {
          isDir = statSync(rule.path).isDirectory()
        } catch (err) {
          if (rule.optional && (err as NodeJS.ErrnoException).code === 'ENOENT') continue
          throw new LockError(`lock(): ${rule.path} (${rule.origin}): ${(err as Error).message}`)
        }
        a.landlockAddPathRule(fd, rule.path, isDir ? rule.access : rule.access & ~DIR_ONLY)
      }
      for (const p of ll.ports) a.landlockAddPortRule(fd, p.port, p.access)
    }
    a.setNoNewPrivs()
    if (ll) a.landlockRestrictSelf(fd, ll.restrictFlags | RESTRICT_SELF.tsync)
  } finally {
    if (fd >= 0) a.closeFd(fd)
  }
  if (plan.seccomp) a.seccompSetFilter(plan.seccomp.filter, SECCOMP_FILTER_FLAG_TSYNC)
}

// ---------------------------------------------------------------------------------------------
// Re-exec path

/** True when some rule grants `rights` on `path` (a rule covers its whole subtree). */
export function planGrants(plan: Plan, path: string, rights: number): boolean {
  if (!plan.landlock) return true
  if ((plan.landlock.handledFs & rights) !== rights) {
    // rights not handled by the ruleset are allowed everywhere; check only the handled ones
    rights &= plan.landlock.handledFs
    if (rights === 0) return true
  }
  let granted = 0
  for (const r of plan.landlock.paths) {
    if (path === r.path || r.path === '/' || path.startsWith(r.path.endsWith('/') ? r.path : r.path + '/')) granted |= r.access
  }
  return (granted & rights) === rights
}

function realOr(p: string): string {
  try {
    return realpathSync(p)
  } catch {
    return p
  }
}

/** Everything that can be checked before execve(), so a bad plan fails here with a clear message. */
export function preflight(plan: Plan, helper: string): void {
  if (plan.landlock) {
    for (const r of plan.landlock.paths) {
      if (r.optional || plan.mkdirs.some((d) => d === r.path || d.startsWith(r.path + '/'))) continue // created by the helper
      try {
        statSync(r.path)
      } catch (err) {
        throw new LockError(`lock(): ${r.path} (${r.origin}) does not exist; create it or mark it optional in the policy`)
      }
    }
  }
  const need: Array<[string, number, string]> = [
    [realOr(process.execPath), FS.execute | FS.read_file, 'the node binary'],
    [realOr(packageRoot()), FS.read_file, "cordon's own files"],
  ]
  if (process.argv[1]) need.push([realOr(process.argv[1]), FS.read_file, 'the entry script'])
  for (const [p, rights, what] of need) {
    if (!planGrants(plan, p, rights))
      throw new LockError(
        `lock(): ${what} (${p}) would not be ${rights & FS.execute ? 'executable' : 'readable'} in the re-executed, confined process; ` +
          'add its directory to filesystem.read_only (or executable) in the policy',
      )
  }
  // Dry run: the helper applies the whole plan and runs `node --version` under it.
  const r = childProcess().spawnSync(helper, [...helperArgv(plan), '--', process.execPath, '--version'], {
    env: plan.env,
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 10_000,
  })
  if (r.status !== 0) {
    const why = String(r.stderr ?? '').trim() || (r.error ? r.error.message : `exit ${r.status ?? r.signal}`)
    throw new LockError(
      `lock(): the plan cannot be applied here: ${why}` + (r.status === HELPER_FAILED ? '' : ' (node could not start under the plan)'),
    )
  }
}

function reexec(plan: Plan, a: CordonAddon): never {
  const helper = helperPath()
  preflight(plan, helper)
  const marker: Marker = { v: 1, pid: process.pid, hash: plan.hash, netns: readlinkSync('/proc/self/ns/net') }
  const envp = Object.entries(plan.env).map(([k, v]) => `${k}=${v}`)
  envp.push(`${LOCK_MARKER}=${JSON.stringify(marker)}`)
  const argv = [helper, ...helperArgv(plan), '--', process.execPath, ...process.execArgv, ...process.argv.slice(1)]
  return a.execve(helper, argv, envp)
}

function parseMarker(raw: string): Marker | null {
  try {
    const m = JSON.parse(raw) as Marker
    if (m && m.v === 1 && typeof m.pid === 'number' && typeof m.hash === 'string' && typeof m.netns === 'string') return m
  } catch {
    /* not ours */
  }
  return null
}

async function verifyReexec(plan: Plan, m: Marker): Promise<LockReport> {
  if (plan.hash !== m.hash)
    throw new LockError(
      `lock(): the policy compiled after re-exec differs from the one applied (plan ${plan.hash.slice(0, 12)} != ${m.hash.slice(0, 12)}); ` +
        'the policy must not depend on anything that changes across the re-exec',
    )
  const threads = verifyThreads(plan.seccomp !== null)
  await verifyLandlock(plan)
  const ns = readlinkSync('/proc/self/ns/net')
  if (plan.network.mode === 'none' && ns === m.netns)
    throw new LockError('lock(): still in the original network namespace after re-exec; refusing to continue')
  if (plan.network.mode === 'join' && !sameFile('/proc/self/ns/net', plan.network.path))
    throw new LockError(`lock(): not in the network namespace ${plan.network.path} after re-exec`)
  if (plan.privateTmp && !sameFile('/tmp', plan.privateTmp))
    throw new LockError(`lock(): /tmp is not the private directory ${plan.privateTmp} after re-exec`)
  if (plan.hideProcesses && !procHidesOthers())
    throw new LockError('lock(): /proc is not the procfs of the sandbox\'s own (hidepid=invisible) after re-exec')
  // threads may have been started meanwhile (the threadpool probe); check again
  return report(plan, 'reexec', Math.max(threads, verifyThreads(plan.seccomp !== null)))
}

// ---------------------------------------------------------------------------------------------

export interface LockDeps {
  addon?: CordonAddon
  features?: KernelFeatures
  /** counts this process's io_uring instances (tests) */
  ioUringFds?: () => number
}

/** lock() over a plan source; exported for tests that use hand-made plans. */
export async function lockWith(getPlan: (env: NodeJS.ProcessEnv) => Plan, deps: LockDeps = {}): Promise<LockReport> {
  const raw = process.env[LOCK_MARKER]
  if (raw !== undefined) {
    delete process.env[LOCK_MARKER]
    const m = parseMarker(raw)
    // A marker for another pid was inherited (a child of a locked process): not our re-exec.
    if (m && m.pid === process.pid) return verifyReexec(getPlan(process.env), m)
  }
  const a = deps.addon ?? realAddon()
  const features = deps.features ?? probe()
  const plan = getPlan(process.env)
  if (plan.abi !== features.landlockAbi)
    throw new LockError(`lock(): the plan was compiled for Landlock ABI ${plan.abi}, this kernel has ${features.landlockAbi}`)
  const rings = deps.ioUringFds ?? ioUringFds
  const choice = chooseLockMode(plan, features, process.env, holdsCapabilities(), rings())
  if (choice.mode === 'tsync') {
    applyInProcess(plan, a)
    // A thread that was starting (a Worker's event loop) may have set up a ring between the
    // check and the restriction: such a ring keeps the old credentials. Fail rather than return.
    const late = rings()
    if (late > 0)
      throw new LockError(
        `lock(): ${late} io_uring instance(s) appeared while confining in place; this process is now partly confined ` +
          'and must not be used: call lock() before starting worker threads',
      )
    const threads = deps.addon ? 0 : verifyThreads(plan.seccomp !== null)
    if (!deps.addon) await verifyLandlock(plan)
    return report(plan, 'tsync', threads)
  }
  return reexec(plan, a)
}

/**
 * Confine this process (every thread) under the policy; see the module header. `policy` is a
 * policy file path or a policy object; omitted fields come from the default agent profile.
 */
export function lock(policy: PolicyInput, opts: Omit<PrepareOptions, 'env' | 'inPlace'> = {}): Promise<LockReport> {
  return lockWith((env) => preparePlan(policy, { ...opts, env, inPlace: true }))
}
