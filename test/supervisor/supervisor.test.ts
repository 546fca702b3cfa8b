// The supervisor core with stand-in components (test/supervisor/fixtures/standin.mjs): order,
// health, restart after kill -9 and after failed health checks, state restored through --state,
// agent restart policy, and a stop that leaves no process or socket behind.
import t from 'tap'
import { existsSync, readFileSync, readdirSync, writeFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { loadConfig } from '../../lib/supervisor/config.js'
import { buildSpecs } from '../../lib/supervisor/components.js'
import { Supervisor } from '../../lib/supervisor/supervisor.js'
import { isAlive } from '../../lib/supervisor/proc.js'
import { readState } from '../../lib/supervisor/runtime.js'
import { checkHealth } from '../../lib/supervisor/health.js'
import { cli, standinSetup, until } from './helpers.js'

function make(extra: Parameters<typeof standinSetup>[0] = {}) {
  const s = standinSetup(extra)
  const cfg = loadConfig(s.file)
  const sup = new Supervisor(cfg, buildSpecs(cfg))
  return { ...s, cfg, sup }
}

t.test('starts in dependency order, each healthy before the next, and stops leaving nothing', async (t) => {
  const { sup, runtime, logs } = make()
  const order: string[] = []
  sup.on('event', (e: { component: string; status: string }) => {
    if (e.status === 'healthy' || e.status === 'running' || e.status === 'starting') order.push(`${e.component}:${e.status}`)
  })
  await sup.start()
  t.same(order, ['engine:starting', 'engine:healthy', 'router:starting', 'router:healthy', 'gateway:starting', 'gateway:healthy', 'agent:starting', 'agent:running'])
  const st = sup.status()
  t.equal(st.components.length, 4)
  for (const c of st.components) {
    t.ok(c.pid && isAlive({ pid: c.pid, start: 0 }), `${c.name} has a live pid`)
    t.equal(c.restarts, 0)
  }
  const state = readState(runtime)!
  t.equal(state.supervisor.pid, process.pid, 'state.json names the supervisor')
  t.ok(state.components.engine?.pid, 'state.json records the engine pid')
  const pids = st.components.map((c) => c.pid!)
  const socks = st.components.map((c) => c.control).filter(Boolean) as string[]
  t.ok(socks.every((s) => existsSync(s)), 'control sockets exist while up')
  // every component's stdout landed in its log file
  t.match(readFileSync(join(logs, 'engine.log'), 'utf8'), /engine listening/)
  await sup.stop()
  t.equal(await sup.done, 0)
  for (const p of pids) t.notOk(isAlive({ pid: p, start: 0 }), `pid ${p} is gone after stop`)
  for (const s of socks) t.notOk(existsSync(s), `${s} removed`)
  t.notOk(existsSync(join(runtime, 'state.json')), 'state.json removed')
  t.notOk(existsSync(join(runtime, 'supervisor.sock')), 'supervisor socket removed')
})

t.test('kill -9 of each service: healthy again within 2 s, state restored from --state', async (t) => {
  const { sup, state } = make()
  await sup.start()
  t.teardown(() => sup.stop())
  for (const name of ['engine', 'router', 'gateway'] as const) {
    const before = sup.status().components.find((c) => c.name === name)!
    const t0 = Date.now()
    process.kill(before.pid!, 'SIGKILL')
    await until(() => {
      const c = sup.status().components.find((x) => x.name === name)!
      return c.status === 'healthy' && c.pid !== undefined && c.pid !== before.pid
    }, 5000, `${name} healthy again`)
    const ms = Date.now() - t0
    t.ok(ms < 2000, `${name} healthy again in ${ms} ms (< 2000)`)
    const after = sup.status().components.find((c) => c.name === name)!
    t.equal(after.restarts, 1, `${name} restart counted`)
    t.equal(readFileSync(join(state, name, 'state', 'boots'), 'utf8'), '2', `${name} restarted with the same --state dir`)
    t.ok((await checkHealth(after.control!)).ok, `${name} answers /health`)
  }
})

t.test('failed health checks restart a component that is still running', async (t) => {
  const s = standinSetup({ env: { STANDIN_UNHEALTHY_FILE: '' }, healthFailures: 2 })
  const sick = join(s.dir, 'sick')
  const raw = JSON.parse(readFileSync(s.file, 'utf8'))
  raw.router.env.STANDIN_UNHEALTHY_FILE = sick
  writeFileSync(s.file, JSON.stringify(raw))
  const cfg = loadConfig(s.file)
  const sup = new Supervisor(cfg, buildSpecs(cfg))
  await sup.start()
  t.teardown(() => sup.stop())
  const pid = sup.status().components.find((c) => c.name === 'router')!.pid!
  writeFileSync(sick, '1')
  await until(() => !isAlive({ pid, start: 0 }), 5000, 'the unhealthy router killed')
  rmSync(sick)
  await until(() => sup.status().components.find((c) => c.name === 'router')!.status === 'healthy', 5000, 'router healthy again')
  const r = sup.status().components.find((c) => c.name === 'router')!
  t.not(r.pid, pid, 'a new router process')
  t.equal(r.restarts, 1)
  t.match(readFileSync(join(s.logs, 'supervisor.log'), 'utf8'), /router failed 2 health checks/)
})

t.test('agent crash loop: restarted with backoff, then held at the limit', async (t) => {
  const { sup } = make({ agent: { env: { STANDIN_NAME: 'agent', STANDIN_EXIT_AFTER_MS: '400' }, max_restarts: 2, restart_window: 60 } })
  await sup.start()
  t.teardown(() => sup.stop())
  await until(() => sup.status().components.find((c) => c.name === 'agent')!.status === 'crash-loop', 10_000, 'crash-loop')
  const a = sup.status().components.find((c) => c.name === 'agent')!
  t.equal(a.restarts, 2, 'restarted max_restarts times')
  t.equal(a.pid, undefined, 'not running')
  t.equal(a.lastExit?.code, 3)
  const engine = sup.status().components.find((c) => c.name === 'engine')!
  t.equal(engine.status, 'healthy', 'the services stay up')
  await sup.restart('agent')
  t.equal(sup.status().components.find((c) => c.name === 'agent')!.status, 'running', '`cordon restart agent` takes it out of the crash loop')
})

t.test('agent on_exit: stop stops the system', async (t) => {
  const { sup, runtime } = make({ agent: { env: { STANDIN_NAME: 'agent', STANDIN_EXIT_AFTER_MS: '500' }, on_exit: 'stop' } })
  await sup.start()
  const pids = sup.status().components.map((c) => c.pid!)
  const code = await sup.done
  t.equal(code, 1, 'exit code says the agent failed')
  for (const p of pids) t.notOk(isAlive({ pid: p, start: 0 }), `pid ${p} gone`)
  t.notOk(existsSync(join(runtime, 'state.json')))
})

t.test('a component that never gets healthy fails start with its log tail, and nothing is left', async (t) => {
  const s = standinSetup()
  const raw = JSON.parse(readFileSync(s.file, 'utf8'))
  raw.router.exec = [process.execPath, '-e', 'console.error("router: cannot read /etc/cordon/keys: EACCES"); process.exit(4)', '--']
  writeFileSync(s.file, JSON.stringify(raw))
  const cfg = loadConfig(s.file)
  const sup = new Supervisor(cfg, buildSpecs(cfg))
  await t.rejects(sup.start(), /router exited \(code 4\) before becoming healthy[\s\S]*cannot read \/etc\/cordon\/keys/)
  t.notOk(existsSync(join(s.runtime, 'state.json')), 'state removed')
  t.notOk(existsSync(join(s.runtime, 'engine.sock')), 'engine stopped and its socket removed')
})

t.test('cordon down after a kill -9 of the supervisor stops what it left and removes its sockets', async (t) => {
  const s = standinSetup()
  const up = await cli(['up', '-f', s.file, '--detach'], {}, 120_000)
  t.equal(up.code, 0, up.stderr)
  const st = readState(s.runtime)!
  const pids = Object.values(st.components).map((c) => c!)
  t.equal(pids.length, 4)
  process.kill(st.supervisor.pid, 'SIGKILL')
  await until(() => !isAlive(st.supervisor), 5000, 'supervisor gone')
  t.ok(pids.every((p) => isAlive(p)), 'the components outlive the supervisor')
  const status = await cli(['status', '-f', s.file])
  t.equal(status.code, 1, 'status exits 1: not running')
  t.match(status.stdout, /supervisor \(pid \d+\) is not running; `cordon up` adopts or restarts what is left, `cordon down` cleans it/)
  const down = await cli(['down', '-f', s.file])
  t.equal(down.code, 0, down.stderr)
  t.match(down.stdout, /was not running: cleaning what it left/)
  t.ok(pids.every((p) => !isAlive(p)), 'every component stopped')
  t.same(readdirSync(s.runtime).filter((f) => f.endsWith('.sock') || f === 'state.json'), [], 'no socket, no state left')
  rmSync(s.dir, { recursive: true, force: true })
})
