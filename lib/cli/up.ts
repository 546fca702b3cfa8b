/**
 * `cordon up | down | status | restart | logs`: the whole system on one host (lib/supervisor).
 */
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, openSync, closeSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import type { Command } from 'commander'
import { checkConfigSet, ConfigError, loadConfig, ALL_COMPONENTS, type ComponentName, type CordonConfig, type FileChecker } from '../supervisor/config.js'
import { auditFiles, buildSpecs, cordonSelf } from '../supervisor/components.js'
import { unixJson } from '../supervisor/health.js'
import { follow, formatJson, formatPretty, listSources, parseSince, readMerged, type LogFilter } from '../supervisor/logs.js'
import { isAlive, sleep } from '../supervisor/proc.js'
import { cleanStale, readState, removeState, supervisorAlive, supervisorSocket } from '../supervisor/runtime.js'
import { Supervisor, type SupervisorStatus } from '../supervisor/supervisor.js'

function fail(msg: string, code = 1): never {
  throw Object.assign(new Error(msg), { exitCode: code })
}

function load(file?: string): CordonConfig {
  try {
    return loadConfig(file)
  } catch (e) {
    if (e instanceof ConfigError) fail(e.message, 2)
    throw e
  }
}

/** Validators of the files cordon.yaml names, loaded from their owners' modules when present. */
async function checkers(cfg: CordonConfig): Promise<Partial<Record<'policy' | 'router' | 'gateway' | 'service_policy', FileChecker>>> {
  const out: Partial<Record<'policy' | 'router' | 'gateway' | 'service_policy', FileChecker>> = {}
  const tryImport = async (m: string) => {
    try {
      return (await import(m)) as Record<string, unknown>
    } catch {
      return undefined
    }
  }
  const pol = await tryImport('../policy/index.js')
  if (pol && typeof pol.loadPolicy === 'function') {
    const lp = pol.loadPolicy as (f: string, o: { workspace?: string }) => unknown
    const withWs = (workspace: string): FileChecker => async (f) => {
      try {
        lp(f, { workspace })
        return []
      } catch (e) {
        return [(e as Error).message]
      }
    }
    mkdirSync(cfg.agent.workspace, { recursive: true, mode: 0o700 })
    out.policy = withWs(cfg.agent.workspace)
    mkdirSync(cfg.stateDir, { recursive: true, mode: 0o700 })
    out.service_policy = withWs(cfg.stateDir)
  }
  const rc = await tryImport('../router/config.js')
  const routerLoad = (rc?.loadRouterConfig ?? rc?.loadConfig) as ((f: string) => unknown) | undefined
  if (routerLoad) out.router = async (f) => {
    try {
      await routerLoad(f)
      return []
    } catch (e) {
      return [(e as Error).message]
    }
  }
  const gc = await tryImport('../gateway/config.js')
  const gwLoad = (gc?.loadGatewayConfig ?? gc?.loadConfig) as ((f: string) => unknown) | undefined
  if (gwLoad) out.gateway = async (f) => {
    try {
      await gwLoad(f)
      return []
    } catch (e) {
      return [(e as Error).message]
    }
  }
  return out
}

const tty = () => process.stdout.isTTY === true

