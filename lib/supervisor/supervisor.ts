/**
 * The supervisor behind `cordon up`: starts the components in dependency order (engine, router,
 * gateway, agent), each healthy before the next, then keeps them up.
 *
 * - A component that exits, or fails `healthFailures` health checks in a row, is restarted. The
 *   first restart is immediate (kill -9 -> healthy again well under 2 s), then backoff doubles up
 *   to 10 s while it keeps dying young; a run that lasted 10 s resets it.
 * - The component restores its own state from its --state dir (engine approvals and pending
 *   requests, router limit counters, gateway queues); the supervisor only restarts it.
 * - The agent follows agent.on_exit: restart (backoff, crash-loop limit max_restarts per
 *   restart_window) or stop the whole system.
 * - Children are process-group leaders whose stdout/stderr are files (logs.ts), so when the
 *   supervisor itself is killed they keep running and logging. The next supervisor reads
 *   state.json and adopts every component still alive with an unchanged command line (no
 *   pause for the user), and cleans and restarts the rest.
 * - Fail closed: the sandbox's only route is to the engine and router; while either restarts its
 *   connections fail. Nothing here opens another path.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { EventEmitter } from 'node:events'
import { closeSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync, symlinkSync, unlinkSync } from 'node:fs'
import http from 'node:http'
import { dirname, relative } from 'node:path'
import pino from 'pino'
import type { CordonConfig, ComponentName } from './config.js'
import { specHash, type ComponentSpec } from './components.js'
import { checkHealth } from './health.js'
import { logPath, openCapture, rotateIfNeeded } from './logs.js'
import { isAlive, procId, signalGroup, sleep, terminate, type ProcId } from './proc.js'
import { cleanStale, controlLink, ensureDir, listLinks, readState, removeState, supervisorAlive, supervisorSocket, writeState, type RuntimeState } from './runtime.js'
import { prepareAgentNet, removeAgentNet, sandboxId } from './sandbox-net.js'
import { serveLookups, type LookupServer } from '../engine/lookup-service.js'

export type Status = 'stopped' | 'starting' | 'healthy' | 'running' | 'unhealthy' | 'restarting' | 'crash-loop' | 'failed'

export interface ComponentStatus {
  name: ComponentName
  pid?: number
  status: Status
  health: { ok: boolean; detail?: string; at?: number }
  startedAt?: number
  uptimeMs?: number
  restarts: number
  listen?: string
  control?: string
  adopted: boolean
  lastExit?: { code: number | null; signal: string | null; at: number }
}

export interface SupervisorStatus {
  supervisor: { pid: number; startedAt: number; config: string; runtimeDir: string; logDir: string; stateDir: string }
  components: ComponentStatus[]
}

interface Runner {
  spec: ComponentSpec
  hash: string
  id?: ProcId
  child?: ChildProcess
  adopted: boolean
  status: Status
  health: { ok: boolean; detail?: string; at?: number }
  startedAt?: number
  restarts: number
  restartTimes: number[]
  quickFailures: number
  failures: number
  lastExit?: { code: number | null; signal: string | null; at: number }
  exited?: Promise<void>
  checking: boolean
  pollTimer?: NodeJS.Timeout
  restartTimer?: NodeJS.Timeout
  generation: number
  /** in its first start: a failure fails `cordon up` instead of scheduling a restart */
  initial: boolean
  /** spec.pinned files as they were when it started: path -> identity (fileId) */
  pins?: Map<string, string>
  /** a restart for a replaced pinned file is under way */
  repinning?: boolean
}

/** a file's identity: device and inode, or 'absent' */
function fileId(p: string): string {
  try {
    const st = statSync(p)
    return `${st.dev}:${st.ino}`
  } catch {
    return 'absent'
  }
}

const BACKOFF_MS = [0, 100, 250, 500, 1000, 2000, 5000, 10_000]

export interface SupervisorOptions {
  /** progress callback for the CLI display */
  onEvent?: (e: { component: ComponentName | 'supervisor'; status: string; detail?: string; ms?: number; pid?: number }) => void
  /** adopt live components left by a killed supervisor (default true) */
  adopt?: boolean
}

