/**
 * explainPlan: the compiled plan in words a person can audit (`cordon policy explain`).
 */
import os from 'node:os'
import { FS, NET, SCOPE, rightNames } from '../kernel/abi.js'
import type { Plan } from './plan.js'
import type { ResolvedPolicy } from './types.js'
import type { OciSeccompProfile, OciArg } from './seccomp/oci.js'
import { compileSeccompDetailed } from './seccomp/compile.js'

const ALL_READ_WRITE_NOTE = 'everything (read, write, create, delete, rename, execute)'

function describeAccess(mask: number, handled: number): string {
  if (mask === handled) return ALL_READ_WRITE_NOTE
  const has = (b: number) => (mask & b) !== 0
  const words: string[] = []
  if (has(FS.read_file) || has(FS.read_dir)) words.push(has(FS.read_dir) ? 'read' : 'read file')
  if (has(FS.execute)) words.push('execute')
  if (has(FS.write_file)) words.push('write')
  if (has(FS.truncate)) words.push('truncate')
  if (has(FS.ioctl_dev)) words.push('device ioctl')
  const rest = mask & ~(FS.read_file | FS.read_dir | FS.execute | FS.write_file | FS.truncate | FS.ioctl_dev)
  if (rest) words.push(rightNames(FS, rest).join(', '))
  return words.join(', ')
}

const OP_WORDS: Record<string, string> = {
  SCMP_CMP_EQ: '==', SCMP_CMP_NE: '!=', SCMP_CMP_LT: '<', SCMP_CMP_LE: '<=', SCMP_CMP_GE: '>=', SCMP_CMP_GT: '>',
}
function argWords(a: OciArg): string {
  const hex = (v: number | bigint) => `0x${BigInt(v).toString(16)}`
  if (a.op === 'SCMP_CMP_MASKED_EQ') return `(arg${a.index} & ${hex(a.value)}) == ${hex(a.valueTwo ?? 0)}`
  return `arg${a.index} ${OP_WORDS[a.op]} ${hex(a.value)}`
}

function actionWords(action: string, errno: number | undefined, profile: OciSeccompProfile): string {
  switch (action) {
    case 'SCMP_ACT_ALLOW': return 'allowed'
    case 'SCMP_ACT_ERRNO': return `fails with errno ${errno ?? profile.defaultErrnoRet ?? 1}${errnoName(errno ?? profile.defaultErrnoRet ?? 1)}`
    case 'SCMP_ACT_KILL_PROCESS': return 'kills the process'
    case 'SCMP_ACT_KILL':
    case 'SCMP_ACT_KILL_THREAD': return 'kills the thread'
    case 'SCMP_ACT_TRAP': return 'raises SIGSYS'
    case 'SCMP_ACT_LOG': return 'allowed and logged'
    default: return action
  }
}
function errnoName(n: number): string {
  const names: Record<number, string> = { 1: 'EPERM', 13: 'EACCES', 22: 'EINVAL', 38: 'ENOSYS', 95: 'EOPNOTSUPP', 97: 'EAFNOSUPPORT' }
  return names[n] ? ` (${names[n]})` : ''
}

/**
 * Things that will probably surprise the user, e.g. PATH directories the sandbox cannot execute
 * from (a passed PATH with ~/.nvm/bin or pyenv shims). Advice only; the plan is unchanged.
 */
export function planWarnings(plan: Plan): string[] {
  const out: string[] = []
  if (!plan.landlock) return out
  const execRoots = plan.landlock.paths.filter((r) => (r.access & FS.execute) !== 0).map((r) => r.path)
  const covered = (d: string) => execRoots.some((r) => r === '/' || d === r || d.startsWith(r + '/'))
  const dirs = (plan.env.PATH ?? '').split(':').filter((d) => d.startsWith('/'))
  // merged-/usr systems: /bin is a symlink into /usr; compare by the usual aliases too
  const alias = (d: string) => d.replace(/^\/(bin|sbin|lib|lib64)(\/|$)/, '/usr/$1$2')
  const missing = [...new Set(dirs.filter((d) => !covered(d) && !covered(alias(d))))]
  if (missing.length)
    out.push(`PATH lists directories the sandbox cannot execute from: ${missing.join(', ')} (add them to filesystem.executable, or drop them from PATH)`)
  // a rule that covers the user's home exposes ~/.ssh, ~/.aws, tokens in dotfiles ...
  const home = os.homedir()
  for (const r of plan.landlock.paths) {
    if ((r.access & (FS.read_file | FS.read_dir)) === 0) continue
    if (r.path === '/' || home === r.path || home.startsWith(r.path + '/'))
      out.push(`${r.path} (${r.origin}) contains your home directory ${home}: the sandbox can read ~/.ssh, cloud credentials and tokens in dotfiles; grant narrower paths`)
  }
  return out
}

