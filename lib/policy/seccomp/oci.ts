/**
 * The OCI runtime-spec seccomp profile format (the one Docker, Podman and Kubernetes'
 * `seccompProfile: Localhost` read), and a validator whose errors name file, line and field.
 * Docker's own extension (`includes`/`excludes` on entries, `archMap`) is accepted too.
 */
import { LineCounter, parseDocument, isMap, isSeq, type Document } from 'yaml'
import { PolicyError } from '../errors.js'

export type OciAction =
  | 'SCMP_ACT_ALLOW' | 'SCMP_ACT_ERRNO' | 'SCMP_ACT_KILL' | 'SCMP_ACT_KILL_THREAD'
  | 'SCMP_ACT_KILL_PROCESS' | 'SCMP_ACT_TRAP' | 'SCMP_ACT_LOG'

export type OciOp =
  | 'SCMP_CMP_NE' | 'SCMP_CMP_LT' | 'SCMP_CMP_LE' | 'SCMP_CMP_EQ' | 'SCMP_CMP_GE' | 'SCMP_CMP_GT'
  | 'SCMP_CMP_MASKED_EQ'

export interface OciArg {
  index: number
  /** uint64; for MASKED_EQ this is the mask */
  value: number | bigint
  /** for MASKED_EQ: the value the masked argument must equal */
  valueTwo?: number | bigint
  op: OciOp
}

export interface OciSyscall {
  names: string[]
  action: OciAction
  errnoRet?: number
  args?: OciArg[]
  comment?: string
  /** Docker extension: the entry applies only when these hold */
  includes?: { arches?: string[]; caps?: string[]; minKernel?: string }
  excludes?: { arches?: string[]; caps?: string[]; minKernel?: string }
}

export interface OciSeccompProfile {
  defaultAction: OciAction
  defaultErrnoRet?: number
  architectures?: string[]
  syscalls?: OciSyscall[]
  [other: string]: unknown
}

export const ACTIONS: readonly OciAction[] = [
  'SCMP_ACT_ALLOW', 'SCMP_ACT_ERRNO', 'SCMP_ACT_KILL', 'SCMP_ACT_KILL_THREAD',
  'SCMP_ACT_KILL_PROCESS', 'SCMP_ACT_TRAP', 'SCMP_ACT_LOG',
]
export const OPS: readonly OciOp[] = [
  'SCMP_CMP_NE', 'SCMP_CMP_LT', 'SCMP_CMP_LE', 'SCMP_CMP_EQ', 'SCMP_CMP_GE', 'SCMP_CMP_GT',
  'SCMP_CMP_MASKED_EQ',
]

const TOP_KEYS = ['defaultAction', 'defaultErrnoRet', 'architectures', 'archMap', 'syscalls', 'flags',
  'listenerPath', 'listenerMetadata', 'comment']
const ENTRY_KEYS = ['names', 'name', 'action', 'errnoRet', 'args', 'comment', 'includes', 'excludes']
const ARG_KEYS = ['index', 'value', 'valueTwo', 'op']
const U64_MAX = (1n << 64n) - 1n

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/**
 * Parse and validate an OCI seccomp profile from JSON text (file = where it came from).
 * Large integers (> 2^53) keep their exact value as bigint.
 */
export function parseOciProfile(text: string, file: string): OciSeccompProfile {
  // Fast path (the yaml parser takes ~150 ms of CPU on the 9 kB agent profile, at every policy
  // load): plain JSON.parse where it gives exactly what the yaml path gives, i.e. valid JSON with
  // no integer of 16+ digits (those may exceed 2^53; the yaml path keeps them exact as bigint)
  // and no duplicate keys (JSON.parse keeps the last silently; the yaml path reports the line).
  // Line numbers for validation errors come from the yaml parse, done only when one is needed.
  const fast = plainJson(text)
  if (fast !== undefined) {
    let doc: { d: Document; lc: LineCounter } | undefined
    return validateOciProfile(fast, file, (path) => {
      if (!doc) {
        const lc = new LineCounter()
        doc = { d: parseDocument(text, { lineCounter: lc, intAsBigInt: true, prettyErrors: false }), lc }
      }
      return lineOf(doc.d, doc.lc, path)
    })
  }
  const lc = new LineCounter()
  const doc = parseDocument(text, { lineCounter: lc, intAsBigInt: true, prettyErrors: false })
  if (doc.errors.length) {
    const e = doc.errors[0]!
    throw new PolicyError({ file, line: lc.linePos(e.pos[0]).line, problem: `not valid JSON: ${e.message.split('\n')[0]}`,
      hint: 'a seccomp profile is OCI runtime-spec JSON' })
  }
  const data = smallInts(doc.toJS())
  return validateOciProfile(data, file, (path) => lineOf(doc, lc, path))
}

