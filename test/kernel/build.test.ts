/**
 * Two build descriptions, one source: cmake-js (CMakeLists.txt, used for prebuilds) builds the
 * same two artifacts as node-gyp (binding.gyp), and the addons export the same functions.
 */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { addon, helperPath } from '../../lib/kernel/addon.js'

const REPO = fileURLToPath(new URL('../..', import.meta.url))
const require = createRequire(import.meta.url)
const hasCmake = spawnSync('cmake', ['--version']).status === 0

t.test('cmake-js builds the addon and the helper; same exports as the node-gyp build', { skip: !hasCmake && 'cmake is not installed' }, async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'cordon-cmake-'))
  t.teardown(() => rmSync(out, { recursive: true, force: true }))
  const r = spawnSync(process.execPath, [require.resolve('cmake-js/bin/cmake-js'), 'build', '-O', out, '-m', '--log-level', 'error'], {
    cwd: REPO, encoding: 'utf8', timeout: 180_000,
  })
  t.equal(r.status, 0, r.stderr.slice(-2000))
  const node = join(out, 'Release', 'cordon.node')
  const exe = join(out, 'Release', 'cordon-exec')
  t.ok(existsSync(node), 'cordon.node built')
  t.ok(existsSync(exe), 'cordon-exec built beside it')
  const cm = require(node) as Record<string, unknown>
  t.same(Object.keys(cm).sort(), Object.keys(addon()).sort(), 'same exported functions')
  t.equal((cm.landlockAbi as () => number)(), addon().landlockAbi())
  const h = spawnSync(exe, ['--', '/bin/echo', 'ok'], { encoding: 'utf8' })
  t.equal(h.stdout, 'ok\n')
  const bad = spawnSync(exe, ['--nope'], { encoding: 'utf8' })
  t.equal(bad.status, 125)
  t.ok(readFileSync(helperPath()).length > 0)
})
