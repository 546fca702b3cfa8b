/**
 * cordon.yaml: loading, validation against profiles/cordon.schema.json (ajv) with file:line
 * errors (yaml's Document API keeps node ranges), and resolution of every default so the rest of
 * the supervisor sees one complete, absolute-path configuration.
 */
import { existsSync, readFileSync } from 'node:fs'
import { dirname, isAbsolute, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { LineCounter, parseDocument, isMap, isSeq, type Node as YamlNode } from 'yaml'
import { Ajv } from 'ajv'


/** Package root (works from lib/ under tsx and from dist/ once compiled). */
export const PKG_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const SCHEMA_PATH = resolve(PKG_ROOT, 'profiles', 'cordon.schema.json')
export const DEFAULT_CONFIG_PATH = resolve(PKG_ROOT, 'profiles', 'cordon.default.yaml')

export class ConfigError extends Error {
  constructor(
    message: string,
    public readonly problems: string[] = [],
  ) {
    super(problems.length ? `${message}\n  ${problems.join('\n  ')}` : message)
    this.name = 'ConfigError'
  }
}

export type ComponentName = 'engine' | 'router' | 'gateway' | 'agent'
export const SERVICES = ['engine', 'router', 'gateway'] as const
export type ServiceName = (typeof SERVICES)[number]
export const ALL_COMPONENTS: ComponentName[] = ['engine', 'router', 'gateway', 'agent']

export interface ServiceConfig {
  exec?: string[]
  env: Record<string, string>
  confine: boolean
  servicePolicy: string
  startTimeoutMs: number
  healthIntervalMs: number
  healthFailures: number
  args: string[]
}

export interface CordonConfig {
  /** file it came from ('<embedded default>' for the shipped one) */
  source: string
  runtimeDir: string
  stateDir: string
  logDir: string
  policy: string
  engine: ServiceConfig & { listen: string }
  router: ServiceConfig & { listen: string; config?: string; keys?: string }
  gateway: ServiceConfig & { agentListen: string; config?: string }
  agent: {
    command: string[]
    workspace: string
    env: Record<string, string>
    onExit: 'restart' | 'stop'
    maxRestarts: number
    restartWindowMs: number
    exec?: string[]
    confine: boolean
  }
  logs: { maxBytes: number; keep: number }
}

interface RawService {
  exec?: string[]
  env?: Record<string, string>
  confine?: boolean
  service_policy?: string
  start_timeout?: number
  health_interval?: number
  health_failures?: number
  args?: string[]
}
interface RawConfig {
  version: 1
  runtime_dir?: string
  state_dir?: string
  log_dir?: string
  policy?: string
  engine?: RawService & { listen?: string }
  router?: RawService & { listen?: string; config?: string; keys?: string }
  gateway?: RawService & { agent_listen?: string; config?: string }
  agent?: {
    command?: string[]
    workspace?: string
    env?: Record<string, string>
    on_exit?: 'restart' | 'stop'
    max_restarts?: number
    restart_window?: number
    exec?: string[]
    confine?: boolean
  }
  logs?: { max_bytes?: number; keep?: number }
}

let validator: ((d: unknown) => boolean) & { errors?: Array<{ instancePath: string; message?: string; params: Record<string, unknown>; keyword: string }> | null }
function validate(data: unknown) {
  if (!validator) {
    const ajv = new Ajv({ allErrors: true, strict: false })
    validator = ajv.compile(JSON.parse(readFileSync(SCHEMA_PATH, 'utf8'))) as typeof validator
  }
  const ok = validator(data)
  return ok ? [] : (validator.errors ?? [])
}

/** Find the config to use: -f FILE, else ./cordon.yaml, else the embedded default. */
export function locateConfig(file?: string): string {
  if (file) return resolve(file)
  const local = resolve('cordon.yaml')
  if (existsSync(local)) return local
  return DEFAULT_CONFIG_PATH
}

function position(lc: LineCounter, node: YamlNode | undefined | null): string {
  const off = node?.range?.[0]
  if (off === undefined) return ''
  const p = lc.linePos(off)
  return `${p.line}:${p.col}`
}

/** Parse and validate; errors carry file:line:col. */
export function parseConfig(text: string, file: string): RawConfig {
  const lc = new LineCounter()
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: true })
  if (doc.errors.length) {
    throw new ConfigError(
      `${file}: not valid YAML`,
      doc.errors.map((e) => {
        const p = e.linePos?.[0]
        return `${file}${p ? `:${p.line}:${p.col}` : ''}: ${e.message.split('\n')[0]}`
      }),
    )
  }
  const data = (doc.toJS() ?? {}) as unknown
  if (typeof data !== 'object' || data === null || Array.isArray(data)) throw new ConfigError(`${file}:1: expected a mapping with at least "version: 1"`)
  const errors = validate(data)
  if (errors.length) {
    const problems = errors.map((e) => {
      const segs = e.instancePath.split('/').slice(1).map((s) => (/^\d+$/.test(s) ? Number(s) : s.replace(/~1/g, '/').replace(/~0/g, '~')))
      let node = (segs.length ? doc.getIn(segs, true) : doc.contents) as YamlNode | undefined
      let what = e.message ?? e.keyword
      if (e.keyword === 'additionalProperties') {
        const extra = String(e.params.additionalProperty)
        what = `unknown key "${extra}"`
        const parent = node
        if (parent && isMap(parent)) {
          const pair = parent.items.find((p) => (p.key as { value?: unknown })?.value === extra)
          if (pair) node = pair.key as YamlNode
        }
      } else if (e.keyword === 'enum') {
        what = `must be one of ${(e.params.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`
      } else if (e.keyword === 'const') {
        what = `must be ${JSON.stringify(e.params.allowedValue)}`
      }
      if (isSeq(node) && e.keyword === 'minItems') what = 'must not be empty'
      const where = position(lc, node)
      const key = segs.length ? segs.join('.') : '(top level)'
      return `${file}${where ? `:${where}` : ''}: ${key}: ${what}`
    })
    throw new ConfigError(`${file}: invalid configuration (see profiles/cordon.schema.json)`, [...new Set(problems)])
  }
  return data as RawConfig
}

