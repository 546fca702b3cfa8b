/** lib/sandbox: apply a compiled policy to a process — lock() (this process), spawn() and run() (a child). */
export { lock, lockWith, chooseLockMode, LockError, LOCK_MARKER } from './lock.js'
export type { LockReport, LockMode } from './lock.js'
export { spawn, spawnPlan, run, runPlan, exitStatus } from './spawn.js'
export type { CordonSpawnOptions } from './spawn.js'
export { helperArgv, HELPER_FAILED } from './argv.js'
export { preparePlan } from './prepare.js'
export type { PolicyInput, PrepareOptions } from './prepare.js'
