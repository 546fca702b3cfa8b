/**
 * The compiler: ResolvedPolicy + KernelFeatures -> Plan. Pure apart from realpath()/stat() of
 * the paths rules name. Nothing here decides at apply time: lib/sandbox applies the plan as is.
 */
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { DIR_ONLY, FS, INTRODUCED_IN, NET, fsRightsAt, netRightsAt, scopesAt } from '../kernel/abi.js'
import { PolicyError } from './errors.js'
import type { KernelFeatures, LandlockPathRule, LandlockPlan, LandlockPortRule, Plan, RlimitName, RlimitPlan, SeccompPlan } from './plan.js'
import type { Origin, ResolvedPolicy, RlimitValue } from './types.js'
import { compileSeccompDetailed } from './seccomp/compile.js'

export interface CompileOptions {
  /** the environment to pick pass-listed variables from (default process.env) */
  env?: NodeJS.ProcessEnv
  /** proxy mode, ABI >= 4: the only TCP ports the sandbox may connect to (egress gate, router) */
  gatePorts?: number[]
  /**
   * the plan confines the calling process itself (lock()), which keeps its pid: it cannot move into
   * a PID namespace of its own, so without root other processes cannot be hidden
   */
  inPlace?: boolean
}

const READ = FS.read_file | FS.read_dir
const READ_EXEC = READ | FS.execute
const DEV_RW = FS.read_file | FS.write_file | FS.truncate
const TTY = FS.read_file | FS.write_file | FS.truncate | FS.ioctl_dev | FS.read_dir

/**
 * What `filesystem.system: true` grants. Read-only (+ execute for the program trees). /etc is
 * NOT granted whole: Landlock cannot deny inside an allowed tree, and /etc holds secrets
 * (/etc/shadow, /etc/ssh/*_key, sudoers, credentials of services), so only this secret-free
 * subset is granted (no /etc/ssl/private, no /etc/environment, which sometimes carries proxy
 * credentials). Absent entries are skipped. /dev/shm is not granted (shared with the host), nor
 * /dev/pts (every terminal of the same user).
 */
export const SYSTEM_PATHS: readonly { path: string; access: number; why: string }[] = [
  ...['/usr', '/bin', '/sbin', '/lib', '/lib64', '/lib32', '/libx32'].map((p) => ({ path: p, access: READ_EXEC, why: 'programs and libraries' })),
  ...[
    '/etc/ld.so.cache', '/etc/ld.so.conf', '/etc/ld.so.conf.d', '/etc/ld.so.preload',
    '/etc/passwd', '/etc/group', '/etc/nsswitch.conf', '/etc/host.conf', '/etc/hosts', '/etc/hostname',
    '/etc/resolv.conf', '/etc/gai.conf', '/etc/protocols', '/etc/services', '/etc/networks',
    '/etc/localtime', '/etc/timezone', '/etc/locale.alias', '/etc/locale.conf', '/etc/default/locale',
    // CA certificates and OpenSSL config only: /etc/ssl/private and /etc/pki/tls/private hold keys
    '/etc/ssl/certs', '/etc/ssl/openssl.cnf', '/etc/ca-certificates', '/etc/ca-certificates.conf',
    '/etc/pki/tls/certs', '/etc/pki/tls/cert.pem', '/etc/pki/tls/openssl.cnf', '/etc/pki/ca-trust', '/etc/crypto-policies',
    '/etc/alternatives', '/etc/os-release', '/etc/lsb-release', '/etc/debian_version', '/etc/issue',
    '/etc/mime.types', '/etc/magic', '/etc/terminfo', '/etc/inputrc', '/etc/bash.bashrc', '/etc/profile',
    '/etc/profile.d', '/etc/gitconfig', '/etc/ssh/ssh_config', '/etc/ssh/ssh_config.d',
    '/etc/fonts', '/etc/xdg',
  ].map((p) => ({ path: p, access: READ, why: 'system configuration (a secret-free subset of /etc)' })),
  ...['/dev/null', '/dev/zero', '/dev/full', '/dev/random', '/dev/urandom'].map((p) => ({ path: p, access: DEV_RW, why: 'standard devices' })),
  // only the controlling terminal: /dev/pts would expose every terminal of the same user (reading
  // another terminal steals its keystrokes); add /dev/ptmx + /dev/pts to allocate new terminals
  { path: '/dev/tty', access: TTY, why: 'the controlling terminal' },
  { path: '/proc', access: READ, why: "process information (other processes' environ and mem stay out of reach: Landlock's ptrace scoping)" },
  { path: '/sys/devices/system/cpu', access: READ, why: 'CPU topology (os.cpus())' },
  { path: '/sys/fs/cgroup', access: READ, why: 'cgroup limits (available parallelism)' },
]

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

