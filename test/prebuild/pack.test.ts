/**
 * What a user gets from the registry: `npm pack` the package (prepare compiles lib/ to dist/),
 * check the tarball holds what runs it and nothing that is only for development, install it into
 * a new directory with every compiler and build tool off PATH (and npm_config_build_from_source
 * unset), and run a confined command with the installed `cordon`, plus a read that must be denied.
 */
import t from 'tap'
import { accessSync, constants, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ROOT, ensurePrebuilds, pathWithoutCompilers, sh, which } from './helpers.js'

// npm pack (tsc) + an install of every dependency: minutes on a busy 2-core box.
t.setTimeout(600000)
ensurePrebuilds()

// Outside /tmp: cordon gives the sandbox a private /tmp, so a file under the host's /tmp would be
// invisible (ENOENT) rather than denied by Landlock (EACCES), which is what we want to see.
const base = mkdtempSync(join(existsSync('/var/tmp') ? '/var/tmp' : tmpdir(), 'cordon-pack-test-'))
t.teardown(() => rmSync(base, { recursive: true, force: true }))

interface PackFile { path: string; size: number; mode?: number }
let tarball = ''
let files: PackFile[] = []

t.test('npm pack', async (t) => {
  // CORDON_PACK_TARBALL: check an already packed tarball (e.g. the one CI publishes) instead.
  if (process.env.CORDON_PACK_TARBALL) {
    tarball = process.env.CORDON_PACK_TARBALL
    const l = sh('tar', ['tzf', tarball])
    t.equal(l.status, 0, `tar tzf ${tarball}`)
    files = l.stdout.split('\n').filter((p) => p.startsWith('package/') && !p.endsWith('/')).map((p) => ({ path: p.slice(8), size: 0 }))
    return
  }
  const r = sh('npm', ['pack', '--json', '--pack-destination', base], { cwd: ROOT, timeout: 240_000 })
  t.equal(r.status, 0, `npm pack (runs prepare: tsc) succeeded${r.status ? `:\n${r.stderr.slice(-3000)}\n${r.stdout.slice(-2000)}` : ''}`)
  if (r.status !== 0) return
  const info = JSON.parse(r.stdout.slice(r.stdout.indexOf('['))) as Array<{ filename: string; files: PackFile[]; size: number; unpackedSize: number }>
  tarball = join(base, info[0].filename)
  files = info[0].files
  t.comment(`${info[0].filename}: ${files.length} files, ${(info[0].size / 1024).toFixed(0)} KiB packed, ${(info[0].unpackedSize / 1024).toFixed(0)} KiB unpacked`)
})