function isRoot() {
  return typeof process.getuid === 'function' && process.getuid() === 0
}

/** Directory defaults: CORDON_RUNTIME_DIR puts everything under it (tests, unprivileged use). */
function defaultDirs(): { runtime: string; state: string; log: string } {
  const envRt = process.env.CORDON_RUNTIME_DIR
  if (envRt) {
    const rt = resolve(envRt)
    return { runtime: rt, state: process.env.CORDON_STATE_DIR ?? resolve(rt, 'state'), log: process.env.CORDON_LOG_DIR ?? resolve(rt, 'logs') }
  }
  if (isRoot()) return { runtime: '/run/cordon', state: process.env.CORDON_STATE_DIR ?? '/var/lib/cordon', log: process.env.CORDON_LOG_DIR ?? '/var/log/cordon' }
  const base = process.env.XDG_RUNTIME_DIR ? resolve(process.env.XDG_RUNTIME_DIR, 'cordon') : resolve(process.env.HOME ?? '/tmp', '.cordon', 'run')
  const home = resolve(process.env.HOME ?? '/tmp', '.cordon')
  return { runtime: base, state: resolve(home, 'state'), log: resolve(home, 'logs') }
}

function service(raw: RawService | undefined, name: ServiceName, base: string): ServiceConfig {
  const p = (x: string) => (isAbsolute(x) ? x : resolve(base, x))
  return {
    exec: raw?.exec,
    env: raw?.env ?? {},
    confine: raw?.confine ?? true,
    servicePolicy: raw?.service_policy ? p(raw.service_policy) : resolve(PKG_ROOT, 'profiles', 'services', `${name}.yaml`),
    startTimeoutMs: (raw?.start_timeout ?? 30) * 1000,
    healthIntervalMs: (raw?.health_interval ?? 1) * 1000,
    healthFailures: raw?.health_failures ?? 3,
    args: raw?.args ?? [],
  }
}

export const DEFAULT_AGENT_POLICY = resolve(PKG_ROOT, 'profiles', 'cordon.agent.yaml')
export const REFERENCE_AGENT = resolve(PKG_ROOT, 'examples', 'agent', 'agent.mjs')