/** Human words for the rights a kernel may lack. */
const LOST_WORDS: Record<string, string> = {
  'fs.refer': 'moving or hard-linking files between directories (fs.refer) needs Landlock ABI 2; below it such renames and links are always denied',
  'fs.truncate': 'truncating files outside the writable paths (fs.truncate) cannot be prevented: it needs Landlock ABI 3',
  'fs.ioctl_dev': 'ioctl on devices (fs.ioctl_dev) cannot be restricted: it needs Landlock ABI 5',
  'net.connect_tcp': 'TCP connect port rules (net.connect_tcp) need Landlock ABI 4; only the network namespace confines connections',
  'net.bind_tcp': 'TCP bind port rules (net.bind_tcp) need Landlock ABI 4; the sandbox may bind any port in its namespace',
  'scope.abstract_unix_socket': 'abstract unix sockets of processes outside the sandbox (scope.abstract_unix_socket) need Landlock ABI 6 to be blocked',
  'scope.signal': 'signals to processes outside the sandbox (scope.signal) need Landlock ABI 6 to be blocked',
}

function perr(origin: Origin | undefined, problem: string, hint?: string): PolicyError {
  return new PolicyError({ file: origin?.file, line: origin?.line, field: origin?.field, problem, hint })
}

function rlimitNumber(v: number | 'unlimited'): number | null {
  return v === 'unlimited' ? null : v
}

function compileRlimits(r: Partial<Record<RlimitName, RlimitValue>>): RlimitPlan[] {
  return (Object.entries(r) as [RlimitName, RlimitValue][])
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([resource, v]) => {
      if (typeof v === 'object') return { resource, soft: rlimitNumber(v.soft), hard: rlimitNumber(v.hard) }
      const n = rlimitNumber(v)
      return { resource, soft: n, hard: n }
    })
}

function canonical(v: unknown): unknown {
  if (v instanceof Uint8Array) return Buffer.from(v).toString('base64')
  if (Array.isArray(v)) return v.map(canonical)
  if (v && typeof v === 'object')
    return Object.fromEntries(Object.keys(v).sort().map((k) => [k, canonical((v as Record<string, unknown>)[k])]))
  return v
}

/** sha256 (hex) of the canonical JSON of the plan without its `hash`. */
export function planHash(plan: Omit<Plan, 'hash'> & { hash?: string }): string {
  const { hash: _h, ...rest } = plan
  return crypto.createHash('sha256').update(JSON.stringify(canonical(rest))).digest('hex')
}

/** A compiled plan with some fields replaced (where the sandbox's network comes from, its proxy
 * environment), hashed anew so the helper's verification matches what is applied. */
export function amendPlan(plan: Plan, patch: Partial<Omit<Plan, 'hash'>>): Plan {
  const next = { ...plan, ...patch }
  return { ...next, hash: planHash(next) }
}

function under(p: string, dir: string): boolean {
  return dir === '/' || p === dir || p.startsWith(dir + '/')
}

