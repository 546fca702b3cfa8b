/**
 * Config hot reload from the file system as deployments really change it:
 *  - a Kubernetes ConfigMap update (the kubelet writes a new timestamped directory, points
 *    `..data_tmp` at it and renames that over `..data`; router.yaml itself is a symlink that never
 *    changes, so no event is ever named router.yaml) is applied from the directory events alone;
 *  - a change the directory watch cannot see (router.yaml is a symlink into another directory) is
 *    applied by the hash poll.
 */
import t from 'tap'
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PrivacyRouter } from '../../lib/router/index.js'
import { sleep } from './helpers.js'

const root = mkdtempSync(join(tmpdir(), 'cordon-router-watch-'))
t.teardown(() => rmSync(root, { recursive: true, force: true }))

const cfg = (names: string[]) =>
  'routes:\n' + names.map((n, i) => `  - name: ${n}\n${i === 0 ? '    default: true\n' : `    models: [${n}-model]\n`}    targets:\n      - { provider: openai-compatible, base_url: "http://127.0.0.1:9/v1", model: m, auth: none }\n`).join('')

/** The kubelet's AtomicWriter, as far as the watcher can tell. */
class KubeletDir {
  private n = 0
  private current: string | null = null
  constructor(readonly dir: string) {
    mkdirSync(dir, { recursive: true })
  }
  write(files: Record<string, string>): void {
    const ts = `..2026_11_25_14_00_00.${process.pid}_${this.n++}`
    mkdirSync(join(this.dir, ts))
    for (const [k, v] of Object.entries(files)) writeFileSync(join(this.dir, ts, k), v)
    symlinkSync(ts, join(this.dir, '..data_tmp'))
    renameSync(join(this.dir, '..data_tmp'), join(this.dir, '..data'))
    for (const k of Object.keys(files)) {
      try {
        symlinkSync(join('..data', k), join(this.dir, k))
      } catch {
        /* the user-visible symlink exists already and never changes */
      }
    }
    if (this.current) rmSync(join(this.dir, this.current), { recursive: true, force: true })
    this.current = ts
  }
}

async function waitFor(cond: () => boolean, ms = 5000): Promise<boolean> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (cond()) return true
    await sleep(25)
  }
  return false
}

const names = (r: PrivacyRouter) => r.config.routes.map((x) => x.name).join(',')
const quiet = { write: () => true }

t.test('a ConfigMap ..data swap is applied from directory events (poll disabled)', async (t) => {
  const k = new KubeletDir(join(root, 'cm'))
  k.write({ 'router.yaml': cfg(['first']) })
  const r = await PrivacyRouter.start({ config: join(k.dir, 'router.yaml'), listen: ['127.0.0.1:0'], state: null, defaultMetrics: false, logDestination: quiet, pollMs: 3_600_000 })
  t.teardown(() => r.close())
  t.equal(names(r), 'first')
  k.write({ 'router.yaml': cfg(['first', 'second']) })
  t.ok(await waitFor(() => names(r) === 'first,second'), `update 1 applied (routes now ${names(r)})`)
  k.write({ 'router.yaml': cfg(['first', 'third']) })
  t.ok(await waitFor(() => names(r) === 'first,third'), `update 2 applied (routes now ${names(r)})`)
  k.write({ 'router.yaml': 'routes: {{{\n' })
  await sleep(500)
  t.equal(names(r), 'first,third', 'an invalid update is rejected; the last good config stays')
})

t.test('the hash poll applies a change no directory event reports', async (t) => {
  const real = join(root, 'elsewhere')
  const dir = join(root, 'conf')
  mkdirSync(real)
  mkdirSync(dir)
  writeFileSync(join(real, 'router.yaml'), cfg(['one']))
  symlinkSync(join(real, 'router.yaml'), join(dir, 'router.yaml'))
  const r = await PrivacyRouter.start({ config: join(dir, 'router.yaml'), listen: ['127.0.0.1:0'], state: null, defaultMetrics: false, logDestination: quiet, pollMs: 200 })
  t.teardown(() => r.close())
  t.equal(names(r), 'one')
  writeFileSync(join(real, 'router.yaml'), cfg(['one', 'two']))
  t.ok(await waitFor(() => names(r) === 'one,two', 3000), `poll applied the change (routes now ${names(r)})`)
})