/** JSON.parse(text) when that is exact and unambiguous (see parseOciProfile), else undefined. */
export function plainJson(text: string): unknown {
  if (/\d{16,}/.test(text)) return undefined
  let data: unknown
  try {
    data = JSON.parse(text)
  } catch {
    return undefined
  }
  return hasDuplicateKeys(text) ? undefined : data
}

/** Whether some object in (valid) JSON text repeats a key. */
function hasDuplicateKeys(text: string): boolean {
  const stack: Array<Set<string> | null> = []
  for (let i = 0; i < text.length; i++) {
    const c = text[i]
    if (c === '"') {
      let j = i + 1
      while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1
      const raw = text.slice(i, j + 1)
      i = j
      let k = j + 1
      while (k < text.length && (text[k] === ' ' || text[k] === '\n' || text[k] === '\r' || text[k] === '\t')) k++
      const top = stack[stack.length - 1]
      if (text[k] === ':' && top) {
        const key = JSON.parse(raw) as string
        if (top.has(key)) return true
        top.add(key)
      }
    } else if (c === '{') stack.push(new Set())
    else if (c === '[') stack.push(null)
    else if (c === '}' || c === ']') stack.pop()
  }
  return false
}

function lineOf(doc: Document, lc: LineCounter, path: (string | number)[]): number | undefined {
  for (let n = path.length; n >= 0; n--) {
    const node = doc.getIn(path.slice(0, n), true) as { range?: [number, number, number] } | undefined
    if (node && node.range) return lc.linePos(node.range[0]).line
    if (n === 0 && (isMap(doc.contents) || isSeq(doc.contents)) && doc.contents.range) return lc.linePos(doc.contents.range[0]).line
  }
  return undefined
}

function toU64(v: unknown): bigint | null {
  if (typeof v === 'bigint') return v >= 0n && v <= U64_MAX ? v : null
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return BigInt(v)
  return null
}

function smallInts(v: unknown): unknown {
  if (typeof v === 'bigint') return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v
  if (Array.isArray(v)) return v.map(smallInts)
  if (typeof v === 'object' && v !== null) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, smallInts(x)]))
  return v
}

/** Keep numbers as numbers where exact, so profiles stay JSON-serializable. */
function small(v: bigint): number | bigint {
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v
}

