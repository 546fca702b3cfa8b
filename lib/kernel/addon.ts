/**
 * The only module that loads the native addon (native/cordon.cc) and locates the helper
 * executable (native/cordon-exec.c). Everything else imports the typed wrappers from here.
 *
 * Lookup, in one place (helperPath): the helper sits beside the addon that node-gyp-build
 * selected — build/Release/ after a local build, prebuilds/<platform>-<arch>/ for prebuilds.
 */
import { createRequire } from 'node:module'
import { existsSync, accessSync, constants } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const require = createRequire(import.meta.url)

/** The raw addon surface (see native/cordon.cc). Every failure throws an Error with .code/.errno/.syscall. */
export interface CordonAddon {
  landlockAbi(): number
  landlockCreateRuleset(handledFs: number, handledNet: number, scoped: number): number
  landlockAddPathRule(fd: number, path: string, access: number): void
  landlockAddPortRule(fd: number, port: number, access: number): void
  landlockRestrictSelf(fd: number, flags: number): void
  setNoNewPrivs(): void
  getNoNewPrivs(): boolean
  seccompSetFilter(prog: Uint8Array, flags: number): void
  /** 0 none, 1 strict, 2 filter, -1 kernel without seccomp */
  seccompGetMode(): number
  setrlimit(resource: number, soft: number | null, hard: number | null): void
  closeFd(fd: number): void
  execve(path: string, argv: string[], envp: string[]): never
  /** the tunnel data plane (native/relay.cc); lib/kernel/relay.ts wraps it */
  relayStart(onEnd: (id: number, aToB: number, bToA: number, error: string) => void): void
  /** sendBufferA > 0: SO_SNDBUF for A; 0 or absent leaves the kernel's autotuning */
  relayAdd(id: number, fdA: number, fdB: number, toA: Uint8Array | null, toB: Uint8Array | null, idleMs: number, sendBufferA?: number): void
  relayClose(id: number, reason: string): void
  /**
   * the inode of the TCP socket src:srcPort -> dst:dstPort in the network namespace at netnsPath
   * ('' = the caller's), by an exact NETLINK_SOCK_DIAG lookup (native/sockdiag.cc); 0 when there is
   * no such socket, or the kernel has no inet_diag (it says ENOENT for both)
   */
  sockDiagInode(netnsPath: string, family: 4 | 6, src: Uint8Array, srcPort: number, dst: Uint8Array, dstPort: number): number
}

/** The package root (holds package.json, binding.gyp, build/, prebuilds/). */
export function packageRoot(): string {
  // lib/kernel/addon.ts in development, dist/kernel/addon.js when built: two levels up either way.
  let dir = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
  for (let i = 0; i < 4; i++) {
    if (existsSync(join(dir, 'binding.gyp')) || existsSync(join(dir, 'prebuilds'))) return dir
    dir = dirname(dir)
  }
  return resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
}

let cachedAddon: CordonAddon | null = null
let cachedAddonPath: string | null = null

function addonFile(): string {
  if (cachedAddonPath) return cachedAddonPath
  const ngb = require('node-gyp-build') as { path(dir: string): string }
  try {
    cachedAddonPath = ngb.path(packageRoot())
  } catch (err) {
    const e = new Error(
      `cordon: the native addon is not built (${(err as Error).message.split('\n')[0]}). ` +
        `Run \`npm rebuild cordon\` (needs python3, make and g++) or install on linux-x64/arm64 for a prebuild.`,
    )
    ;(e as NodeJS.ErrnoException).code = 'CORDON_NO_ADDON'
    throw e
  }
  return cachedAddonPath
}

export function addon(): CordonAddon {
  if (!cachedAddon) cachedAddon = require(addonFile()) as CordonAddon
  return cachedAddon
}

/** Allow tests to substitute a fake addon (e.g. to drive the ABI >= 8 code path on an ABI 7 kernel). */
export function setAddonForTesting(fake: CordonAddon | null): void {
  cachedAddon = fake
}

let cachedHelper: string | null = null

/** Absolute path of the cordon-exec helper (beside the addon node-gyp-build selected). */
export function helperPath(): string {
  if (cachedHelper) return cachedHelper
  const candidates = [join(dirname(addonFile()), 'cordon-exec')]
  const root = packageRoot()
  candidates.push(join(root, 'build', 'Release', 'cordon-exec'))
  candidates.push(join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'cordon-exec'))
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK)
      cachedHelper = c
      return c
    } catch {
      /* next */
    }
  }
  const e = new Error(
    `cordon: the helper executable cordon-exec was not found (looked in ${candidates.join(', ')}). ` +
      'Run `npm rebuild cordon` to build it.',
  )
  ;(e as NodeJS.ErrnoException).code = 'CORDON_NO_HELPER'
  throw e
}
