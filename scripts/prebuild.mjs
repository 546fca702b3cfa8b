#!/usr/bin/env node
/**
 * `npm run prebuild`: build the prebuilt binaries that ship in the npm package.
 *
 *   prebuilds/linux-x64/cordon.glibc.node     N-API addon (one binary for every Node >= 20)
 *   prebuilds/linux-x64/cordon-exec           the helper executable, beside the addon
 *   prebuilds/linux-arm64/cordon.glibc.node   cross-compiled with cmake/aarch64-linux-gnu.cmake
 *   prebuilds/linux-arm64/cordon-exec
 *
 * Usage: node scripts/prebuild.mjs [--arch x64,arm64] [--out DIR] [--quiet]
 *        node scripts/prebuild.mjs --check   exit 1 unless every prebuild exists and is newer than
 *                                            native/, CMakeLists.txt and this script (for prepack)
 *
 * How: prebuildify does the naming (node-gyp-build's tag rules: `<name>[.<libc>].node`, N-API so
 * no ABI tag), the stripping and the prebuilds/<platform>-<arch>/ layout. prebuildify 6 only knows
 * how to call node-gyp, but it lets us name the program it calls (`nodeGyp` option); this same
 * file is that program: invoked as `prebuild.mjs rebuild --arch=... --release ...` it runs cmake-js
 * on CMakeLists.txt instead, with the CMake toolchain file when the target arch is not the host's.
 * The build happens in a temporary directory, so a developer's build/Release is never touched.
 *
 * Link choices (prebuild only; binding.gyp's from-source build keeps the compiler's defaults):
 *  - cordon-exec is linked -static-pie: no NEEDED entries at all, no glibc version floor, ASLR kept.
 *    It only does syscalls and execvp (no NSS), so static glibc is safe (the link would warn).
 *  - cordon.node links libc and libstdc++ dynamically. It is only ever dlopen()ed into a node
 *    process, and the official node binary (both arches) itself NEEDs libstdc++.so.6, libgcc_s
 *    and libc, so the addon maps no library that is not already loaded; its symbol versions
 *    (GLIBC <= 2.17, GLIBCXX <= 3.4.21, CXXABI <= 1.3.9) are at or below node's own. A fully
 *    static libstdc++ was measured and rejected: on this Debian 12 toolchain it pulls libgcc's
 *    unwinder and raises the glibc floor to 2.35 (no RHEL 9, Amazon Linux 2023, Debian 11).
 *    test/prebuild/elf.test.ts asserts both facts against the real node binaries.
 *
 * musl (Alpine) is not built: Debian has no musl C++ toolchain. The addon is tagged `glibc`, so
 * node-gyp-build on Alpine skips it and the install falls back to building from source.
 */
import { spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { copyFileSync, chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { arch as hostArch, tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const SELF = fileURLToPath(import.meta.url)
const ROOT = resolve(dirname(SELF), '..')
const require = createRequire(join(ROOT, 'package.json'))

/** Per target arch: CMake toolchain file (cross only), strip program, triple. */
const TARGETS = {
  x64: { triple: 'x86_64-linux-gnu', toolchain: 'cmake/x86_64-linux-gnu.cmake', strip: 'x86_64-linux-gnu-strip' },
  arm64: { triple: 'aarch64-linux-gnu', toolchain: 'cmake/aarch64-linux-gnu.cmake', strip: 'aarch64-linux-gnu-strip' },
}

/** Linker flags for the shipped binaries (see header). */
const ADDON_LDFLAGS = '-Wl,--as-needed -Wl,--gc-sections -Wl,-z,relro -Wl,-z,now'
const HELPER_LDFLAGS = '-static-pie -Wl,--gc-sections -Wl,-z,relro -Wl,-z,now'

function die(msg) {
  process.stderr.write(`prebuild: ${msg}\n`)
  process.exit(1)
}

function which(cmd) {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' })
  return r.status === 0 ? r.stdout.trim() : null
}

// ---------------------------------------------------------------------------------------------
// Mode 1: called by prebuildify in place of node-gyp: `rebuild --target=V --devdir=D --arch=A --release`
// cwd is the staging directory; prebuildify then takes build/Release/*.node from it.
// ---------------------------------------------------------------------------------------------
async function asNodeGyp(argv) {
  const opt = Object.fromEntries(
    argv.filter((a) => a.startsWith('--')).map((a) => {
      const [k, ...v] = a.slice(2).split('=')
      return [k, v.join('=') || true]
    }),
  )
  const arch = opt.arch || hostArch()
  const t = TARGETS[arch]
  if (!t) die(`no target description for arch ${arch}`)
  const source = process.env.CORDON_PREBUILD_SOURCE || ROOT
  const cMakeOptions = {
    CMAKE_SHARED_LINKER_FLAGS: ADDON_LDFLAGS,
    CMAKE_EXE_LINKER_FLAGS: HELPER_LDFLAGS,
    // Export only the N-API entry points (NAPI_MODULE_EXPORT); node-addon-api's inline C++ stays
    // private, so two addons built against different node-addon-api versions cannot interpose.
    CMAKE_C_VISIBILITY_PRESET: 'hidden',
    CMAKE_CXX_VISIBILITY_PRESET: 'hidden',
    CMAKE_VISIBILITY_INLINES_HIDDEN: 'ON',
    CMAKE_POLICY_DEFAULT_CMP0063: 'NEW',
  }
  if (arch !== hostArch()) cMakeOptions.CMAKE_TOOLCHAIN_FILE = join(source, t.toolchain)

  const { BuildSystem } = require('cmake-js')
  const bs = new BuildSystem({
    directory: source,
    out: join(process.cwd(), 'build'),
    runtime: 'node',
    runtimeVersion: String(opt.target || process.versions.node).replace(/^v/, ''),
    arch,
    debug: opt.debug === true,
    cMakeOptions,
    logLevel: process.env.PREBUILD_QUIET === '1' ? 'warn' : 'info',
  })
  // A Node-API build needs only the node-api-headers package, no node headers download (we are
  // offline). cmake-js decides that from package.json `binary.napi_versions`; without that field
  // it would try to download headers, so say it here (same object cmake-js's CMake step reads).
  bs.options.isNodeApi = true
  await bs.rebuild()
}

// ---------------------------------------------------------------------------------------------
// Mode 2: `npm run prebuild`
// ---------------------------------------------------------------------------------------------
function parseArgs(argv) {
  const out = { arches: ['x64', 'arm64'], out: ROOT, quiet: false, check: false }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--arch') out.arches = argv[++i].split(',').filter(Boolean)
    else if (a.startsWith('--arch=')) out.arches = a.slice(7).split(',').filter(Boolean)
    else if (a === '--out') out.out = resolve(argv[++i])
    else if (a === '--quiet') out.quiet = true
    else if (a === '--check') out.check = true
    else die(`unknown option ${a}; usage: prebuild.mjs [--arch x64,arm64] [--out DIR] [--quiet]`)
  }
  return out
}

function checkTools(arches) {
  const missing = []
  for (const tool of ['cmake', 'readelf']) if (!which(tool)) missing.push(tool)
  for (const a of arches) {
    if (!TARGETS[a]) die(`unsupported arch ${a} (supported: ${Object.keys(TARGETS).join(', ')})`)
    if (a === hostArch()) {
      if (!which('g++') || !which('gcc')) missing.push('g++')
    } else if (!which(`${TARGETS[a].triple}-g++`)) missing.push(`${TARGETS[a].triple}-g++`)
  }
  if (missing.length) {
    die(
      `missing tools: ${missing.join(', ')}. On Debian/Ubuntu: ` +
        'apt-get install cmake g++ g++-aarch64-linux-gnu binutils-aarch64-linux-gnu file',
    )
  }
}

function stripProgram(arch) {
  const p = TARGETS[arch].strip
  if (which(p)) return p
  if (arch === hostArch()) return 'strip'
  die(`${p} not found (apt-get install binutils-${TARGETS[arch].triple})`)
}

function prebuildifyOnce(opts) {
  const prebuildify = require('prebuildify')
  return new Promise((res, rej) => prebuildify(opts, (err) => (err ? rej(err) : res())))
}

function neededOf(file) {
  const r = spawnSync('readelf', ['-d', '-W', file], { encoding: 'utf8' })
  if (r.status !== 0) return ['<readelf failed>']
  return [...r.stdout.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1])
}

/** --check: are the prebuilds there and newer than what they are built from? */
function check(args, pkg) {
  const src = [join(ROOT, 'CMakeLists.txt'), SELF, ...readdirSync(join(ROOT, 'native')).map((f) => join(ROOT, 'native', f))]
  const newestSource = Math.max(...src.filter(existsSync).map((f) => statSync(f).mtimeMs))
  const problems = []
  for (const arch of args.arches) {
    for (const f of [`${pkg.name}.glibc.node`, 'cordon-exec']) {
      const p = join(args.out, 'prebuilds', `linux-${arch}`, f)
      if (!existsSync(p)) problems.push(`${p} is missing`)
      else if (statSync(p).mtimeMs < newestSource) problems.push(`${p} is older than the native sources`)
    }
  }
  if (problems.length) die(`${problems.join('\n  ')}\nrun \`npm run prebuild\` before packing`)
  process.stdout.write(`prebuild: prebuilds for ${args.arches.join(', ')} are present and current\n`)
}

async function main() {
  const args = parseArgs(process.argv.slice(2))
  if (args.check) return check(args, JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')))
  if (process.platform !== 'linux') die('prebuilds are made on Linux (x86_64 host)')
  checkTools(args.arches)
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'))
  const stage = mkdtempSync(join(tmpdir(), 'cordon-prebuild-'))
  const report = []
  try {
    for (const arch of args.arches) {
      const cwd = join(stage, arch)
      mkdirSync(cwd, { recursive: true })
      // prebuildify reads only the name from here; cmake-js builds from CORDON_PREBUILD_SOURCE.
      writeFileSync(join(cwd, 'package.json'), JSON.stringify({ name: pkg.name, version: pkg.version }))
      process.env.CORDON_PREBUILD_SOURCE = ROOT
      process.env.PREBUILD_QUIET = args.quiet ? '1' : '0'
      const stripBin = stripProgram(arch)
      const dest = join(args.out, 'prebuilds', `linux-${arch}`)
      // Build into the staging directory, then move each finished file into place with rename()
      // so a test or process loading prebuilds/ meanwhile never sees a missing or partial file.
      const staged = join(stage, 'out', 'prebuilds', `linux-${arch}`)
      process.stdout.write(`prebuild: linux-${arch} (cmake-js${arch === hostArch() ? '' : ` + ${TARGETS[arch].toolchain}`})\n`)
      await prebuildifyOnce({
        cwd,
        out: join(stage, 'out'),
        arch,
        platform: 'linux',
        napi: true,
        targets: [process.versions.node], // N-API: the version only picks headers; any >= 20 works
        strip: true,
        stripBin,
        tagLibc: true,
        libc: 'glibc',
        nodeGyp: SELF,
        quiet: args.quiet,
      })
      // The helper executable: beside the addon, stripped, mode 0755.
      const helper = ['build/Release/cordon-exec', 'build/cordon-exec'].map((p) => join(cwd, p)).find(existsSync)
      if (!helper) die(`cordon-exec was not built for ${arch} (looked in ${cwd}/build)`)
      copyFileSync(helper, join(staged, 'cordon-exec'))
      const s = spawnSync(stripBin, ['--strip-all', join(staged, 'cordon-exec')], { stdio: 'inherit' })
      if (s.status !== 0) die(`${stripBin} failed on ${join(staged, 'cordon-exec')}`)
      chmodSync(join(staged, 'cordon-exec'), 0o755)
      const built = readdirSync(staged)
      mkdirSync(dest, { recursive: true })
      for (const f of built) {
        const tmp = join(dest, `.${f}.tmp-${process.pid}`)
        copyFileSync(join(staged, f), tmp)
        chmodSync(tmp, statSync(join(staged, f)).mode & 0o777)
        renameSync(tmp, join(dest, f))
      }
      for (const f of readdirSync(dest)) if (!built.includes(f)) rmSync(join(dest, f), { recursive: true, force: true })
      for (const f of [join(dest, `${pkg.name}.glibc.node`), join(dest, 'cordon-exec')]) {
        if (!existsSync(f)) die(`expected ${f} after the build`)
        report.push({ file: f.slice(args.out.length + 1), bytes: statSync(f).size, needed: neededOf(f) })
      }
    }
  } finally {
    rmSync(stage, { recursive: true, force: true })
  }
  for (const r of report) {
    process.stdout.write(
      `  ${r.file.padEnd(40)} ${String(r.bytes).padStart(8)} bytes  NEEDED: ${r.needed.join(', ') || '(none: static)'}\n`,
    )
  }
}

if (process.argv[2] === 'rebuild') {
  asNodeGyp(process.argv.slice(3)).catch((err) => die(err?.stack || String(err)))
} else {
  main().catch((err) => die(err?.stack || String(err)))
}