t.test('the tarball ships what runs cordon', async (t) => {
  if (!files.length) return t.fail('no tarball (npm pack failed)')
  const paths = new Set(files.map((f) => f.path))
  for (const arch of ['x64', 'arm64']) {
    for (const f of ['cordon.glibc.node', 'cordon-exec']) t.ok(paths.has(`prebuilds/linux-${arch}/${f}`), `prebuilds/linux-${arch}/${f}`)
  }
  for (const f of ['package.json', 'bin/cordon.js', 'dist/cli/main.js', 'dist/kernel/index.js', 'dist/policy/index.js', 'dist/sandbox/index.js', 'profiles/agent.yaml', 'profiles/seccomp/agent.json', 'README.md']) {
    t.ok(paths.has(f), f)
  }
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'))
  for (const entry of [pkg.main, pkg.types].filter(Boolean)) t.ok(paths.has(String(entry).replace(/^\.\//, '')), `package.json main/types target ${entry} is in the tarball`)
  // the from-source fallback (`npm rebuild cordon`) needs these
  for (const f of ['binding.gyp', 'native/cordon.cc', 'native/cordon-exec.c']) t.ok(paths.has(f), `${f} (build from source)`)
  const js = [...paths].filter((p) => p.startsWith('dist/') && p.endsWith('.js'))
  t.ok(js.length > 10, `${js.length} compiled modules in dist/`)
  t.same(js.filter((p) => !paths.has(p.replace(/\.js$/, '.d.ts'))), [], 'every dist/**/*.js has its .d.ts')
})

t.test('the tarball ships nothing that is only for development', async (t) => {
  if (!files.length) return t.fail('no tarball (npm pack failed)')
  const devOnly = /^(test|tests|bench|\.ci|\.github|\.tap|coverage|node_modules|build|deploy|scripts|lib|cmake)\/|^(tsconfig.*\.json|\.taprc|\.gitignore|package-lock\.json|.*\.tgz)$|\.test\.|(^|\/)fixtures\//
  t.same(files.map((f) => f.path).filter((p) => devOnly.test(p)), [], 'no tests, benches, CI, TypeScript sources, build trees or lockfile')
  // A source map is only useful if the source it points at ships too (or is inlined in it).
  const paths = new Set(files.map((f) => f.path))
  const maps = [...paths].filter((p) => p.endsWith('.map'))
  const broken = maps.filter((m) => {
    const x = sh('tar', ['xzf', tarball, '-O', `package/${m}`])
    try {
      const map = JSON.parse(x.stdout) as { sources?: string[]; sourcesContent?: unknown[] }
      const sources = map.sources ?? []
      if (map.sourcesContent?.length === sources.length) return false
      return sources.some((s) => !paths.has(join(m, '..', s).replace(/^\/+/, '')))
    } catch {
      return true
    }
  })
  t.same(broken.slice(0, 5), [], `no source maps pointing at sources the package does not ship (${broken.length} of ${maps.length})`)
})

t.test('install with no compiler, then run confined commands', async (t) => {
  if (!tarball) return t.fail('no tarball (npm pack failed)')
  const bin = pathWithoutCompilers(join(base, 'bin'))
  const env: NodeJS.ProcessEnv = { HOME: process.env.HOME, PATH: bin, LANG: 'C.UTF-8', TERM: 'dumb' }
  for (const [k, v] of Object.entries(process.env)) if (/^npm_config_cache$/i.test(k)) env[k] = v
  for (const tool of ['g++', 'gcc', 'cc', 'c++', 'make', 'cmake', 'clang']) t.equal(which(tool, env), null, `${tool} is not on PATH`)
  t.equal(env.npm_config_build_from_source, undefined, 'npm_config_build_from_source is unset')

  const app = join(base, 'app')
  mkdirSync(app)
  // allowScripts: recent npm blocks dependency install scripts unless the project allows them;
  // allow cordon's (node-gyp-build) so the test also proves that install script needs no compiler.
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true, allowScripts: { cordon: true } }))
  const install = (mode: string) =>
    sh('npm', ['install', mode, '--no-audit', '--no-fund', '--foreground-scripts', tarball], { cwd: app, env, timeout: 300_000 })
  let r = install('--offline')
  if (r.status !== 0 && /ENOTCACHED/.test(r.stderr)) {
    t.comment('some dependency is not in the npm cache; retrying with --prefer-offline')
    r = install('--prefer-offline')
  }
  t.equal(r.status, 0, `npm install of the tarball succeeded without a compiler${r.status ? `:\n${r.stderr.slice(-3000)}` : ''}`)
  if (r.status !== 0) return
  t.match(r.stdout + r.stderr, /> node-gyp-build/, 'cordon\'s install script (node-gyp-build) ran, and found the prebuild')
  const pkgDir = join(app, 'node_modules', 'cordon')
  t.notOk(existsSync(join(pkgDir, 'build')), 'nothing was compiled (no node_modules/cordon/build)')
  for (const f of ['prebuilds/linux-x64/cordon-exec', 'prebuilds/linux-arm64/cordon-exec']) {
    t.doesNotThrow(() => accessSync(join(pkgDir, f), constants.X_OK), `${f} is executable after install`)
  }
  const where = sh(
    process.execPath,
    ['--input-type=module', '-e', `const k = await import(${JSON.stringify(join(pkgDir, 'dist', 'kernel', 'index.js'))}); console.log(k.helperPath()); console.log(k.probe().landlockAbi)`],
    { cwd: app, env },
  )
  t.equal(where.status, 0, `the installed lib/kernel loads its addon${where.status ? `: ${where.stderr}` : ''}`)
  t.equal(where.stdout.split('\n')[0], join(pkgDir, 'prebuilds', 'linux-x64', 'cordon-exec'), 'the installed package uses the prebuilt helper')

  const ws = join(base, 'ws')
  mkdirSync(ws)
  writeFileSync(join(ws, 'hello.txt'), 'hello from the workspace\n')
  const secret = join(base, 'secret.txt')
  writeFileSync(secret, 'TOP-SECRET-OUTSIDE-WORKSPACE\n')
  const cordon = (args: string[]) => sh('npx', ['--no', 'cordon', ...args], { cwd: app, env, timeout: 60_000 })

  const ok = cordon(['run', '--workspace', ws, '--', 'sh', '-c', `cat ${ws}/hello.txt && echo written > ${ws}/out.txt && head -n1 /etc/os-release`])
  t.equal(ok.status, 0, `cordon run succeeded${ok.status ? `: ${ok.stderr}` : ''}`)
  t.match(ok.stdout, /hello from the workspace/, 'the confined command read its workspace')
  t.match(ok.stdout, /^(PRETTY_)?NAME=/m, 'and the system files it needs')
  t.equal(existsSync(join(ws, 'out.txt')) && readFileSync(join(ws, 'out.txt'), 'utf8'), 'written\n', 'and wrote into its workspace')

  t.equal(sh('cat', [secret], { env }).status, 0, 'control: the secret is readable outside cordon')
  const denied = cordon(['run', '--workspace', ws, '--', 'cat', secret])
  t.not(denied.status, 0, 'cordon run cat <file outside the workspace> fails')
  t.notMatch(denied.stdout, /TOP-SECRET/, 'the secret did not leak')
  t.match(denied.stderr, /Permission denied/, `denied by the kernel (EACCES): ${denied.stderr.trim().split('\n').pop()}`)
})