function fmtMs(ms?: number) {
  if (ms === undefined) return '-'
  if (ms < 1000) return `${ms} ms`
  const s = Math.floor(ms / 1000)
  if (s < 120) return `${s}s`
  const m = Math.floor(s / 60)
  if (m < 120) return `${m}m${String(s % 60).padStart(2, '0')}s`
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`
}

/** Progress: a live line per component on a terminal, plain lines otherwise. */
function progress() {
  const frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏']
  let spin: NodeJS.Timeout | undefined
  let current: string | undefined
  let i = 0
  const clear = () => {
    if (spin) clearInterval(spin)
    spin = undefined
    if (current && tty()) process.stdout.write('\r\x1b[2K')
    current = undefined
  }
  return (e: { component: string; status: string; detail?: string; ms?: number; pid?: number }) => {
    const name = e.component.padEnd(8)
    if (tty()) {
      if (e.status === 'starting' || e.status === 'restarting') {
        clear()
        current = e.component
        const draw = () => process.stdout.write(`\r\x1b[2K  \x1b[36m${frames[i++ % frames.length]}\x1b[0m ${name} ${e.status}…`)
        draw()
        spin = setInterval(draw, 80)
        return
      }
      clear()
      const mark = e.status === 'healthy' || e.status === 'running' || e.status === 'adopted' || e.status === 'ready' ? '\x1b[32m✓\x1b[0m' : e.status === 'failed' || e.status === 'crash-loop' || e.status === 'exited' ? '\x1b[31m✗\x1b[0m' : '·'
      process.stdout.write(`  ${mark} ${name} ${e.status}${e.ms !== undefined ? ` in ${fmtMs(e.ms)}` : ''}${e.pid ? ` (pid ${e.pid})` : ''}${e.detail ? `  ${e.detail}` : ''}\n`)
      return
    }
    process.stdout.write(`${e.component}: ${e.status}${e.ms !== undefined ? ` in ${e.ms} ms` : ''}${e.pid ? ` pid ${e.pid}` : ''}${e.detail ? ` ${e.detail}` : ''}\n`)
  }
}

async function up(opts: { file?: string; detach?: boolean; check?: boolean }, agent: string[]) {
  const cfg = load(opts.file)
  if (agent.length) cfg.agent.command = agent
  if (opts.check || opts.detach) {
    const problems = await checkConfigSet(cfg, await checkers(cfg))
    if (problems.length) fail(`configuration has ${problems.length} problem(s):\n  ${problems.join('\n  ')}`, 2)
    if (opts.check) {
      process.stdout.write(`${cfg.source}: ok (policy ${cfg.policy}; router ${cfg.router.config ?? 'default'}; gateway ${cfg.gateway.config ?? 'default'})\n`)
      return
    }
  }
  const prev = readState(cfg.runtimeDir)
  if (supervisorAlive(prev)) fail(`cordon is already running (supervisor pid ${prev!.supervisor.pid}, runtime dir ${cfg.runtimeDir}); \`cordon status\` shows it, \`cordon down\` stops it`)

  if (opts.detach) {
    mkdirSync(cfg.runtimeDir, { recursive: true, mode: 0o700 })
    const out = join(cfg.runtimeDir, 'up.out')
    const fd = openSync(out, 'w', 0o600)
    const args = ['up', ...(opts.file ? ['-f', opts.file] : []), ...(agent.length ? ['--', ...agent] : [])]
    const self = cordonSelf()
    const child = spawn(self[0]!, [...self.slice(1), ...args], { detached: true, stdio: ['ignore', fd, fd], env: { ...process.env, CORDON_RUNTIME_DIR: cfg.runtimeDir } })
    closeSync(fd)
    let exited = false
    child.on('exit', () => (exited = true))
    child.unref()
    const sock = supervisorSocket(cfg.runtimeDir)
    const deadline = Date.now() + 120_000
    while (Date.now() < deadline) {
      if (exited) fail(`cordon up failed:\n${readFileSync(out, 'utf8').trim()}`)
      if (existsSync(sock)) {
        try {
          const st = await unixJson<SupervisorStatus>(sock, '/status', { timeoutMs: 1000 })
          if (st.components.every((c) => c.status === 'healthy' || c.status === 'running')) {
            process.stdout.write(`cordon is up (supervisor pid ${st.supervisor.pid}, detached)\n`)
            printStatus(st, false)
            return
          }
        } catch {
          /* not yet */
        }
      }
      await sleep(100)
    }
    fail(`cordon up: not all components healthy after 120 s; see ${out} and \`cordon logs\``)
  }

  const show = progress()
  process.stdout.write(`cordon up (${cfg.source}, runtime ${cfg.runtimeDir})\n`)
  let ready = false
  const sup = new Supervisor(cfg, buildSpecs(cfg), {
    onEvent: (e) => {
      if (!ready || e.status !== 'starting') show(e)
    },
  })
  const onSignal = (sig: string) => {
    process.stdout.write(`\n${sig}: stopping\n`)
    void sup.stop(0)
  }
  process.on('SIGINT', () => onSignal('SIGINT'))
  process.on('SIGTERM', () => onSignal('SIGTERM'))
  process.on('SIGHUP', () => {}) // terminal gone: keep running (use --detach to mean it)
  try {
    await sup.start()
  } catch (e) {
    fail(`cordon up: ${(e as Error).message}`)
  }
  ready = true
  process.stdout.write(`cordon is up. \`cordon chat\` talks to the agent, \`cordon term\` watches, \`cordon logs -f\` follows logs; Ctrl-C or \`cordon down\` stops.\n`)
  const code = await sup.done
  process.exitCode = code
  process.exit(code)
}

async function down(opts: { file?: string }) {
  const cfg = load(opts.file)
  const rt = cfg.runtimeDir
  const st = readState(rt)
  if (!st) {
    process.stdout.write(`cordon is not running (no state in ${rt})\n`)
    return
  }
  if (supervisorAlive(st)) {
    try {
      await unixJson(supervisorSocket(rt), '/stop', { method: 'POST', timeoutMs: 3000 })
    } catch {
      /* socket gone: fall back to signal */
      try {
        process.kill(st.supervisor.pid, 'SIGTERM')
      } catch {
        /* gone */
      }
    }
    const end = Date.now() + 30_000
    while (isAlive(st.supervisor) && Date.now() < end) await sleep(50)
    if (isAlive(st.supervisor)) {
      process.kill(st.supervisor.pid, 'SIGKILL')
      await sleep(100)
    }
    process.stdout.write(`stopped supervisor (pid ${st.supervisor.pid})\n`)
  } else {
    process.stdout.write(`supervisor (pid ${st.supervisor.pid}) was not running: cleaning what it left\n`)
  }
  const rep = await cleanStale(rt, readState(rt) ?? st)
  removeState(rt)
  for (const k of rep.killed) process.stdout.write(`stopped ${k.component} (pid ${k.pid})\n`)
  for (const n of rep.netns) process.stdout.write(`removed network namespace ${n}\n`)
  for (const l of rep.links) process.stdout.write(`removed link ${l}\n`)
  for (const s of rep.sockets) process.stdout.write(`removed socket ${s}\n`)
  process.stdout.write('cordon is down\n')
}

export async function getStatus(cfg: CordonConfig): Promise<{ running: boolean; status?: SupervisorStatus; stale?: boolean }> {
  const rt = cfg.runtimeDir
  const st = readState(rt)
  if (!st) return { running: false }
  if (supervisorAlive(st)) {
    try {
      return { running: true, status: await unixJson<SupervisorStatus>(supervisorSocket(rt), '/status', { timeoutMs: 3000 }) }
    } catch {
      /* fall through to the state file */
    }
  }
  const comps = ALL_COMPONENTS.map((name) => {
    const c = st.components[name]
    const alive = !!c && isAlive(c)
    return { name, pid: alive ? c!.pid : undefined, status: alive ? 'unsupervised' : 'stopped', health: { ok: false, detail: 'supervisor not running' }, restarts: c?.restarts ?? 0, startedAt: c?.startedAt, uptimeMs: alive && c?.startedAt ? Date.now() - c.startedAt : undefined, listen: c?.listen, control: c?.control, adopted: false }
  })
  return {
    running: false,
    stale: true,
    status: { supervisor: { pid: st.supervisor.pid, startedAt: st.supervisor.startedAt, config: st.supervisor.config, runtimeDir: rt, logDir: cfg.logDir, stateDir: cfg.stateDir }, components: comps as SupervisorStatus['components'] },
  }
}

function printStatus(s: SupervisorStatus, stale: boolean) {
  const rows = [['COMPONENT', 'STATUS', 'PID', 'UPTIME', 'RESTARTS', 'HEALTH', 'LISTEN']]
  for (const c of s.components) {
    rows.push([c.name, c.status + (c.adopted ? ' (adopted)' : ''), c.pid ? String(c.pid) : '-', fmtMs(c.uptimeMs), String(c.restarts), c.health.ok ? 'ok' : (c.health.detail ?? 'unknown').slice(0, 40), c.listen ?? '-'])
  }
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)))
  for (const r of rows) process.stdout.write(r.map((x, i) => x.padEnd(w[i]!)).join('  ').trimEnd() + '\n')
  if (stale) process.stdout.write(`\nthe supervisor (pid ${s.supervisor.pid}) is not running; \`cordon up\` adopts or restarts what is left, \`cordon down\` cleans it\n`)
}

