/**
 * Process identity and signalling for the supervisor.
 *
 * A pid alone is not an identity: after the supervisor is killed and the machine keeps running,
 * a recorded pid may belong to an unrelated process. We record the kernel's start time
 * (/proc/PID/stat field 22, clock ticks since boot) beside every pid and only ever signal a
 * process whose start time still matches.
 */
import { readFileSync } from 'node:fs'

export interface ProcId {
  pid: number
  /** /proc/PID/stat starttime; 0 when unknown */
  start: number
}

/** Start time of a live process, or undefined when it does not exist (or is a zombie). */
export function procStart(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // comm (field 2) may contain spaces and parens: split after the last ')'
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // rest[0] is field 3 (state); starttime is field 22 -> rest[19]
    if (rest[0] === 'Z' || rest[0] === 'X') return undefined
    return Number(rest[19])
  } catch {
    return undefined
  }
}

export function procId(pid: number): ProcId {
  return { pid, start: procStart(pid) ?? 0 }
}

/** True when the process recorded as `id` is still the same live process. */
export function isAlive(id: ProcId | undefined): boolean {
  if (!id || !id.pid) return false
  const s = procStart(id.pid)
  if (s === undefined) return false
  return id.start === 0 || s === id.start
}

/** Signal a process group (children are started as group leaders), falling back to the pid. */
export function signalGroup(id: ProcId, sig: NodeJS.Signals): boolean {
  if (!isAlive(id)) return false
  try {
    process.kill(-id.pid, sig)
    return true
  } catch {
    try {
      process.kill(id.pid, sig)
      return true
    } catch {
      return false
    }
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}

/** SIGTERM the group, wait up to graceMs, then SIGKILL. Resolves when the leader is gone. */
export async function terminate(id: ProcId, graceMs = 5000): Promise<void> {
  if (!signalGroup(id, 'SIGTERM')) return
  const deadline = Date.now() + graceMs
  while (Date.now() < deadline) {
    if (!isAlive(id)) break
    await sleep(25)
  }
  // SIGKILL the whole group even when the leader left on its own: stragglers go too
  try {
    process.kill(-id.pid, 'SIGKILL')
  } catch {
    /* group gone */
  }
  if (isAlive(id)) {
    try {
      process.kill(id.pid, 'SIGKILL')
    } catch {
      /* gone */
    }
    const end = Date.now() + 2000
    while (isAlive(id) && Date.now() < end) await sleep(10)
  }
}

/** Seconds since boot of a start time in clock ticks (CLK_TCK is 100 on Linux). */
export function startedAtMs(start: number): number | undefined {
  try {
    const up = Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0])
    return Date.now() - (up * 1000 - (start / 100) * 1000)
  } catch {
    return undefined
  }
}
