/**
 * The runtime directory: one place holding what a running `cordon up` owns, so that a later
 * `cordon up` or `cordon down` after the supervisor was killed with -9 finds and cleans it.
 *
 *   RUNTIME_DIR/state.json        supervisor pid, each component's pid + start time, sockets,
 *                                 network namespaces and links created for the sandbox
 *   RUNTIME_DIR/supervisor.sock   the supervisor's control socket (status, stop, restart)
 *   RUNTIME_DIR/<component>.sock  each component's control socket
 *
 * state.json is written atomically (write temp, fsync, rename).
 */
import { execFileSync } from 'node:child_process'
import { closeSync, existsSync, fsyncSync, lstatSync, mkdirSync, openSync, readFileSync, renameSync, rmdirSync, rmSync, unlinkSync, writeSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { isAlive, terminate, type ProcId } from './proc.js'
import type { ComponentName } from './config.js'
import { removeAgentNet } from './sandbox-net.js'

export interface ComponentRecord extends ProcId {
  startedAt: number
  restarts: number
  /** hash of the command line + env it was started with (adoption only when unchanged) */
  specHash: string
  control?: string
  listen?: string
  status: string
}

export interface RuntimeState {
  version: 1
  supervisor: ProcId & { startedAt: number; config: string; socket: string }
  components: Partial<Record<ComponentName, ComponentRecord>>
  /** network namespaces (ip netns names) and links created for this system */
  netns: string[]
  links: string[]
  /** sockets to remove on down */
  sockets: string[]
  /** the agent sandbox's id (lib/supervisor/sandbox-net.ts): namespace, veth, iptables, registry */
  sandboxId?: string
}

export const statePath = (rt: string) => join(rt, 'state.json')
export const supervisorSocket = (rt: string) => join(rt, 'supervisor.sock')
/** each service's socket lives in its own directory, the only one of RUNTIME_DIR it may write */
export const controlSocket = (rt: string, c: string) => join(rt, c, 'control.sock')
/** RUNTIME_DIR/<c>.sock -> <c>/control.sock, where the components' own CLIs look by default */
export const controlLink = (rt: string, c: string) => join(rt, `${c}.sock`)

export function ensureDir(dir: string, mode = 0o700) {
  mkdirSync(dir, { recursive: true, mode })
}

export function readState(rt: string): RuntimeState | undefined {
  try {
    return JSON.parse(readFileSync(statePath(rt), 'utf8')) as RuntimeState
  } catch {
    return undefined
  }
}

export function writeState(rt: string, s: RuntimeState) {
  ensureDir(rt)
  const tmp = `${statePath(rt)}.${process.pid}.tmp`
  const fd = openSync(tmp, 'w', 0o600)
  try {
    writeSync(fd, JSON.stringify(s, null, 2))
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
  renameSync(tmp, statePath(rt))
}

export function supervisorAlive(s: RuntimeState | undefined): boolean {
  return !!s && isAlive(s.supervisor)
}

function ip(args: string[]): string {
  try {
    return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  } catch {
    return ''
  }
}

/** Names of network namespaces that exist (ip netns list). */
export function listNetns(): string[] {
  return ip(['netns', 'list'])
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter(Boolean)
}

/** Names of links in the root namespace. */
export function listLinks(): string[] {
  return ip(['-o', 'link', 'show'])
    .split('\n')
    .map((l) => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1] ?? '')
    .filter(Boolean)
}

/** Host-side links whose peer lives in one of the named namespaces ("link-netns NAME"). */
export function linksToNetns(names: string[]): string[] {
  if (!names.length) return []
  const want = new Set(names)
  const out: string[] = []
  for (const line of ip(['-o', 'link', 'show']).split('\n')) {
    const name = /^\d+:\s+([^:@\s]+)/.exec(line)?.[1]
    const ns = /link-netns\s+(\S+)/.exec(line)?.[1]
    if (name && ns && want.has(ns)) out.push(name)
  }
  return out
}

/** Network namespace name of a live pid, when it is a named one (ip netns identify). */
export function netnsOfPid(pid: number): string | undefined {
  const out = ip(['netns', 'identify', String(pid)]).trim()
  return out || undefined
}

export interface CleanReport {
  killed: Array<{ component: string; pid: number }>
  netns: string[]
  links: string[]
  sockets: string[]
}

/**
 * Clean everything a dead supervisor left: component processes (only when pid AND start time
 * still match), network namespaces and links it recorded, sockets. Never touches anything not
 * recorded in state.json. Safe to run twice.
 */
export async function cleanStale(rt: string, s: RuntimeState | undefined = readState(rt), only?: ComponentName[]): Promise<CleanReport> {
  const report: CleanReport = { killed: [], netns: [], links: [], sockets: [] }
  if (!s) return report
  const order: ComponentName[] = ['agent', 'gateway', 'router', 'engine']
  for (const name of order) {
    if (only && !only.includes(name)) continue
    const c = s.components[name]
    if (c && isAlive(c)) {
      await terminate(c, 3000)
      report.killed.push({ component: name, pid: c.pid })
    }
  }
  if (only) return report
  if (s.sandboxId) for (const d of removeAgentNet(s.sandboxId)) if (d.startsWith('netns ')) report.netns.push(d.slice(6))
  const haveNs = new Set(listNetns())
  for (const ns of s.netns ?? []) {
    if (!haveNs.has(ns)) continue
    ip(['netns', 'del', ns])
    report.netns.push(ns)
  }
  const haveLinks = new Set(listLinks())
  for (const l of s.links ?? []) {
    if (!haveLinks.has(l)) continue
    ip(['link', 'del', l])
    report.links.push(l)
  }
  for (const sock of [...(s.sockets ?? []), s.supervisor?.socket].filter(Boolean) as string[]) {
    let present = existsSync(sock)
    try {
      lstatSync(sock)
      present = true // also a dangling link
    } catch {
      /* none */
    }
    if (present) {
      try {
        unlinkSync(sock)
        report.sockets.push(sock)
      } catch {
        /* gone */
      }
    }
    // the per-service socket directory, when now empty
    if (sock.endsWith('/control.sock')) {
      try {
        rmdirSync(dirname(sock))
      } catch {
        /* not empty or gone */
      }
    }
  }
  rmSync(join(rt, 'policies'), { recursive: true, force: true })
  return report
}

export function removeState(rt: string) {
  rmSync(statePath(rt), { force: true })
}