/** node + the reference agent; in a checkout without dist/ it needs tsx's loader for cordon/agent. */
export function referenceAgentCommand(): string[] {
  if (existsSync(resolve(PKG_ROOT, 'dist', 'agent', 'index.js'))) return [process.execPath, REFERENCE_AGENT]
  const loader = resolve(PKG_ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs')
  return [process.execPath, '--import', `file://${loader}`, REFERENCE_AGENT]
}

/** Load, validate and resolve a cordon.yaml (or the embedded default). */
export function loadConfig(file?: string): CordonConfig {
  const path = locateConfig(file)
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (e) {
    throw new ConfigError(`cannot read ${path}: ${(e as Error).message}; pass an existing file with -f, or omit -f to use the embedded defaults`)
  }
  return resolveConfig(parseConfig(text, path), path)
}

export function resolveConfig(raw: RawConfig, path: string): CordonConfig {
  const base = path === DEFAULT_CONFIG_PATH ? process.cwd() : dirname(path)
  const p = (x: string) => (isAbsolute(x) ? x : resolve(base, x))
  const d = defaultDirs()
  const runtimeDir = process.env.CORDON_RUNTIME_DIR ? resolve(process.env.CORDON_RUNTIME_DIR) : raw.runtime_dir ? p(raw.runtime_dir) : d.runtime
  const stateDir = raw.state_dir ? p(raw.state_dir) : d.state
  const logDir = raw.log_dir ? p(raw.log_dir) : d.log
  const a = raw.agent ?? {}
  return {
    source: path === DEFAULT_CONFIG_PATH ? '<embedded default>' : path,
    runtimeDir,
    stateDir,
    logDir,
    policy: raw.policy ? p(raw.policy) : DEFAULT_AGENT_POLICY,
    engine: { ...service(raw.engine, 'engine', base), listen: raw.engine?.listen ?? '169.254.77.1:3128' },
    router: {
      ...service(raw.router, 'router', base),
      listen: raw.router?.listen ?? '127.0.0.1:3129',
      config: raw.router?.config ? p(raw.router.config) : undefined,
      keys: raw.router?.keys ? p(raw.router.keys) : undefined,
    },
    gateway: {
      ...service(raw.gateway, 'gateway', base),
      agentListen: raw.gateway?.agent_listen ?? '127.0.0.1:3130',
      config: raw.gateway?.config ? p(raw.gateway.config) : undefined,
    },
    agent: {
      command: a.command ?? referenceAgentCommand(),
      workspace: a.workspace ? p(a.workspace) : resolve(stateDir, 'workspace'),
      env: a.env ?? {},
      onExit: a.on_exit ?? 'restart',
      maxRestarts: a.max_restarts ?? 5,
      restartWindowMs: (a.restart_window ?? 60) * 1000,
      exec: a.exec,
      confine: a.confine ?? true,
    },
    logs: { maxBytes: raw.logs?.max_bytes ?? 10 * 1024 * 1024, keep: raw.logs?.keep ?? 5 },
  }
}

/**
 * `cordon up --check`: the whole set. cordon.yaml itself, then every file it names must exist;
 * the agent policy, router and gateway configs are validated by their owners' validators when
 * those are importable (checkers are passed in so this module imports no other service).
 */
export type FileChecker = (file: string) => Promise<string[]> // returns problems "file:line: msg"
export async function checkConfigSet(cfg: CordonConfig, checkers: Partial<Record<'policy' | 'router' | 'gateway' | 'service_policy', FileChecker>>): Promise<string[]> {
  const problems: string[] = []
  const need = async (file: string | undefined, label: string, checker?: FileChecker) => {
    if (!file) return
    if (!existsSync(file)) {
      problems.push(`${file}: ${label} not found (named in ${cfg.source})`)
      return
    }
    if (checker) {
      try {
        problems.push(...(await checker(file)))
      } catch (e) {
        problems.push(`${file}: ${(e as Error).message}`)
      }
    }
  }
  await need(cfg.policy, 'agent policy', checkers.policy)
  await need(cfg.router.config, 'router config', checkers.router)
  await need(cfg.gateway.config, 'gateway config', checkers.gateway)
  for (const s of SERVICES) if (cfg[s].confine) await need(cfg[s].servicePolicy, `${s} service policy`, checkers.service_policy)
  const gateHost = cfg.engine.listen.replace(/:\d+$/, '')
  if (cfg.agent.confine && gateHost !== '169.254.77.1' && gateHost !== '0.0.0.0') problems.push(`${cfg.source}: engine.listen: ${cfg.engine.listen} is not reachable from the agent's network namespace; use 169.254.77.1:PORT (the gate address cordon puts on lo)`)
  const listens = [cfg.engine.listen, cfg.router.listen, cfg.gateway.agentListen]
  if (new Set(listens).size !== listens.length) problems.push(`${cfg.source}: engine.listen, router.listen and gateway.agent_listen must differ (${listens.join(', ')})`)
  if (cfg.agent.command[0] && isAbsolute(cfg.agent.command[0]) && !existsSync(cfg.agent.command[0])) problems.push(`${cfg.source}: agent.command: ${cfg.agent.command[0]} not found`)
  return problems
}