async function status(opts: { file?: string; json?: boolean }) {
  const cfg = load(opts.file)
  const r = await getStatus(cfg)
  if (opts.json) {
    process.stdout.write(JSON.stringify({ running: r.running, stale: r.stale ?? false, ...(r.status ?? {}) }, null, 2) + '\n')
  } else if (!r.status) {
    process.stdout.write(`cordon is not running (runtime dir ${cfg.runtimeDir}); start it with \`cordon up\`\n`)
  } else {
    if (r.running) process.stdout.write(`supervisor pid ${r.status.supervisor.pid}, up ${fmtMs(Date.now() - r.status.supervisor.startedAt)}, config ${r.status.supervisor.config}\n\n`)
    printStatus(r.status, !!r.stale)
  }
  const healthy = r.running && r.status!.components.every((c) => c.status === 'healthy' || c.status === 'running')
  process.exitCode = healthy ? 0 : r.running ? 3 : 1
}

async function restart(component: string, opts: { file?: string }) {
  if (!ALL_COMPONENTS.includes(component as ComponentName)) fail(`unknown component ${JSON.stringify(component)}: one of ${ALL_COMPONENTS.join(', ')}`)
  const cfg = load(opts.file)
  const st = readState(cfg.runtimeDir)
  if (!supervisorAlive(st)) fail('cordon is not running; start it with `cordon up`')
  const r = await unixJson<{ status?: { pid?: number; status: string } }>(supervisorSocket(cfg.runtimeDir), `/restart?component=${component}`, { method: 'POST', timeoutMs: 60_000 })
  process.stdout.write(`${component}: ${r.status?.status ?? 'restarted'}${r.status?.pid ? ` (pid ${r.status.pid})` : ''}\n`)
}

