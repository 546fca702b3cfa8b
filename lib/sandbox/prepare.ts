/**
 * Policy input -> Plan, for the appliers. lib/policy does the work (loadPolicy merges onto the
 * default agent profile, compilePlan decides everything); this only probes the kernel, caches the
 * result per (input, workspace, cwd, env) so repeated spawn() calls cost nothing, and checks the
 * plan's invariants the appliers rely on.
 */
import { loadPolicy, compilePlan } from '../policy/index.js'
import type { Plan } from '../policy/plan.js'
import { probe } from '../kernel/probe.js'

/** A policy file path, or a policy object (same shape as the file; omitted fields come from the default agent profile). */
export type PolicyInput = string | Record<string, unknown>

export interface PrepareOptions {
  /** the workspace directory (overrides the policy's filesystem.workspace) */
  workspace?: string
  /** base for relative paths in a policy object (default process.cwd()) */
  cwd?: string
  /** the environment the env pass list is applied to (default process.env) */
  env?: NodeJS.ProcessEnv
  /** the plan is for lock(): it confines the calling process itself (CompileOptions.inPlace) */
  inPlace?: boolean
}

const cache = new Map<string, Plan>()

export function preparePlan(input: PolicyInput, opts: PrepareOptions = {}): Plan {
  const env = opts.env ?? process.env
  const cwd = opts.cwd ?? process.cwd()
  const key = JSON.stringify([input, opts.workspace ?? null, cwd, env, opts.inPlace === true])
  const hit = cache.get(key)
  if (hit) return hit
  const loadOpts: { workspace?: string; cwd?: string } = { cwd }
  if (opts.workspace !== undefined) loadOpts.workspace = opts.workspace
  const policy = loadPolicy(input as string | object, loadOpts)
  const plan = compilePlan(policy, probe(), { env, inPlace: opts.inPlace === true })
  if (cache.size >= 32) cache.delete(cache.keys().next().value as string)
  cache.set(key, plan)
  return plan
}