export function explainPlan(plan: Plan, policy: ResolvedPolicy): string {
  const out: string[] = []
  const say = (s = '') => out.push(s)
  say(`Policy ${policy.source}${policy.extends !== 'none' ? ` (on top of the "${policy.extends}" profile)` : ''}`)
  say(`Compiled for Landlock ABI ${plan.abi}${plan.seccomp ? `, ${plan.seccomp.arch}` : ''}; plan ${plan.hash.slice(0, 16)}`)
  say()

  say('Filesystem (Landlock)')
  if (!plan.landlock) {
    say('  NOT CONFINED: this kernel has no Landlock and the policy accepted that (requirements.landlock_abi: 0).')
  } else {
    const ll = plan.landlock
    say('  Everything not listed here is denied: reading, writing, executing, creating, deleting.')
    const width = Math.min(40, Math.max(...ll.paths.map((p) => p.path.length), 4))
    for (const r of ll.paths)
      say(`  ${r.path.padEnd(width)}  ${describeAccess(r.access, ll.handledFs)}${r.optional ? ' (if present)' : ''}   [${r.origin}]`)
    if (plan.privateTmp) say(`  /tmp is ${plan.privateTmp} (a private /tmp, mounted over the host's)`)
    if (plan.mkdirs.length) say(`  created before start (mode 0700): ${plan.mkdirs.join(', ')}`)
    if (plan.env.HOME) say(`  HOME=${plan.env.HOME}`)
    say('  Note: Landlock cannot deny anything inside an allowed tree: every path above grants')
    say('  its whole subtree. Keep secrets out of the workspace and the paths you add.')
    if (policy.filesystem.system)
      say('  filesystem.system grants only a secret-free subset of /etc (no shadow, ssh host keys, sudoers).')
    if (plan.probePath) say(`  Verification: after confinement, opening ${plan.probePath} must fail with EACCES.`)
    const scopes = rightNames(SCOPE, ll.scoped)
    say(scopes.length
      ? `  Scoped: ${scopes.map((s) => (s === 'signal' ? 'signals to processes outside the sandbox' : 'connecting to abstract unix sockets outside the sandbox')).join('; ')} are denied.`
      : '  Not scoped (Landlock ABI < 6): signals and abstract unix sockets outside the sandbox are not blocked by Landlock.')
  }
  say()

  say('Network')
  switch (policy.network.mode) {
    case 'none':
      say('  none: a fresh network namespace with only loopback; no route leaves the sandbox.')
      break
    case 'host':
      say("  host: the host's network, unrestricted. The sandbox can reach anything the host can.")
      break
    case 'proxy': {
      const n = policy.network
      if (n.namespace === 'current') {
        say("  proxy, namespace: current: no namespace of its own; the sandbox stays in the network namespace cordon")
        say('  runs in (a Kubernetes pod), which something else must confine (NetworkPolicy). Landlock limits TCP')
        say('  connect() to the gate and network.connect ports where the kernel has ABI >= 4; UDP is not limited.')
      } else say('  proxy: a network namespace whose only way out is the egress gate of the policy engine.')
      if (n.connect.length) say(`  also connect to TCP ports: ${n.connect.join(', ')}`)
      say(`  presets: ${n.presets.length ? n.presets.join(', ') : '(none)'}`)
      say(`  allow: ${n.allow.length ? n.allow.map((r) => JSON.stringify(r)).join(', ') : '(none)'}`)
      say(`  deny (wins over allow): ${n.deny.length ? n.deny.map((r) => JSON.stringify(r)).join(', ') : '(none)'}`)
      say(`  anything else: ${n.unlisted === 'ask' ? 'held for an operator to approve or deny' : 'denied'}`)
      if (plan.network.mode === 'none') say('  (`cordon run` and `cordon up` join the namespace to the gate when they start the sandbox)')
      break
    }
  }
  if (plan.landlock && plan.landlock.handledNet) {
    const connect = plan.landlock.ports.filter((p) => p.access & NET.connect_tcp).map((p) => p.port)
    const bind = plan.landlock.ports.filter((p) => p.access & NET.bind_tcp).map((p) => p.port)
    say(`  Landlock TCP: connect only to port${connect.length === 1 ? '' : 's'} ${connect.join(', ') || '(none)'}; bind only ${bind.join(', ') || '(none)'}.`)
  }
  say()

  say('System calls (seccomp)')
  if (!plan.seccomp || !policy.process.seccomp) {
    say(policy.process.seccomp ? '  NOT FILTERED: seccomp is not available on this kernel.' : '  none: no syscall filter (process.seccomp: none).')
  } else {
    const prof = policy.process.seccomp.profile
    const r = compileSeccompDetailed(prof, plan.seccomp.arch)
    say(`  profile ${plan.seccomp.source}, ${plan.seccomp.filter.length / 8} BPF instructions; default: ${actionWords(prof.defaultAction, undefined, prof)}`)
    const deny = (prof.defaultErrnoRet ?? 1)
    say(`  always: other architectures${plan.seccomp.arch === 'x86_64' ? ' and the x32 ABI' : ''} fail with errno ${deny}${errnoName(deny)}`)
    const groups = new Map<string, string[]>()
    for (const e of prof.syscalls ?? []) {
      const names = e.names.filter((n) => !r.skipped.includes(n))
      if (!names.length) continue
      const cond = e.args && e.args.length ? ` when ${e.args.map(argWords).join(new Set(e.args.map((a) => a.index)).size === e.args.length ? ' and ' : ' or ')}` : ''
      const key = `${actionWords(e.action, e.errnoRet, prof)}${cond}`
      groups.set(key, [...(groups.get(key) ?? []), ...names])
    }
    for (const [what, names] of groups) say(`  ${[...new Set(names)].join(', ')}: ${what}`)
    say('  (for one syscall, entries with argument conditions are checked first, then the others; the first match decides)')
    if (r.skipped.length) say(`  not on ${plan.seccomp.arch}, skipped: ${r.skipped.join(', ')}`)
  }
  say()

  say('Process')
  const envNames = Object.keys(plan.env)
  say(`  environment: only these ${envNames.length} variables; everything else is scrubbed:`)
  for (const k of envNames) say(`    ${k}=${plan.env[k]}`)
  say(`  rlimits: ${plan.rlimits.length ? plan.rlimits.map((r) => `${r.resource}=${r.soft === r.hard ? fmt(r.soft) : `${fmt(r.soft)}/${fmt(r.hard)}`}`).join(', ') : '(inherited)'}`)
  say(`  capabilities: ${plan.dropCapabilities ? 'all dropped; no_new_privs set' : 'kept'}`)
  say(`  other processes: ${plan.hideProcesses ? `hidden (/proc is a procfs of the sandbox's own: only its processes are listed${plan.hideProcessesBestEffort ? "; without root, where the kernel lets this user make a PID namespace, else visible" : ''})` : "visible in /proc (cmdline and status; environ, fd and mem stay out of reach under Landlock)"}`)
  say()

  const warnings = planWarnings(plan)
  if (warnings.length) {
    say('Warnings')
    for (const w of warnings) say(`  - ${w}`)
    say()
  }

  say('Lost on this kernel')
  if (plan.lost.length) for (const l of plan.lost) say(`  - ${l}`)
  else say('  nothing: every right the policy asks for is enforced.')
  return out.join('\n') + '\n'
}

function fmt(n: number | null): string {
  return n === null ? 'unlimited' : String(n)
}