async function logs(opts: { config?: string; follow?: boolean; component?: string[]; since?: string; denied?: boolean; json?: boolean; request?: string; grep?: string; lines?: string; color?: boolean }) {
  const cfg = load(opts.config)
  const comps = (opts.component ?? []).flatMap((c) => c.split(',')).filter(Boolean)
  const known = [...ALL_COMPONENTS, 'supervisor']
  for (const c of comps) if (!known.includes(c)) fail(`--component ${c}: one of ${known.join(', ')}`)
  let since: number | undefined
  if (opts.since) {
    try {
      since = parseSince(opts.since)
    } catch (e) {
      fail((e as Error).message)
    }
  }
  const f: LogFilter = { components: comps.length ? comps : undefined, since, denied: opts.denied, requestId: opts.request, grep: opts.grep }
  const pretty = opts.json ? false : tty()
  const color = pretty && opts.color !== false && !process.env.NO_COLOR
  const out = (e: Parameters<typeof formatPretty>[0]) => process.stdout.write((pretty ? formatPretty(e, color) : formatJson(e)) + '\n')
  const sources = () => listSources(cfg.logDir, auditFiles(cfg))
  const all = readMerged(sources(), f)
  const n = opts.lines ? Number(opts.lines) : undefined
  for (const e of n !== undefined ? all.slice(-n) : all) out(e)
  if (!opts.follow) return
  const stop = follow(sources(), f, (batch) => batch.forEach(out), { rescan: sources })
  await new Promise<void>((resolve) => {
    const end = () => {
      stop()
      resolve()
    }
    process.once('SIGINT', end)
    process.once('SIGTERM', end)
    process.stdout.on('error', end)
  })
}

/**
 * `cordon _sandbox`: what the supervisor runs for the agent. `cordon run` plus the network
 * wiring, until `cordon run` grows it: joins the namespace the supervisor prepared
 * (lib/supervisor/sandbox-net.ts), sets the proxy environment to the gate, and limits Landlock
 * TCP connect to the gate's port (ABI >= 4).
 */