export function compilePlan(policy: ResolvedPolicy, features: KernelFeatures, opts: CompileOptions = {}): Plan {
  const abi = features.landlockAbi
  const req = policy.requirements
  const lost: string[] = []

  // requirements first: refuse to start below them
  if (req.landlockAbi !== null && abi < req.landlockAbi)
    throw perr(req.origins.landlockAbi,
      `the policy requires Landlock ABI ${req.landlockAbi}; this kernel has ${abi === 0 ? 'no Landlock' : `ABI ${abi}`}`,
      'run on a newer kernel (cordon doctor shows what it has), or lower the requirement')
  for (const r of req.rights) {
    const need = INTRODUCED_IN[r] ?? Infinity
    if (need > abi)
      throw perr(req.origins.rights,
        `the policy requires ${r}, which needs Landlock ABI ${need}; this kernel has ${abi === 0 ? 'no Landlock' : `ABI ${abi}`}`,
        'run on a newer kernel, or remove the right from requirements.rights')
  }

  const workspace = policy.filesystem.workspace !== null ? realOrSelf(policy.filesystem.workspace) : null
  const home = policy.filesystem.home === 'private' && workspace ? path.join(workspace, '.cordon', 'home') : null
  const privateTmp = policy.filesystem.tmp === 'private' && workspace ? path.join(workspace, '.cordon', 'tmp') : null
  const mkdirs = [home, privateTmp].filter((p): p is string => p !== null)

  // Landlock
  let landlock: LandlockPlan | null = null
  const proxy = policy.network.mode === 'proxy'
  if (abi === 0) {
    if (req.landlockAbi !== 0)
      throw perr(req.origins.landlockAbi,
        'this kernel has no Landlock, so the filesystem cannot be confined; cordon refuses to run unconfined',
        'enable Landlock (lsm=...,landlock on the kernel command line), or accept it explicitly with requirements.landlock_abi: 0')
    lost.push('Landlock: absent on this kernel, so NO filesystem confinement (accepted by requirements.landlock_abi: 0)')
  } else {
    const all = fsRightsAt(abi)
    const rules = new Map<string, LandlockPathRule>()
    const add = (p: string, access: number, optional: boolean, origin: string, originRef?: Origin, created = false) => {
      let real: string
      let isDir: boolean
      if (created) {
        real = p
        isDir = true
      } else {
        try {
          real = fs.realpathSync(p)
          isDir = fs.statSync(real).isDirectory()
        } catch {
          if (optional) return
          throw perr(originRef, `${p} does not exist`, 'create it, fix the path, or mark it { path: ..., optional: true }')
        }
      }
      let mask = access & all
      if (!isDir) mask &= ~DIR_ONLY
      if (mask === 0) return
      const prev = rules.get(real)
      if (prev) {
        prev.access |= mask
        prev.optional &&= optional
        if (!prev.origin.split(', ').includes(origin)) prev.origin += `, ${origin}`
      } else rules.set(real, { path: real, access: mask, optional, origin })
    }
    if (policy.filesystem.system) for (const s of SYSTEM_PATHS) add(s.path, s.access, true, 'filesystem.system')
    if (workspace) add(workspace, all, false, 'filesystem.workspace')
    if (privateTmp) add(privateTmp, all, false, 'filesystem.tmp (private)', undefined, true)
    if (policy.filesystem.tmp === 'shared') add('/tmp', all, false, 'filesystem.tmp (shared)')
    for (const e of policy.filesystem.readOnly) add(e.path, READ, e.optional, e.origin.field, e.origin)
    for (const e of policy.filesystem.executable) add(e.path, READ_EXEC, e.optional, e.origin.field, e.origin)
    for (const e of policy.filesystem.readWrite) add(e.path, all, e.optional, e.origin.field, e.origin)

    let handledNet = 0
    const ports: LandlockPortRule[] = []
    if (proxy && abi >= 4 && policy.network.mode === 'proxy') {
      handledNet = netRightsAt(abi)
      for (const port of [...new Set(opts.gatePorts ?? [])].sort((a, b) => a - b))
        ports.push({ port, access: NET.connect_tcp, origin: 'network (egress gate / router)' })
      for (const port of [...new Set(policy.network.connect)].sort((a, b) => a - b))
        if (!(opts.gatePorts ?? []).includes(port)) ports.push({ port, access: NET.connect_tcp, origin: 'network.connect' })
      for (const port of [...new Set(policy.network.bind)].sort((a, b) => a - b))
        ports.push({ port, access: NET.bind_tcp, origin: 'network.bind' })
    }
    // a rule under another rule that already grants all of its rights adds nothing (Landlock
    // unions the rights of every rule on the path): drop it to keep the plan short
    const list = [...rules.values()]
    // (never the private /tmp: it is mounted on /tmp, where the workspace is not on its path walk)
    const paths = list.filter((r) => r.path === privateTmp ||
      !list.some((o) => o !== r && under(r.path, o.path) && (r.access & ~o.access) === 0 && (!o.optional || r.optional)))
    landlock = { handledFs: all, handledNet, scoped: scopesAt(abi), restrictFlags: 0, paths, ports }

    // what this ABI cannot enforce, in words
    const wanted = ['fs.refer', 'fs.truncate', 'fs.ioctl_dev', 'scope.abstract_unix_socket', 'scope.signal']
    if (proxy) wanted.push('net.connect_tcp', 'net.bind_tcp')
    for (const r of wanted) {
      const need = INTRODUCED_IN[r]!
      if (need > abi) lost.push(`${LOST_WORDS[r]} (this kernel has Landlock ABI ${abi})`)
    }
  }

  // seccomp
  let seccomp: SeccompPlan | null = null
  if (policy.process.seccomp) {
    const o: Origin = { field: 'process.seccomp', file: policy.source }
    if (!features.seccomp) {
      lost.push('seccomp: not available on this kernel, so the syscall filter is not applied')
    } else {
      let r
      try {
        r = compileSeccompDetailed(policy.process.seccomp.profile, features.arch)
      } catch (e) {
        if (e instanceof PolicyError) throw perr(o, `${policy.process.seccomp.source}: ${e.message}`)
        throw e
      }
      seccomp = { arch: features.arch, filter: r.program, source: policy.process.seccomp.source }
    }
  }

  // other processes: as root, a procfs of the sandbox's own with hidepid=invisible lists only what
  // the sandbox may ptrace-read, which under Landlock is its own domain. Without root a procfs can
  // be mounted only for a PID namespace the sandbox's user namespace owns, so the helper makes one
  // (its init and the program inside, native/cordon-exec.c); on `auto` it falls back to the host's
  // list where the kernel refuses that (containers often do), on `hidden` it refuses to run
  const others = policy.process.others
  const canHide = landlock !== null && (features.isRoot || (!opts.inPlace && features.userNamespaces))
  const hideProcesses = others !== 'visible' && canHide
  const hideProcessesBestEffort = hideProcesses && !features.isRoot && others === 'auto'
  if (others === 'hidden' && !hideProcesses)
    lost.push(`process.others: hidden: the host's processes stay listed in /proc (their cmdline and status readable), because ${
      !landlock ? 'hiding them relies on Landlock'
      : opts.inPlace ? 'without root hiding them needs a PID namespace, which lock() cannot give the process it confines (spawn() and cordon run can)'
      : 'without root hiding them needs a PID namespace in a user namespace, and user namespaces are not available to this user'}`)

  if (!req.bestEffort && lost.length)
    throw perr(req.origins.bestEffort,
      `this kernel cannot enforce everything the policy asks (best_effort is false): ${lost.join('; ')}`,
      'run on a newer kernel, or set requirements.best_effort: true to run with what it has')

  // environment: only what the policy passes, plus what it sets
  const src = opts.env ?? process.env
  const env: Record<string, string> = {}
  for (const name of policy.process.env.pass) {
    if (name.endsWith('*')) {
      const prefix = name.slice(0, -1)
      for (const [k, v] of Object.entries(src)) if (k.startsWith(prefix) && v !== undefined) env[k] = v
    } else if (src[name] !== undefined) env[name] = src[name]!
  }
  if (env.PATH === undefined) env.PATH = DEFAULT_PATH
  if (home) env.HOME = home
  if (privateTmp) env.TMPDIR = '/tmp'
  Object.assign(env, policy.process.env.set)
  const sortedEnv = Object.fromEntries(Object.keys(env).sort().map((k) => [k, env[k]!]))

  // a directory nothing grants read on, to verify Landlock is in force
  let probePath: string | null = null
  if (landlock) {
    const readers = landlock.paths.filter((r) => (r.access & FS.read_dir) !== 0).map((r) => r.path)
    for (const c of ['/', '/root', '/home', '/var', '/srv', '/mnt', '/opt', '/boot']) {
      if (readers.some((r) => under(c, r))) continue
      try {
        if (fs.statSync(c).isDirectory()) {
          probePath = c
          break
        }
      } catch {
        /* next */
      }
    }
  }

  const plan: Omit<Plan, 'hash'> = {
    abi,
    landlock,
    seccomp,
    network: policy.network.mode === 'host' || (policy.network.mode === 'proxy' && policy.network.namespace === 'current')
      ? { mode: 'host' } : { mode: 'none' },
    privateTmp,
    mkdirs,
    env: sortedEnv,
    rlimits: compileRlimits(policy.process.rlimits),
    dropCapabilities: policy.process.capabilities === 'none',
    hideProcesses,
    ...(hideProcessesBestEffort ? { hideProcessesBestEffort } : {}),
    probePath,
    lost,
  }
  return { ...plan, hash: planHash(plan) }
}

function realOrSelf(p: string): string {
  try {
    return fs.realpathSync(p)
  } catch {
    return p
  }
}
