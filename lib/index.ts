/**
 * cordon — the library entry (`import { lock, spawn } from 'cordon'`).
 *
 * lock(policy)   confine this process (every thread) and return a report of what is enforced.
 * spawn(policy, cmd, args, options)   start a child confined from its first instruction.
 * run(policy, cmd, args)   spawn and wait; resolves to the exit status (128+signal when killed).
 *
 * A policy is an object of the same shape as a policy file, or the path to one; whatever it
 * omits comes from the default agent profile (profiles/agent.yaml).
 */
export { lock, spawn, run, LockError, exitStatus } from './sandbox/index.js'
export type { LockReport, CordonSpawnOptions, PolicyInput } from './sandbox/index.js'
export {
  loadPolicy, loadProfile, listProfiles, compilePlan, explainPlan, compileSeccomp, disassemble,
  PolicyError,
} from './policy/index.js'
export type { Plan, KernelFeatures } from './policy/index.js'
export { probe, doctor } from './kernel/index.js'
export type { DoctorReport } from './kernel/index.js'