/** Validate an already-parsed profile. `line` maps a field path to a line (when known). */
export function validateOciProfile(
  data: unknown, file: string, line: (path: (string | number)[]) => number | undefined = () => undefined,
): OciSeccompProfile {
  const fail = (path: (string | number)[], problem: string, hint?: string): never => {
    const field = path.reduce<string>((s, p) => (typeof p === 'number' ? `${s}[${p}]` : s ? `${s}.${p}` : p), '')
    throw new PolicyError({ file, line: line(path), field: field || undefined, problem, hint })
  }
  if (!isObj(data)) fail([], 'a seccomp profile must be a JSON object', 'see the OCI runtime-spec (linux.seccomp)')
  const p = data as Record<string, unknown>
  for (const k of Object.keys(p)) if (!TOP_KEYS.includes(k)) fail([k], `unknown key "${k}"`, `allowed keys: ${TOP_KEYS.join(', ')}`)
  if (!ACTIONS.includes(p.defaultAction as OciAction))
    fail(['defaultAction'], `${JSON.stringify(p.defaultAction)} is not a supported action`, `allowed: ${ACTIONS.join(', ')}`)
  if (p.defaultErrnoRet !== undefined && !(typeof p.defaultErrnoRet === 'number' && Number.isInteger(p.defaultErrnoRet) && p.defaultErrnoRet >= 0 && p.defaultErrnoRet <= 4095))
    fail(['defaultErrnoRet'], 'must be an errno number', 'allowed: an integer 0..4095')
  if (p.architectures !== undefined && !(Array.isArray(p.architectures) && p.architectures.every((a) => typeof a === 'string')))
    fail(['architectures'], 'must be a list of SCMP_ARCH_* names')
  const out: OciSyscall[] = []
  if (p.syscalls !== undefined) {
    if (!Array.isArray(p.syscalls)) fail(['syscalls'], 'must be a list')
    ;(p.syscalls as unknown[]).forEach((e, i) => {
      const at = ['syscalls', i]
      if (!isObj(e)) return fail(at, 'must be an object { names, action, errnoRet?, args? }')
      for (const k of Object.keys(e)) if (!ENTRY_KEYS.includes(k)) fail([...at, k], `unknown key "${k}"`, `allowed keys: ${ENTRY_KEYS.join(', ')}`)
      let names = e.names
      if (names === undefined && typeof e.name === 'string') names = [e.name]
      if (!Array.isArray(names) || names.length === 0 || !names.every((n) => typeof n === 'string' && /^[a-z0-9_]+$/.test(n)))
        fail([...at, 'names'], 'must be a non-empty list of syscall names', 'e.g. ["ptrace", "process_vm_readv"]')
      if (!ACTIONS.includes(e.action as OciAction))
        fail([...at, 'action'], `${JSON.stringify(e.action)} is not a supported action`, `allowed: ${ACTIONS.join(', ')}`)
      if (e.errnoRet !== undefined && !(typeof e.errnoRet === 'number' && Number.isInteger(e.errnoRet) && e.errnoRet >= 0 && e.errnoRet <= 4095))
        fail([...at, 'errnoRet'], 'must be an errno number', 'allowed: an integer 0..4095')
      const args: OciArg[] = []
      if (e.args !== undefined && e.args !== null) {
        if (!Array.isArray(e.args)) fail([...at, 'args'], 'must be a list')
        ;(e.args as unknown[]).forEach((a, j) => {
          const aat = [...at, 'args', j]
          if (!isObj(a)) return fail(aat, 'must be an object { index, value, valueTwo?, op }')
          for (const k of Object.keys(a)) if (!ARG_KEYS.includes(k)) fail([...aat, k], `unknown key "${k}"`, `allowed keys: ${ARG_KEYS.join(', ')}`)
          if (!(typeof a.index === 'number' && Number.isInteger(a.index) && a.index >= 0 && a.index <= 5))
            fail([...aat, 'index'], 'must be an argument index', 'allowed: 0..5')
          const value = toU64(a.value)
          if (value === null) fail([...aat, 'value'], 'must be an unsigned 64-bit integer')
          const valueTwo = a.valueTwo === undefined ? undefined : toU64(a.valueTwo)
          if (valueTwo === null) fail([...aat, 'valueTwo'], 'must be an unsigned 64-bit integer')
          if (!OPS.includes(a.op as OciOp)) fail([...aat, 'op'], `${JSON.stringify(a.op)} is not a supported operator`, `allowed: ${OPS.join(', ')}`)
          if (a.op === 'SCMP_CMP_MASKED_EQ' && valueTwo === undefined)
            fail([...aat, 'valueTwo'], 'SCMP_CMP_MASKED_EQ needs valueTwo', 'value is the mask, valueTwo what the masked argument must equal')
          args.push({ index: a.index as number, value: small(value!), valueTwo: small(valueTwo ?? 0n), op: a.op as OciOp })
        })
      }
      const entry: OciSyscall = { names: names as string[], action: e.action as OciAction }
      if (e.errnoRet !== undefined) entry.errnoRet = e.errnoRet as number
      if (args.length) entry.args = args
      if (typeof e.comment === 'string') entry.comment = e.comment
      if (isObj(e.includes)) entry.includes = e.includes as OciSyscall['includes']
      if (isObj(e.excludes)) entry.excludes = e.excludes as OciSyscall['excludes']
      out.push(entry)
    })
  }
  const prof: OciSeccompProfile = { defaultAction: p.defaultAction as OciAction, syscalls: out }
  if (p.defaultErrnoRet !== undefined) prof.defaultErrnoRet = p.defaultErrnoRet as number
  if (p.architectures !== undefined) prof.architectures = p.architectures as string[]
  return prof
}
