/**
 * spawn(): confine a child without confining the parent. The child is the cordon-exec helper,
 * which applies the plan in its single thread and then execs the command, so the command is
 * confined from its first instruction. Same contract as child_process.spawn (returns a
 * ChildProcess), except that the environment is the plan's scrubbed environment.
 */
import { spawn as cpSpawn, type ChildProcess, type SpawnOptions } from 'node:child_process'
import { constants } from 'node:os'
import type { Plan } from '../policy/plan.js'
import { helperPath } from '../kernel/addon.js'
import { helperArgvCached } from './argv.js'
import { preparePlan, type PolicyInput } from './prepare.js'

export interface CordonSpawnOptions extends Omit<SpawnOptions, 'env'> {
  /** workspace directory; overrides the policy's filesystem.workspace */
  workspace?: string
  /**
   * Kill the confined program (SIGKILL) when this process dies, even by SIGKILL, so a sandbox
   * never outlives its launcher. `cordon run` sets it. Default false (child_process semantics).
   */
  dieWithParent?: boolean
}

/** Spawn an already compiled plan (used by spawn(), the CLI and tests). */
export function spawnPlan(plan: Plan, cmd: string, args: readonly string[] = [], options: CordonSpawnOptions = {}): ChildProcess {
  const { workspace: _ws, dieWithParent, ...rest } = options
  const pre = dieWithParent ? ['--die-with-parent'] : []
  return cpSpawn(helperPath(), [...pre, ...helperArgvCached(plan), '--', cmd, ...args], { ...rest, env: plan.env, shell: false })
}

export function spawn(policy: PolicyInput, cmd: string, args: readonly string[] = [], options: CordonSpawnOptions = {}): ChildProcess {
  const prep: { workspace?: string; cwd?: string } = {}
  if (options.workspace !== undefined) prep.workspace = options.workspace
  if (typeof options.cwd === 'string') prep.cwd = options.cwd
  const plan = preparePlan(policy, prep)
  return spawnPlan(plan, cmd, args, options)
}

/** Exit status of a finished child the way a shell reports it: the code, or 128 + signal number. */
export function exitStatus(code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code
  const n = signal ? (constants.signals as Record<string, number>)[signal] : undefined
  return 128 + (n ?? 0)
}

/** Wait for a child, forwarding SIGINT/SIGTERM/SIGHUP to it; resolves to its exit status. */
export function waitChild(child: ChildProcess): Promise<number> {
  const forward: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP']
  const handlers = forward.map((sig) => {
    const h = () => {
      child.kill(sig)
    }
    process.on(sig, h)
    return [sig, h] as const
  })
  const cleanup = () => {
    for (const [sig, h] of handlers) process.off(sig, h)
  }
  return new Promise((resolve, reject) => {
    child.once('error', (err) => {
      cleanup()
      reject(err)
    })
    child.once('close', (code, signal) => {
      cleanup()
      resolve(exitStatus(code, signal))
    })
  })
}

/** Run a command confined with inherited stdio; resolves to its exit status (128+signal when killed). */
export function run(policy: PolicyInput, cmd: string, args: readonly string[] = [], options: CordonSpawnOptions = {}): Promise<number> {
  return waitChild(spawn(policy, cmd, args, { stdio: 'inherit', ...options }))
}

export function runPlan(plan: Plan, cmd: string, args: readonly string[] = [], options: CordonSpawnOptions = {}): Promise<number> {
  return waitChild(spawnPlan(plan, cmd, args, { stdio: 'inherit', ...options }))
}