export class Supervisor extends EventEmitter {
  readonly runners = new Map<ComponentName, Runner>()
  private stopping = false
  private stopped?: Promise<void>
  private server?: http.Server
  /** client-process lookups answered for confined components (ComponentSpec.lookupSocket) */
  private lookups: LookupServer[] = []
  private timers: NodeJS.Timeout[] = []
  private readonly startedAt = Date.now()
  private readonly log: pino.Logger
  private sandboxId?: string
  private lostReported = new Set<string>()
  private netns = new Set<string>()
  private links = new Set<string>()
  /** resolves with the exit code when the system stops (stop(), or agent on_exit: stop) */
  readonly done: Promise<number>
  private resolveDone!: (code: number) => void

  constructor(
    readonly cfg: CordonConfig,
    readonly specs: ComponentSpec[],
    private readonly opts: SupervisorOptions = {},
  ) {
    super()
    this.done = new Promise((r) => (this.resolveDone = r))
    for (const d of [cfg.runtimeDir, cfg.logDir, cfg.stateDir]) ensureDir(d)
    for (const s of specs) {
      if (s.stateDir) mkdirSync(s.stateDir, { recursive: true, mode: 0o700 })
      if (s.audit) mkdirSync(dirname(s.audit), { recursive: true, mode: 0o700 })
      if (s.cwd) mkdirSync(s.cwd, { recursive: true, mode: 0o700 })
      if (s.control) {
        mkdirSync(dirname(s.control), { recursive: true, mode: 0o700 })
        const link = controlLink(cfg.runtimeDir, s.name)
        try {
          if (readlinkSync(link) !== relative(cfg.runtimeDir, s.control)) unlinkSync(link)
        } catch {
          /* none */
        }
        try {
          symlinkSync(relative(cfg.runtimeDir, s.control), link)
        } catch {
          /* exists */
        }
      }
      this.runners.set(s.name, { spec: s, hash: specHash(s), adopted: false, status: 'stopped', health: { ok: false }, restarts: 0, restartTimes: [], quickFailures: 0, failures: 0, checking: false, generation: 0, initial: false })
    }
    this.log = pino({ base: { component: 'supervisor' } }, pino.destination({ dest: logPath(cfg.logDir, 'supervisor'), append: true, sync: true, mkdir: true }))
  }

  private event(component: ComponentName | 'supervisor', status: string, extra: { detail?: string; ms?: number; pid?: number } = {}) {
    this.opts.onEvent?.({ component, status, ...extra })
    this.emit('event', { component, status, ...extra })
  }

