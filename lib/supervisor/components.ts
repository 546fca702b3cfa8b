/**
 * From a resolved cordon.yaml to the four command lines the supervisor runs. The services are
 * reached only through their CLIs (DESIGN.md: services never import each other):
 *
 *   cordon engine  --policy P --listen H:P --control S --router H:P --gateway H:P --audit F --state D
 *   cordon router  --config F --listen H:P --control S [--keys F] --audit F --state D
 *   cordon gateway --config F --agent-listen H:P --control S --audit F --state D
 *   cordon _sandbox --policy P --workspace W --netns cordon-ID --gate H:P -- AGENT...
 *     (cordon run plus the network wiring: joins the namespace lib/supervisor/sandbox-net.ts
 *      prepared, proxy env pointing at the gate, Landlock TCP connect only to the gate port)
 *
 * Each service runs under its own cordon policy (profiles/services/NAME.yaml, network: host)
 * through `cordon run`, so a bug in one cannot read another's secrets.
 */
import { createHash } from 'node:crypto'
import { existsSync, statSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { PKG_ROOT, type ComponentName, type CordonConfig } from './config.js'
import { controlSocket } from './runtime.js'
import { sandboxId } from './sandbox-net.js'
import { writeServicePolicy } from './service-policy.js'
import { loadPolicy, compilePlan } from '../policy/index.js'
import { planHash } from '../policy/compile.js'
import { probe } from '../kernel/probe.js'
import { helperPath } from '../kernel/addon.js'
import { helperArgv } from '../sandbox/argv.js'
import { proxyEnvFor } from '../sandbox/netns.js'

export interface ComponentSpec {
  name: ComponentName
  /** the command line as shown to people and hashed for adoption */
  argv: string[]
  /**
   * Confined components: compile the policy afresh at every (re)start and return the command
   * that really runs: the cordon-exec helper applying the plan, then exec of the component.
   * No intermediate `cordon run` process, so a restart costs one process start, not two.
   */
  prepare?: () => { argv: string[]; env: Record<string, string>; lost: string[] }
  env: Record<string, string>
  cwd?: string
  /**
   * Files a confined component's Landlock rules name one by one (its config, secrets, key store,
   * the engine's policy). A rule covers the file that was there at start: one replaced by rename
   * (`cordon keys set`, most editors) is out of the component's reach, so the supervisor restarts
   * the component when one of these changes identity (supervisor.ts checkPinned()).
   */
  pinned?: string[]
  /** control socket polled for GET /health (the agent has none: running == healthy) */
  control?: string
  /**
   * the supervisor answers this component's client-process lookups on this unix socket (the
   * confined engine: lib/engine/lookup-service.ts, `cordon engine --identify-via`)
   */
  lookupSocket?: string
  listen?: string
  stateDir?: string
  audit?: string
  startTimeoutMs: number
  healthIntervalMs: number
  healthFailures: number
}

/** How to run `cordon` itself: CORDON_SELF (JSON argv) or this very program. */
export function cordonSelf(): string[] {
  const env = process.env.CORDON_SELF
  if (env) {
    const v = JSON.parse(env) as unknown
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw new Error('CORDON_SELF must be a JSON array of strings, e.g. ["node","/usr/lib/cordon/bin/cordon.js"]')
    return v as string[]
  }
  const here = fileURLToPath(import.meta.url)
  const isTs = here.endsWith('.ts')
  const main = join(dirname(here), '..', 'cli', isTs ? 'main.ts' : 'main.js')
  if (isTs) {
    // run through tsx's loader, whatever wrapper started us
    const loader = resolve(PKG_ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs')
    return [process.execPath, '--import', existsSync(loader) ? `file://${loader}` : 'tsx', main]
  }
  return [process.execPath, main]
}

/** The minimal environment every component gets: the operator's shell env never leaks in. */
export function baseEnv(): Record<string, string> {
  const keep = ['PATH', 'LANG', 'LC_ALL', 'TZ', 'NODE_ENV']
  const out: Record<string, string> = {}
  for (const k of keep) if (process.env[k]) out[k] = process.env[k]!
  if (!out.PATH) out.PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  return out
}

export function componentDirs(cfg: CordonConfig, name: ComponentName) {
  const dir = join(cfg.stateDir, name)
  return { dir, state: join(dir, 'state'), audit: join(dir, 'audit.jsonl') }
}

/** Every audit trail cordon up's components write (for `cordon logs`). */
export function auditFiles(cfg: CordonConfig): Array<{ component: string; file: string }> {
  return (['engine', 'router', 'gateway'] as const).map((c) => ({ component: c, file: componentDirs(cfg, c).audit }))
}

function firstExisting(...files: string[]): string | undefined {
  return files.find((f) => existsSync(f))
}

/** The embedded router config: OpenAI and Anthropic routes, keys from the key store. */
export function defaultRouterConfig(): string | undefined {
  return firstExisting(resolve(PKG_ROOT, 'profiles', 'cordon.router.yaml'))
}
/** The embedded gateway config: no external channel, the local channel (`cordon chat`) only. */
export function defaultGatewayConfig(): string | undefined {
  return firstExisting(resolve(PKG_ROOT, 'profiles', 'cordon.gateway.yaml'))
}

export function buildSpecs(cfg: CordonConfig): ComponentSpec[] {
  const self = cordonSelf()
  const rt = cfg.runtimeDir
  const specs: ComponentSpec[] = []
  const keys = cfg.router.keys ?? (process.getuid?.() === 0 ? '/etc/cordon/keys.json' : undefined)
  const prepares = new Map<string, ComponentSpec['prepare']>()
  const pins = new Map<string, string[]>()
  const confine = (name: 'engine' | 'router' | 'gateway', argv: string[], config?: string): string[] => {
    const s = cfg[name]
    if (!s.confine) return argv
    const d = componentDirs(cfg, name)
    const paths = { stateDir: d.dir, socketDir: dirname(controlSocket(rt, name)), config, keys: name === 'router' ? keys : undefined }
    const { file: policy, readOnly, readWrite } = writeServicePolicy(cfg, name, paths)
    // the rules on single files (not directories, existing or not yet): see ComponentSpec.pinned
    pins.set(name, [...new Set([...readOnly, ...readWrite])].filter((f) => f !== PKG_ROOT && f !== paths.stateDir && f !== paths.socketDir && !isDir(f)))
    const env = { ...baseEnv(), ...s.env }
    prepares.set(name, () => {
      const plan = compilePlan(loadPolicy(policy, { workspace: d.dir, cwd: d.dir }), probe(), { env })
      return { argv: [helperPath(), ...helperArgv(plan), '--', ...argv], env: plan.env, lost: plan.lost }
    })
    return [...self, 'run', '--policy', policy, '--workspace', d.dir, '--', ...argv]
  }

  {
    const d = componentDirs(cfg, 'engine')
    const control = controlSocket(rt, 'engine')
    const lookup = join(dirname(control), 'lookup.sock')
    const argv = [
      ...(cfg.engine.exec ?? [...self, 'engine']),
      '--policy', cfg.policy,
      '--listen', cfg.engine.listen,
      '--control', control,
      '--router', cfg.router.listen,
      '--gateway', cfg.gateway.agentListen,
      '--audit', d.audit,
      '--state', d.state,
      // a confined engine (its own Landlock domain) may not inspect processes outside it: the
      // kernel refuses it the agent's /proc/PID/ns and /proc/PID/fd links. It asks the supervisor,
      // which may, on a socket in its own directory (its rules cover it; the agent has none there);
      // an unconfined engine (engine.confine: false) reads /proc itself
      ...(cfg.engine.confine ? ['--identify-via', lookup] : []),
      ...cfg.engine.args,
    ]
    specs.push({ name: 'engine', argv: confine('engine', argv), env: { ...baseEnv(), ...cfg.engine.env }, control, ...(cfg.engine.confine ? { lookupSocket: lookup } : {}), listen: cfg.engine.listen, stateDir: d.state, audit: d.audit, startTimeoutMs: cfg.engine.startTimeoutMs, healthIntervalMs: cfg.engine.healthIntervalMs, healthFailures: cfg.engine.healthFailures })
  }
  {
    const d = componentDirs(cfg, 'router')
    const control = controlSocket(rt, 'router')
    const config = cfg.router.config ?? defaultRouterConfig()
    const argv = [
      ...(cfg.router.exec ?? [...self, 'router']),
      ...(config ? ['--config', config] : []),
      '--listen', cfg.router.listen,
      '--control', control,
      ...(keys ? ['--keys', keys] : []),
      '--audit', d.audit,
      '--state', d.state,
      ...cfg.router.args,
    ]
    specs.push({ name: 'router', argv: confine('router', argv, config), env: { ...baseEnv(), ...cfg.router.env }, control, listen: cfg.router.listen, stateDir: d.state, audit: d.audit, startTimeoutMs: cfg.router.startTimeoutMs, healthIntervalMs: cfg.router.healthIntervalMs, healthFailures: cfg.router.healthFailures })
  }
  {
    const d = componentDirs(cfg, 'gateway')
    const control = controlSocket(rt, 'gateway')
    const config = cfg.gateway.config ?? defaultGatewayConfig()
    const argv = [
      ...(cfg.gateway.exec ?? [...self, 'gateway']),
      ...(config ? ['--config', config] : []),
      '--agent-listen', cfg.gateway.agentListen,
      '--control', control,
      '--audit', d.audit,
      '--state', d.state,
      ...cfg.gateway.args,
    ]
    specs.push({ name: 'gateway', argv: confine('gateway', argv, config), env: { ...baseEnv(), ...cfg.gateway.env }, control, listen: cfg.gateway.agentListen, stateDir: d.state, audit: d.audit, startTimeoutMs: cfg.gateway.startTimeoutMs, healthIntervalMs: cfg.gateway.healthIntervalMs, healthFailures: cfg.gateway.healthFailures })
  }
  {
    const a = cfg.agent
    const netns = `cordon-${sandboxId(cfg.runtimeDir)}`
    const argv = !a.confine
      ? a.command
      : [...(a.exec ?? [...self, '_sandbox']), '--policy', cfg.policy, '--workspace', a.workspace, '--netns', netns, '--gate', cfg.engine.listen, '--', ...a.command]
    const env: Record<string, string> = { ...baseEnv(), HOME: join(a.workspace, '.home'), ...a.env }
    const spec: ComponentSpec = { name: 'agent', argv, env, cwd: a.workspace, startTimeoutMs: 10_000, healthIntervalMs: 1000, healthFailures: 1 }
    if (a.confine && !a.exec) {
      // what `cordon _sandbox` does, done here: join the namespace, proxy env to the gate,
      // Landlock TCP connect only to the gate's port
      const gatePort = Number(cfg.engine.listen.split(':').pop())
      spec.prepare = () => {
        const policy = loadPolicy(cfg.policy, { workspace: a.workspace, cwd: a.workspace })
        const plan = compilePlan(policy, probe(), { env, gatePorts: [gatePort] })
        if (policy.network.mode === 'proxy') {
          plan.network = { mode: 'join', path: `/run/netns/${netns}` }
          plan.env = { ...plan.env, ...proxyEnvFor({ host: cfg.engine.listen.replace(/:\d+$/, ''), port: gatePort }), CORDON_SANDBOX: netns }
          for (const k of ['CORDON_GATEWAY_URL', 'CORDON_INFERENCE_URL', 'CORDON_AGENT_MODEL', 'CORDON_AGENT_SYSTEM']) if (env[k]) plan.env[k] = env[k]!
          plan.hash = planHash(plan)
        }
        return { argv: [helperPath(), ...helperArgv(plan), '--', ...a.command], env: plan.env, lost: plan.lost }
      }
    }
    specs.push(spec)
  }
  for (const s of specs) {
    const p = prepares.get(s.name)
    if (p) s.prepare = p
    const f = pins.get(s.name)
    if (f?.length) s.pinned = f
  }
  return specs
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory()
  } catch {
    return false
  }
}

export function specHash(s: ComponentSpec): string {
  return createHash('sha256').update(JSON.stringify([s.argv, s.env, s.cwd ?? ''])).digest('hex').slice(0, 16)
}
