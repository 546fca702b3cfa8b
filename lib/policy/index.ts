/**
 * lib/policy: the policy model. Pure: no syscalls (it reads policy files and stat()s the
 * paths rules name). lib/sandbox applies the Plan compilePlan() returns.
 */
export { PolicyError } from './errors.js'
export { loadPolicy, loadProfile, loadSeccompProfile, listProfiles, PROFILES_DIR, SCHEMA_PATH } from './load.js'
export type { LoadOptions } from './load.js'
export type * from './types.js'
export type * from './plan.js'
export type { OciSeccompProfile, OciSyscall, OciArg, OciAction, OciOp } from './seccomp/oci.js'
export { parseOciProfile, validateOciProfile } from './seccomp/oci.js'