  /** Start everything; rejects (after stopping what started) when a component never gets healthy. */
  async start(): Promise<void> {
    const rt = this.cfg.runtimeDir
    const prev = readState(rt)
    if (supervisorAlive(prev)) throw new Error(`cordon is already running (supervisor pid ${prev!.supervisor.pid}, runtime dir ${rt}); run \`cordon status\` or \`cordon down\` first`)
    await this.listen()
    // before any component starts (an adopted engine reconnects by itself)
    try {
      for (const s of this.specs) if (s.lookupSocket) this.lookups.push(await serveLookups(s.lookupSocket))
    } catch (e) {
      await this.stop(1)
      throw new Error(`cannot serve client-process lookups: ${(e as Error).message}`)
    }
    const adoptable = new Map<ComponentName, RuntimeState['components'][ComponentName]>()
    if (prev) {
      for (const ns of prev.netns ?? []) this.netns.add(ns)
      for (const l of prev.links ?? []) this.links.add(l)
      if (prev.sandboxId) this.sandboxId = prev.sandboxId
      const stale: ComponentName[] = []
      for (const [name, rec] of Object.entries(prev.components) as Array<[ComponentName, NonNullable<RuntimeState['components'][ComponentName]>]>) {
        const r = this.runners.get(name)
        if (this.opts.adopt !== false && r && rec && isAlive(rec) && rec.specHash === r.hash) adoptable.set(name, rec)
        else if (rec && isAlive(rec)) stale.push(name)
      }
      if (stale.length) {
        const rep = await cleanStale(rt, prev, stale)
        for (const k of rep.killed) this.log.warn({ stale: k }, `stopped stale ${k.component} (pid ${k.pid}) left by a previous supervisor`)
      }
      this.log.info({ previous: prev.supervisor.pid, adoptable: [...adoptable.keys()] }, 'previous supervisor found dead; recovering')
    }
    // the agent's network namespace: kept when a live agent is adopted, else made afresh
    // (before the engine starts: it adds the gate address the engine listens on)
    if (this.cfg.agent.confine) {
      const id = sandboxId(this.cfg.runtimeDir)
      this.sandboxId = id
      const name = `cordon-${id}`
      if (!adoptable.has('agent') || !existsSync(`/run/netns/${name}`)) {
        const removed = removeAgentNet(id)
        if (removed.length) this.log.warn({ removed }, 'removed a stale sandbox network')
        try {
          const net = prepareAgentNet(this.cfg.runtimeDir, Number(this.cfg.engine.listen.split(':').pop()))
          if (net.firewallNote) this.log.warn({ note: net.firewallNote }, 'sandbox firewall')
          this.netns = new Set([net.name])
          this.links = new Set([`cdn${(Number(net.hostAddress.split('.').pop()) - 1) / 4}h`])
          this.log.info({ netns: net.name, sandbox: net.sandboxAddress, gate: net.gate }, 'sandbox network ready')
        } catch (e) {
          await this.stop(1)
          throw new Error(`cannot prepare the agent's network namespace: ${(e as Error).message}`)
        }
      }
    }
    this.persist()
    try {
      for (const r of this.runners.values()) {
        const rec = adoptable.get(r.spec.name)
        if (rec) {
          const ok = r.spec.control ? (await checkHealth(r.spec.control, 1000)).ok : true
          if (ok) {
            this.adopt(r, rec)
            continue
          }
          await terminate(rec, 2000)
        }
        await this.launch(r, true)
      }
    } catch (e) {
      await this.stop(1)
      throw e
    }
    this.timers.push(setInterval(() => this.rotate(), 5000))
    this.event('supervisor', 'ready', { ms: Date.now() - this.startedAt })
    this.log.info({ ms: Date.now() - this.startedAt }, 'all components up')
  }

  private adopt(r: Runner, rec: NonNullable<RuntimeState['components'][ComponentName]>) {
    r.id = { pid: rec.pid, start: rec.start }
    r.adopted = true
    // what is there now (a file replaced while no supervisor watched goes unnoticed until a restart)
    if (r.spec.pinned) r.pins = new Map(r.spec.pinned.map((f) => [f, fileId(f)]))
    r.startedAt = rec.startedAt
    r.restarts = rec.restarts
    r.status = r.spec.control ? 'healthy' : 'running'
    r.health = { ok: true, at: Date.now() }
    r.generation++
    const gen = r.generation
    // not our child: poll for its death
    r.pollTimer = setInterval(() => {
      if (gen !== r.generation) return
      if (!isAlive(r.id)) {
        clearInterval(r.pollTimer)
        this.onExit(r, gen, null, 'unknown')
      }
    }, 100)
    this.startHealthLoop(r, gen)
    this.persist()
    this.log.info({ pid: rec.pid, target: r.spec.name }, `adopted running ${r.spec.name}`)
    this.event(r.spec.name, 'adopted', { pid: rec.pid })
  }

