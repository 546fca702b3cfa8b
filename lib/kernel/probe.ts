/**
 * What this kernel can enforce. probe() is cheap (one syscall and a few /proc reads, cached) and
 * feeds compilePlan(); doctor() adds a richer, human-oriented report (it may run the helper).
 */
import { readFileSync, existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { release } from 'node:os'
import type { Arch, KernelFeatures } from '../policy/plan.js'
import { addon, helperPath } from './addon.js'
import { FS, NET, SCOPE, INTRODUCED_IN, fsRightsAt, netRightsAt, scopesAt, rightNames } from './abi.js'

/** node:child_process loaded on first use (~7 ms CPU; the confined image after a re-exec never needs it). */
const childProcess = () => createRequire(import.meta.url)('node:child_process') as typeof import('node:child_process')

function readText(p: string): string | null {
  try {
    return readFileSync(p, 'utf8')
  } catch {
    return null
  }
}

export function nodeArch(arch: string = process.arch): Arch {
  if (arch === 'x64') return 'x86_64'
  if (arch === 'arm64') return 'aarch64'
  throw new Error(`cordon: unsupported architecture ${arch}; cordon supports x64 (x86_64) and arm64 (aarch64)`)
}

function kernelAtLeast(major: number, minor: number): boolean {
  const m = /^(\d+)\.(\d+)/.exec(release())
  if (!m) return false
  const [a, b] = [Number(m[1]), Number(m[2])]
  return a > major || (a === major && b >= minor)
}

let cached: KernelFeatures | null = null

export function probe(opts: { fresh?: boolean } = {}): KernelFeatures {
  if (cached && !opts.fresh) return cached
  const status = readText('/proc/self/status') ?? ''
  const seccomp = /^Seccomp:/m.test(status) && existsSync('/proc/sys/kernel/seccomp/actions_avail')
  const maxUserns = Number((readText('/proc/sys/user/max_user_namespaces') ?? '0').trim())
  const unprivClone = readText('/proc/sys/kernel/unprivileged_userns_clone')
  const isRoot = process.geteuid?.() === 0
  const userNamespaces =
    existsSync('/proc/self/ns/user') && maxUserns > 0 && (isRoot || unprivClone === null || unprivClone.trim() !== '0')
  cached = {
    arch: nodeArch(),
    landlockAbi: addon().landlockAbi(),
    seccomp,
    // SECCOMP_FILTER_FLAG_TSYNC exists since Linux 3.17, wherever filter mode exists.
    seccompTsync: seccomp && kernelAtLeast(3, 17),
    userNamespaces,
    networkNamespaces: existsSync('/proc/self/ns/net'),
    cgroupV2: existsSync('/sys/fs/cgroup/cgroup.controllers'),
    isRoot,
  }
  return cached
}

export interface DoctorReport {
  kernel: string
  features: KernelFeatures
  landlock: {
    abi: number
    fs: string[]
    net: string[]
    scopes: string[]
    logFlags: boolean
    tsync: boolean
    /** rights a newer ABI would add */
    missing: string[]
  }
  /** a real attempt: the helper created a network namespace with loopback */
  networkNamespaceWorks: boolean | null
  helper: string | null
  addonError: string | null
  notes: string[]
}

export function doctor(): DoctorReport {
  const notes: string[] = []
  let features: KernelFeatures
  let addonError: string | null = null
  try {
    features = probe({ fresh: true })
  } catch (err) {
    addonError = (err as Error).message
    features = {
      arch: nodeArch(), landlockAbi: 0, seccomp: false, seccompTsync: false, userNamespaces: false,
      networkNamespaces: existsSync('/proc/self/ns/net'), cgroupV2: existsSync('/sys/fs/cgroup/cgroup.controllers'),
      isRoot: process.geteuid?.() === 0,
    }
  }
  const abi = features.landlockAbi
  const missing = Object.entries(INTRODUCED_IN).filter(([, v]) => v > abi).map(([k]) => `${k} (ABI ${INTRODUCED_IN[k]})`)
  let helper: string | null = null
  let netOk: boolean | null = null
  try {
    helper = helperPath()
    if (features.networkNamespaces) {
      const r = childProcess().spawnSync(helper, ['--netns', 'new', '--', '/bin/true'], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 5000 })
      netOk = r.status === 0
      if (!netOk) notes.push(`network namespace test failed: ${String(r.stderr ?? '').trim() || 'exit ' + r.status}`)
    }
  } catch (err) {
    notes.push((err as Error).message)
  }
  if (abi === 0) notes.push('Landlock is unavailable: enable CONFIG_SECURITY_LANDLOCK and add "landlock" to the lsm= boot parameter.')
  if (abi > 0 && abi < 8)
    notes.push('Landlock ABI < 8 has no all-threads restriction: lock() re-executes the process (code before lock() runs twice).')
  if (abi > 0 && abi < 9)
    notes.push('Pathname unix sockets are not mediated by Landlock here; the agent seccomp profile denies socket(AF_UNIX) instead (socketpair still works).')
  if (!features.isRoot && !features.userNamespaces)
    notes.push('Unprivileged user namespaces are disabled: network: none and a private /tmp need root here.')
  return {
    kernel: release(),
    features,
    landlock: {
      abi,
      fs: rightNames(FS, fsRightsAt(abi)),
      net: rightNames(NET, netRightsAt(abi)),
      scopes: rightNames(SCOPE, scopesAt(abi)),
      logFlags: abi >= 7,
      tsync: abi >= 8,
      missing,
    },
    networkNamespaceWorks: netOk,
    helper,
    addonError,
    notes,
  }
}