async function sandboxExec(cmd: string, args: string[], o: { policy: string; workspace: string; netns: string; gate: string }) {
  const { resolve } = await import('node:path')
  const { loadPolicy, compilePlan } = await import('../policy/index.js')
  const { planHash } = await import('../policy/compile.js')
  const { probe } = await import('../kernel/probe.js')
  const { runPlan } = await import('../sandbox/spawn.js')
  const { proxyEnvFor } = await import('../sandbox/netns.js')
  const workspace = resolve(o.workspace)
  mkdirSync(workspace, { recursive: true, mode: 0o700 })
  const m = /^(.+):(\d+)$/.exec(o.gate)
  if (!m) fail(`--gate ${o.gate}: expected HOST:PORT`, 2)
  const gate = { host: m[1]!, port: Number(m[2]) }
  const policy = loadPolicy(resolve(o.policy), { workspace, cwd: workspace })
  if (policy.network.mode !== 'proxy') process.stderr.write(`cordon: the agent policy ${o.policy} says network: ${policy.network.mode}; cordon up wires the sandbox to the gate only in proxy mode\n`)
  const plan = compilePlan(policy, probe(), { env: process.env, gatePorts: [gate.port] })
  for (const l of plan.lost) process.stderr.write(`cordon: not enforced on this kernel: ${l}\n`)
  if (policy.network.mode === 'proxy') {
    plan.network = { mode: 'join', path: `/run/netns/${o.netns}` }
    plan.env = { ...plan.env, ...proxyEnvFor(gate), CORDON_SANDBOX: o.netns }
    for (const k of ['CORDON_GATEWAY_URL', 'CORDON_INFERENCE_URL', 'CORDON_AGENT_MODEL', 'CORDON_AGENT_SYSTEM']) if (process.env[k]) plan.env[k] = process.env[k]!
    plan.hash = planHash(plan)
  }
  process.exitCode = await runPlan(plan, cmd, args, { cwd: workspace })
}

export function register(program: Command): void {
  program
    .command('_sandbox', { hidden: true })
    .description('(internal) run the agent confined and wired to the gate, as cordon up does')
    .requiredOption('--policy <file>', 'agent policy')
    .requiredOption('--workspace <dir>', 'workspace')
    .requiredOption('--netns <name>', 'network namespace prepared by the supervisor')
    .requiredOption('--gate <host:port>', 'egress gate')
    .argument('<command>')
    .argument('[args...]')
    .action((cmd: string, args: string[], o) => sandboxExec(cmd, args, o))

  program
    .command('up')
    .description('start the policy engine, privacy router, gateway and the sandboxed agent, supervised')
    .option('-f, --file <cordon.yaml>', 'configuration (default ./cordon.yaml, else the embedded defaults)')
    .option('-d, --detach', 'run the supervisor in the background and return once everything is healthy')
    .option('--check', 'validate cordon.yaml and every file it names, then exit')
    .argument('[agent...]', 'the agent command (after --), replacing agent.command')
    .action((agent: string[], opts) => up(opts, agent))

  program
    .command('down')
    .description('stop everything `cordon up` started and remove its processes, namespaces, links and sockets (also after a crash)')
    .option('-f, --file <cordon.yaml>', 'configuration naming the runtime dir')
    .action((opts) => down(opts))

  program
    .command('status')
    .description('each component: pid, uptime, restarts, health, listen address')
    .option('-f, --file <cordon.yaml>', 'configuration naming the runtime dir')
    .option('--json', 'machine-readable output')
    .action((opts) => status(opts))

  program
    .command('restart')
    .description('restart one component (also takes the agent out of a crash loop)')
    .argument('<component>', ALL_COMPONENTS.join(' | '))
    .option('-f, --file <cordon.yaml>', 'configuration naming the runtime dir')
    .action((c: string, opts) => restart(c, opts))

  // `cordon logs` is this module's (all components and audit trails merged). An area registered
  // earlier may have claimed the name for its own log (the engine's audit tail): keep it reachable
  // as `cordon <area>-logs` rather than failing the whole CLI; the lead settles the final name.
  const clash = program.commands.find((c) => c.name() === 'logs')
  if (clash) clash.name('engine-logs')
  program
    .command('logs')
    .description('all components\' logs and audit trails merged by time (pretty on a terminal, JSON lines otherwise)')
    .option('-c, --config <cordon.yaml>', 'configuration naming the log and state dirs')
    .option('-f, --follow', 'keep printing new entries')
    .option('--component <name...>', 'only these components (engine, router, gateway, agent, supervisor)')
    .option('--since <time>', 'only entries since a duration ago (10m, 2h) or a date')
    .option('--denied', 'only denials (egress decisions and other refusals)')
    .option('--request <id>', 'only one request id (x-cordon-request-id) across components')
    .option('--grep <text>', 'only entries containing text')
    .option('-n, --lines <n>', 'only the last n entries before following')
    .option('--json', 'JSON lines even on a terminal')
    .option('--no-color', 'no colours')
    .action((opts) => logs(opts))
}
