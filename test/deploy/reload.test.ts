/**
 * ConfigMap hot reload. The kubelet updates a mounted ConfigMap by re-pointing the `..data`
 * symlink at a new directory; the file the process opened by name is a symlink that never
 * changes. This test reproduces that layout and sequence (lib/atomic-writer.ts) and asserts:
 *  - the engine (`cordon engine --policy`) and the router (`cordon router --config`) started on
 *    such a directory apply two successive updates, and keep serving the last good config when
 *    an update is invalid;
 *  - why it matters: a watcher on the file alone, or one that filters directory events by the
 *    file's name, misses the update; the reference watcher (lib/config-watch.ts) does not.
 */
import t from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, watch, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import http from 'node:http'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { AtomicWriterDir } from './lib/atomic-writer.js'
import { watchConfigFile } from './lib/config-watch.js'
import { ROOT } from './lib/k8s.js'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const tmp = mkdtempSync(path.join(os.tmpdir(), 'cordon-reload-'))
t.teardown(() => rmSync(tmp, { recursive: true, force: true }))

async function freePort(): Promise<number> {
  const s = net.createServer()
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  const p = (s.address() as net.AddressInfo).port
  await new Promise((r) => s.close(r))
  return p
}

function getJson(opts: http.RequestOptions): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ ...opts, timeout: 3000 }, (res) => {
      let b = ''
      res.on('data', (c) => (b += c))
      res.on('end', () => {
        try {
          resolve({ status: res.statusCode ?? 0, body: JSON.parse(b) })
        } catch {
          resolve({ status: res.statusCode ?? 0, body: b })
        }
      })
    })
    req.on('error', reject)
    req.on('timeout', () => req.destroy(new Error('timeout')))
  })
}

