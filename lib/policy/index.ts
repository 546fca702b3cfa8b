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
export { compilePlan, planHash, amendPlan, SYSTEM_PATHS } from './compile.js'
export type { CompileOptions } from './compile.js'
export { explainPlan, planWarnings } from './explain.js'
export { compileSeccomp, compileSeccompDetailed, disassemble, SYSCALL_TABLES, THIRTY_TWO_BIT_ARGS } from './seccomp/compile.js'
export type { SeccompCompileResult } from './seccomp/compile.js'