  /** Spawn and wait healthy. With `initial`, failure rejects; otherwise it schedules another restart. */
  private async launch(r: Runner, initial: boolean): Promise<void> {
    const s = r.spec
    const t0 = Date.now()
    r.generation++
    const gen = r.generation
    r.status = initial ? 'starting' : 'restarting'
    r.initial = initial
    r.failures = 0
    r.adopted = false
    this.event(s.name, r.status)
    if (s.control && existsSync(s.control)) {
      try {
        unlinkSync(s.control)
      } catch {
        /* the component recreates it */
      }
    }
    let cmd: { argv: string[]; env: Record<string, string> } = s
    // before the helper opens them for its rules (a file replaced in between only costs a restart)
    if (s.pinned) r.pins = new Map(s.pinned.map((f) => [f, fileId(f)]))
    if (s.prepare) {
      try {
        const p = s.prepare()
        cmd = p
        if (p.lost.length && !this.lostReported.has(s.name)) {
          this.lostReported.add(s.name)
          this.log.warn({ target: s.name, lost: p.lost }, `${s.name}: not enforced on this kernel: ${p.lost.join('; ')}`)
        }
      } catch (e) {
        const msg = `${s.name}: cannot compile its confinement policy: ${(e as Error).message}`
        this.log.error({ target: s.name }, msg)
        if (initial) throw new Error(msg)
        r.restartTimer = setTimeout(() => this.onExit(r, gen, 126, null), 0)
        return
      }
    }
    const fd = openCapture(this.cfg.logDir, s.name)
    let child: ChildProcess
    try {
      child = spawn(cmd.argv[0]!, cmd.argv.slice(1), { detached: true, stdio: ['ignore', fd, fd], env: cmd.env, cwd: s.cwd })
    } finally {
      closeSync(fd)
    }
    r.child = child
    let exitInfo: { code: number | null; signal: string | null } | undefined
    r.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        exitInfo = { code, signal }
        resolve()
        this.onExit(r, gen, code, signal)
      })
      child.once('error', (err) => {
        this.log.error({ err: err.message, target: s.name }, `cannot start ${s.name}: ${err.message}`)
        exitInfo ??= { code: null, signal: null }
        resolve()
        this.onExit(r, gen, 127, null)
      })
    })
    if (child.pid) r.id = procId(child.pid)
    r.startedAt = Date.now()
    this.persist()

    // wait for health
    const deadline = Date.now() + s.startTimeoutMs
    let last: { ok: boolean; detail?: string } = { ok: false, detail: 'not checked yet' }
    if (s.control) {
      while (Date.now() < deadline && !exitInfo && gen === r.generation && !this.stopping) {
        last = await checkHealth(s.control, 500)
        if (last.ok) break
        await sleep(20)
      }
    } else {
      // no control socket (the agent): healthy once it has stayed up briefly
      const until = Date.now() + 300
      while (Date.now() < until && !exitInfo) await sleep(20)
      last = exitInfo ? { ok: false } : { ok: true }
    }
    r.initial = false
    if (gen !== r.generation || this.stopping) return
    if (last.ok && !exitInfo) {
      r.status = s.control ? 'healthy' : 'running'
      r.health = { ok: true, at: Date.now() }
      this.persist()
      const ms = Date.now() - t0
      this.log.info({ target: s.name, pid: r.id?.pid, ms, restart: !initial }, `${s.name} ${initial ? 'started' : 'restarted'} and healthy in ${ms} ms`)
      this.event(s.name, r.status, { ms, pid: r.id?.pid, detail: s.listen })
      this.startHealthLoop(r, gen)
      return
    }
    const why = exitInfo
      ? `exited (${exitInfo.signal ? `signal ${exitInfo.signal}` : `code ${exitInfo.code}`}) before becoming healthy`
      : `not healthy after ${s.startTimeoutMs} ms (${last.detail ?? 'no answer'} on ${s.control})`
    if (initial) {
      const tail = this.tail(s.name, 15)
      this.event(s.name, 'failed', { detail: why })
      if (!exitInfo && r.id) await terminate(r.id, 1000)
      throw new Error(`${s.name} ${why}\n  command: ${s.argv.join(' ')}\n  log: ${logPath(this.cfg.logDir, s.name)}${tail ? `\n  last lines:\n    ${tail.split('\n').join('\n    ')}` : ''}`)
    }
    this.log.warn({ target: s.name, why }, `${s.name} ${why}; restarting`)
    if (!exitInfo && r.id) signalGroup(r.id, 'SIGKILL') // onExit schedules the next try
  }

  private tail(name: string, n: number): string {
    try {
      const lines = readFileSync(logPath(this.cfg.logDir, name), 'utf8').trimEnd().split('\n')
      return lines.slice(-n).join('\n')
    } catch {
      return ''
    }
  }

  private startHealthLoop(r: Runner, gen: number) {
    if (!r.spec.control) return
    const t = setInterval(async () => {
      if (gen !== r.generation || this.stopping) {
        clearInterval(t)
        return
      }
      if (r.checking || (r.status !== 'healthy' && r.status !== 'unhealthy')) return
      if (this.checkPinned(r)) return
      r.checking = true
      const h = await checkHealth(r.spec.control!, Math.max(500, r.spec.healthIntervalMs))
      r.checking = false
      if (gen !== r.generation || this.stopping) return
      r.health = { ...h, at: Date.now() }
      if (h.ok) {
        if (r.status === 'unhealthy') this.log.info({ target: r.spec.name }, `${r.spec.name} healthy again`)
        r.failures = 0
        r.status = 'healthy'
        return
      }
      r.failures++
      r.status = 'unhealthy'
      this.log.warn({ target: r.spec.name, failures: r.failures, detail: h.detail }, `${r.spec.name} health check failed (${r.failures}/${r.spec.healthFailures})`)
      if (r.failures >= r.spec.healthFailures && r.id) {
        this.log.error({ target: r.spec.name }, `${r.spec.name} failed ${r.failures} health checks; killing it for a restart`)
        clearInterval(t)
        signalGroup(r.id, 'SIGKILL')
      }
    }, r.spec.healthIntervalMs)
    this.timers.push(t)
  }

  /**
   * A confined component's rules cover the files its pinned paths named when it started; a file
   * replaced since (rename over it, or created where none was) is out of its reach, so reloading it
   * would fail: restart the component, whose new rules cover the new file. True when a restart began.
   */
  private checkPinned(r: Runner): boolean {
    if (!r.pins || r.repinning) return false
    const changed = [...r.pins].filter(([f, id]) => fileId(f) !== id).map(([f]) => f)
    if (!changed.length) return false
    const name = r.spec.name
    r.repinning = true
    this.log.warn({ target: name, files: changed }, `${name}: ${changed.join(', ')} replaced since it started (its Landlock rules cover the old file): restarting it to read the new one`)
    this.event(name, 'restarting', { detail: `replaced: ${changed.join(', ')}` })
    void this.restart(name)
      .catch((e: Error) => this.log.error({ target: name, err: e.message }, `restart of ${name} failed`))
      .finally(() => (r.repinning = false))
    return true
  }

  private onExit(r: Runner, gen: number, code: number | null, signal: string | null) {
    if (gen !== r.generation) return
    r.lastExit = { code, signal, at: Date.now() }
    r.health = { ok: false, detail: 'exited', at: Date.now() }
    if (r.pollTimer) clearInterval(r.pollTimer)
    // the group may hold stragglers (a confined child of cordon run): end them
    if (r.id) {
      try {
        process.kill(-r.id.pid, 'SIGKILL')
      } catch {
        /* none */
      }
    }
    if (this.stopping || r.initial) return
    const name = r.spec.name
    const lived = r.startedAt ? Date.now() - r.startedAt : 0
    this.log.warn({ target: name, code, signal, lived_ms: lived }, `${name} exited (${signal ? `signal ${signal}` : `code ${code}`}) after ${lived} ms`)
    this.event(name, 'exited', { detail: signal ? `signal ${signal}` : `code ${code}` })
    if (name === 'agent') {
      if (this.cfg.agent.onExit === 'stop') {
        this.log.warn('agent exited and agent.on_exit is stop: stopping the system')
        void this.stop(code === 0 ? 0 : 1)
        return
      }
      const now = Date.now()
      r.restartTimes = r.restartTimes.filter((t) => now - t < this.cfg.agent.restartWindowMs)
      if (r.restartTimes.length >= this.cfg.agent.maxRestarts) {
        r.status = 'crash-loop'
        this.persist()
        this.log.error({ target: name, restarts: r.restartTimes.length, window_ms: this.cfg.agent.restartWindowMs }, `agent crash loop: ${r.restartTimes.length} restarts within ${this.cfg.agent.restartWindowMs / 1000} s; not restarting it (fix it, then \`cordon restart agent\`)`)
        this.event(name, 'crash-loop')
        return
      }
      r.restartTimes.push(now)
    }
    r.quickFailures = lived >= 10_000 ? 0 : r.quickFailures + 1
    const delay = BACKOFF_MS[Math.min(Math.max(r.quickFailures - 1, 0), BACKOFF_MS.length - 1)]!
    r.status = 'restarting'
    this.persist()
    r.restartTimer = setTimeout(() => {
      if (this.stopping || gen !== r.generation) return
      r.restarts++
      void (async () => {
        await this.launch(r, false)
      })().catch((e: Error) => this.log.error({ target: name, err: e.message }, `restart of ${name} failed`))
    }, delay)
  }

  /** Restart one component on request (`cordon restart X`), also out of a crash loop. */
  async restart(name: ComponentName): Promise<void> {
    const r = this.runners.get(name)
    if (!r) throw new Error(`no component ${name}`)
    r.restartTimes = []
    r.quickFailures = 0
    if (r.id && isAlive(r.id)) {
      const gen = r.generation
      await terminate(r.id, 3000)
      // onExit (or the adoption poll) schedules the restart; wait for it to be up
      const end = Date.now() + r.spec.startTimeoutMs + 1000
      while (Date.now() < end && (r.generation === gen || (r.status !== 'healthy' && r.status !== 'running'))) await sleep(25)
      return
    }
    r.restarts++
    await this.launch(r, false)
  }

  private rotate() {
    for (const name of [...this.runners.keys(), 'supervisor']) {
      try {
        if (rotateIfNeeded(logPath(this.cfg.logDir, name), this.cfg.logs.maxBytes, this.cfg.logs.keep)) this.log.info({ target: name }, `rotated ${name}.log`)
      } catch (e) {
        this.log.warn({ target: name, err: (e as Error).message }, 'log rotation failed')
      }
    }
  }

  /** control sockets and the links to them (removed on down) */
  private socketPaths(): string[] {
    return [...this.runners.values()].flatMap((r) => [...(r.spec.control ? [r.spec.control, controlLink(this.cfg.runtimeDir, r.spec.name)] : []), ...(r.spec.lookupSocket ? [r.spec.lookupSocket] : [])])
  }

  status(): SupervisorStatus {
    const now = Date.now()
    return {
      supervisor: { pid: process.pid, startedAt: this.startedAt, config: this.cfg.source, runtimeDir: this.cfg.runtimeDir, logDir: this.cfg.logDir, stateDir: this.cfg.stateDir },
      components: [...this.runners.values()].map((r) => ({
        name: r.spec.name,
        pid: r.id && isAlive(r.id) ? r.id.pid : undefined,
        status: r.status,
        health: r.health,
        startedAt: r.startedAt,
        uptimeMs: r.startedAt && (r.status === 'healthy' || r.status === 'running' || r.status === 'unhealthy') ? now - r.startedAt : undefined,
        restarts: r.restarts,
        listen: r.spec.listen,
        control: r.spec.control,
        adopted: r.adopted,
        lastExit: r.lastExit,
      })),
    }
  }

  private persist() {
    const rt = this.cfg.runtimeDir
    const me = procId(process.pid)
    const s: RuntimeState = {
      version: 1,
      supervisor: { ...me, startedAt: this.startedAt, config: this.cfg.source, socket: supervisorSocket(rt) },
      components: {},
      netns: [...this.netns],
      links: [...this.links],
      sockets: this.socketPaths(),
      sandboxId: this.sandboxId,
    }
    for (const r of this.runners.values()) {
      if (!r.id) continue
      s.components[r.spec.name] = { ...r.id, startedAt: r.startedAt ?? 0, restarts: r.restarts, specHash: r.hash, control: r.spec.control, listen: r.spec.listen, status: r.status }
    }
    if (!this.stopping) writeState(rt, s)
  }

  /** The supervisor's own control socket: /health, /status, /stop, /restart?component=X. */
  private async listen() {
    const sock = supervisorSocket(this.cfg.runtimeDir)
    if (existsSync(sock)) unlinkSync(sock)
    this.server = http.createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://localhost')
      const json = (code: number, body: unknown) => {
        res.writeHead(code, { 'content-type': 'application/json' })
        res.end(JSON.stringify(body))
      }
      if (req.method === 'GET' && url.pathname === '/health') return json(200, { ok: true })
      if (req.method === 'GET' && url.pathname === '/status') return json(200, this.status())
      if (req.method === 'POST' && url.pathname === '/stop') {
        json(202, { stopping: true })
        void this.stop(0)
        return
      }
      if (req.method === 'POST' && url.pathname === '/restart') {
        const c = url.searchParams.get('component') as ComponentName | null
        if (!c || !this.runners.has(c)) return json(400, { error: `component must be one of ${[...this.runners.keys()].join(', ')}` })
        this.restart(c).then(
          () => json(200, { restarted: c, status: this.status().components.find((x) => x.name === c) }),
          (e: Error) => json(500, { error: e.message }),
        )
        return
      }
      json(404, { error: `no such endpoint ${req.method} ${url.pathname}` })
    })
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject)
      const old = process.umask(0o177)
      this.server!.listen(sock, () => {
        process.umask(old)
        resolve()
      })
    })
  }

  /** Stop everything (agent first, engine last), remove sockets, namespaces, links, state. */
  stop(code = 0): Promise<void> {
    if (this.stopped) return this.stopped
    this.stopping = true
    this.stopped = (async () => {
      this.log.info('stopping')
      this.event('supervisor', 'stopping')
      for (const t of this.timers) clearInterval(t)
      const order: ComponentName[] = ['agent', 'gateway', 'router', 'engine']
      for (const name of order) {
        const r = this.runners.get(name)
        if (!r) continue
        if (r.restartTimer) clearTimeout(r.restartTimer)
        if (r.pollTimer) clearInterval(r.pollTimer)
        r.generation++
        if (r.id && isAlive(r.id)) {
          this.event(name, 'stopping', { pid: r.id.pid })
          await terminate(r.id, 5000)
        }
        r.status = 'stopped'
        this.event(name, 'stopped')
      }
      const rt = this.cfg.runtimeDir
      const st: RuntimeState = {
        version: 1,
        supervisor: { pid: 0, start: 0, startedAt: 0, config: '', socket: supervisorSocket(rt) },
        components: {},
        netns: [...this.netns],
        links: [...this.links],
        sockets: this.socketPaths(),
        sandboxId: this.sandboxId,
      }
      for (const l of this.lookups) await l.close()
      await cleanStale(rt, st)
      await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()))
      if (existsSync(supervisorSocket(rt))) unlinkSync(supervisorSocket(rt))
      removeState(rt)
      this.log.info('stopped')
      this.log.flush?.()
      this.event('supervisor', 'stopped')
      this.resolveDone(code)
    })()
    return this.stopped
  }
}

/** All descendant pids of `pid` (scan of /proc/*\/stat ppid). */
export function descendants(pid: number): number[] {
  const kids = new Map<number, number[]>()
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    try {
      const st = readFileSync(`/proc/${d}/stat`, 'utf8')
      const ppid = Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1])
      const arr = kids.get(ppid) ?? []
      arr.push(Number(d))
      kids.set(ppid, arr)
    } catch {
      /* gone */
    }
  }
  const out: number[] = []
  const q = [pid]
  while (q.length) {
    const p = q.shift()!
    for (const k of kids.get(p) ?? []) {
      out.push(k)
      q.push(k)
    }
  }
  return out
}

export { listLinks }