async function until<T>(what: string, fn: () => Promise<T | undefined | false>, ms = 15000): Promise<T> {
  const end = Date.now() + ms
  let last: unknown
  while (Date.now() < end) {
    try {
      const v = await fn()
      if (v) return v
    } catch (e) {
      last = e
    }
    await sleep(100)
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? ` (last error: ${(last as Error).message})` : ''}`)
}

function cordon(args: string[], name: string): { child: ChildProcess; output: () => string } {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'lib/cli/main.ts'), ...args], {
    cwd: ROOT, // tsx resolves from the package
    env: { ...process.env, HOME: tmp, XDG_CONFIG_HOME: path.join(tmp, '.config') },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  child.stdout!.on('data', (c) => (out += c))
  child.stderr!.on('data', (c) => (out += c))
  t.teardown(() => {
    child.kill('SIGTERM')
  })
  child.on('exit', (code, sig) => {
    if (code !== null && code !== 0) out += `\n[${name} exited ${code}${sig ? ` ${sig}` : ''}]`
  })
  return { child, output: () => out }
}

t.test('engine: reloads its policy through two kubelet ..data swaps', async (t) => {
  const dir = new AtomicWriterDir(path.join(tmp, 'engine-policy'))
  const policy = (allow: string[]) => `version: 1\nnetwork:\n  mode: proxy\n  allow: [${allow.join(', ')}]\n  unlisted: deny\n`
  dir.write({ 'policy.yaml': policy(['example.com']) })
  const sock = path.join(tmp, 'engine.sock')
  const p = cordon(['engine', '--policy', path.join(dir.dir, 'policy.yaml'), '--listen', `127.0.0.1:${await freePort()}`, '--control', sock, '--state', path.join(tmp, 'engine-state')], 'engine')
  const show = async () => (await getJson({ socketPath: sock, path: '/v1/policy' })).body
  const rules = (b: any) => (b.allow ?? []).map((r: any) => r.rule).join(',')
  const first = await until('the engine control socket', async () => (await show())?.hash && (await show())).catch((e) => {
    throw new Error(`${e.message}\nengine output:\n${p.output()}`)
  })
  t.match(rules(first), /example\.com/, 'initial policy loaded')

  dir.write({ 'policy.yaml': policy(['example.com', 'example.org']) })
  const second = await until('the engine to apply update 1', async () => {
    const b = await show()
    return b.hash !== first.hash && b
  })
  t.match(rules(second), /example\.org/, 'update 1 applied (example.org allowed)')

  dir.write({ 'policy.yaml': policy(['example.net']) })
  const third = await until('the engine to apply update 2', async () => {
    const b = await show()
    return b.hash !== second.hash && b
  })
  t.match(rules(third), /example\.net/, 'update 2 applied')
  t.notMatch(rules(third), /example\.org/, 'update 2 replaced the rules')

  dir.write({ 'policy.yaml': 'version: 1\nnetwork:\n  mode: proxy\n  allow: [[[\n' })
  await sleep(3000) // longer than the engine's 2 s poll
  const kept = await show()
  t.equal(kept.hash, third.hash, 'an invalid update is rejected: the last good policy stays in force')
  t.equal(p.child.exitCode, null, 'the engine is still running')
})

t.test('router: reloads its config through two kubelet ..data swaps', async (t) => {
  const dir = new AtomicWriterDir(path.join(tmp, 'router-config'))
  const cfg = (routes: string[]) =>
    'version: 1\nroutes:\n' +
    routes.map((r, i) => `  - name: ${r}\n${i === 0 ? '    default: true\n' : `    models: [${r}-model]\n`}    targets:\n      - { provider: openai-compatible, base_url: "http://127.0.0.1:9/v1", model: m, auth: none }\n`).join('')
  dir.write({ 'router.yaml': cfg(['first']) })
  const control = await freePort()
  // a TCP control listener requires a bearer token (the router refuses to start without one)
  const token = randomBytes(32).toString('hex')
  const tokenFile = path.join(tmp, 'router-control.token')
  writeFileSync(tokenFile, token, { mode: 0o600 })
  const p = cordon(['router', '--config', path.join(dir.dir, 'router.yaml'), '--listen', `127.0.0.1:${await freePort()}`, '--control', `127.0.0.1:${control}`, '--control-token-file', tokenFile, '--keys', path.join(tmp, 'keys.json'), '--state', path.join(tmp, 'router-state')], 'router')
  const status = async () => (await getJson({ host: '127.0.0.1', port: control, path: '/status', headers: { authorization: `Bearer ${token}` } })).body
  const names = (b: any) => (b.routes ?? []).map((r: any) => r.name).join(',')
  const first = await until('the router control port', async () => (await status())?.config?.hash && (await status())).catch((e) => {
    throw new Error(`${e.message}\nrouter output:\n${p.output()}`)
  })
  t.equal(names(first), 'first', 'initial config loaded')

  dir.write({ 'router.yaml': cfg(['first', 'second']) })
  const second = await until('the router to apply update 1', async () => {
    const b = await status()
    return b.config.hash !== first.config.hash && b
  }).catch((e) => {
    throw new Error(`${e.message} — the router missed the kubelet's ..data swap (a watcher filtered on the file name never sees it; see test/deploy/lib/config-watch.ts)`)
  })
  t.equal(names(second), 'first,second', 'update 1 applied')

  dir.write({ 'router.yaml': cfg(['first', 'third']) })
  const third = await until('the router to apply update 2', async () => {
    const b = await status()
    return b.config.hash !== second.config.hash && b
  })
  t.equal(names(third), 'first,third', 'update 2 applied')

  dir.write({ 'router.yaml': 'version: 1\nroutes: {{{\n' })
  await sleep(3000)
  t.equal((await status()).config.hash, third.config.hash, 'an invalid update is rejected: the last good config stays in force')
  t.equal(p.child.exitCode, null, 'the router is still running')
})

t.test('why: naive watchers miss the kubelet update; the reference watcher does not', async (t) => {
  const dir = new AtomicWriterDir(path.join(tmp, 'watch'))
  const file = path.join(dir.dir, 'c.yaml')
  dir.write({ 'c.yaml': 'v: 0\n' })

  const byName: string[] = [] // directory watch filtered on the file's name
  const w1 = watch(dir.dir, (_e, name) => {
    if (name === 'c.yaml') byName.push(readFileSync(file, 'utf8'))
  })
  const onInode: string[] = [] // fs.watch(file) follows the symlink to the payload inode
  const w2 = watch(file, () => {
    try {
      onInode.push(readFileSync(file, 'utf8'))
    } catch {
      /* mid-swap */
    }
  })
  const seen: string[] = []
  const ref = watchConfigFile(file, (text) => seen.push(text), { pollMs: 60_000 }) // inotify path only
  t.teardown(() => {
    w1.close()
    w2.close()
    ref.close()
  })

  await sleep(100)
  dir.write({ 'c.yaml': 'v: 1\n' })
  await sleep(500)
  dir.write({ 'c.yaml': 'v: 2\n' })
  await sleep(1000)

  t.same(seen, ['v: 1\n', 'v: 2\n'], 'reference watcher (directory, any name, hash compare): both updates')
  t.same(byName, [], 'a directory watcher filtered on "c.yaml" sees neither update (events name ..data / ..data_tmp)')
  t.notOk(onInode.includes('v: 2\n'), `a watcher on the file itself misses update 2 (it watched an inode that was deleted); saw ${JSON.stringify(onInode)}`)
})
