/**
 * bench/up.ts (`npm run bench:up`): time from `cordon up` to all healthy, and from kill -9 of
 * each component to healthy again (goal: under 2 s each).
 *
 * Baseline, measured in the same run: the same component command started directly (no
 * supervisor, no confinement wrapper) until its control socket answers /health. The ratio
 * "recovery / cold start" shows what the supervisor adds on top of the component's own start.
 * A second pass with stand-in components (a 40-line node server) isolates the supervisor's own
 * reaction time from the components' start-up cost.
 *
 *   npx tsx bench/up.ts            real components, services and agent confined
 *   BENCH_CONFINE=0 npx tsx ...    real components unconfined
 *   BENCH_DIST=1 npx tsx ...       components run from the compiled dist/ (npm run build:ts),
 *                                  as an installed package does, instead of through tsx
 */
import { spawn } from 'node:child_process'
import { mkdirSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { loadConfig } from '../lib/supervisor/config.js'
import { buildSpecs } from '../lib/supervisor/components.js'
import { Supervisor } from '../lib/supervisor/supervisor.js'
import { checkHealth } from '../lib/supervisor/health.js'
import { startWorld } from '../test/supervisor/world.js'
import { standinSetup } from '../test/supervisor/helpers.js'

const confine = process.env.BENCH_CONFINE !== '0'
if (process.env.BENCH_DIST === '1') process.env.CORDON_SELF = JSON.stringify([process.execPath, new URL('../dist/cli/main.js', import.meta.url).pathname])
const mode = process.env.CORDON_SELF ? 'compiled dist/' : 'tsx (development)'
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function untilHealthy(sock: string, timeoutMs = 120_000): Promise<number> {
  const t0 = performance.now()
  while (performance.now() - t0 < timeoutMs) {
    if ((await checkHealth(sock, 500)).ok) return performance.now() - t0
    await sleep(10)
  }
  throw new Error(`${sock} not healthy after ${timeoutMs} ms`)
}

async function measure(label: string, file: string) {
  const cfg = loadConfig(file)
  const specs = buildSpecs(cfg)
  const rows: string[] = []

  // baseline: each service command started directly, unsupervised, unconfined
  const baseline: Record<string, number> = {}
  for (const s of specs.filter((x) => x.control)) {
    const direct = s.argv.includes('--') && s.argv.includes('run') ? s.argv.slice(s.argv.indexOf('--') + 1) : s.argv
    const sock = `${s.control}.bench`
    const argv = direct.map((a) => (a === s.control ? sock : a))
    mkdirSync(join(cfg.runtimeDir, s.name), { recursive: true })
    rmSync(sock, { force: true })
    const t0 = performance.now()
    const child = spawn(argv[0]!, argv.slice(1), { stdio: 'ignore', env: s.env, detached: true })
    await untilHealthy(sock)
    baseline[s.name] = performance.now() - t0
    process.kill(-child.pid!, 'SIGKILL')
    await sleep(300)
    rmSync(sock, { force: true })
  }

  const sup = new Supervisor(cfg, specs)
  const t0 = performance.now()
  await sup.start()
  const upMs = performance.now() - t0
  rows.push(`${label}: cordon up -> all healthy: ${upMs.toFixed(0)} ms (sum of direct cold starts ${Object.values(baseline).reduce((a, b) => a + b, 0).toFixed(0)} ms)`)
  for (const name of ['engine', 'router', 'gateway', 'agent'] as const) {
    await sleep(500)
    const before = sup.status().components.find((c) => c.name === name)!
    const k0 = performance.now()
    process.kill(before.pid!, 'SIGKILL')
    for (;;) {
      const c = sup.status().components.find((x) => x.name === name)!
      if ((c.status === 'healthy' || c.status === 'running') && c.pid && c.pid !== before.pid) break
      await sleep(5)
    }
    const ms = performance.now() - k0
    const base = baseline[name]
    rows.push(`${label}: kill -9 ${name.padEnd(7)} -> healthy again ${ms.toFixed(0).padStart(6)} ms${base ? `   direct cold start ${base.toFixed(0)} ms, ratio ${(ms / base).toFixed(2)}` : ''}   goal < 2000 ms: ${ms < 2000 ? 'met' : 'NOT met'}`)
  }
  await sup.stop()
  return rows
}

const out: string[] = []
{
  const s = standinSetup()
  out.push(...(await measure('stand-ins', s.file)))
}
{
  const w = await startWorld({ confineServices: confine, confineAgent: confine })
  try {
    out.push(...(await measure(`real components${confine ? ', confined' : ''}`, w.file)))
  } finally {
    await w.close()
  }
}
const load = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')
console.log(`\nbench/up (components via ${mode}; load average ${load}, ${(await import('node:os')).cpus().length} cores)`)
for (const r of out) console.log('  ' + r)
process.exit(0)
