/**
 * Loading a policy: parse (YAML or JSON, with line numbers), validate against the published
 * JSON Schema (profiles/policy.schema.json, with ajv), merge onto the profile it extends, then
 * resolve every path and name. Every problem is a PolicyError naming file, line and field.
 *
 * Merge rule (documented in docs/policy.md): the policy's value for a field replaces the
 * profile's; mappings (filesystem, process, process.env, process.env.set, process.rlimits,
 * requirements, a proxy `network` mapping over another) merge field by field; lists and
 * scalars replace as a whole. `extends: none` starts from nothing: an omitted field takes its
 * strictest value (no paths, no network, no seccomp filter, empty environment).
 *
 * Pure apart from reading policy/profile files and stat()ing the paths rules name.
 */
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import { createRequire } from 'node:module'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { LineCounter, parseDocument, isMap, isPair, isScalar, type Document } from 'yaml'
import type _Ajv from 'ajv'
import type { ErrorObject, ValidateFunction } from 'ajv'
import { PolicyError } from './errors.js'
import type { NetRule, NetworkPolicy, Origin, PathEntry, ResolvedPolicy, RlimitValue } from './types.js'
import { parseOciProfile } from './seccomp/oci.js'
import type { RlimitName } from './plan.js'

const require = createRequire(import.meta.url)

/** profiles/ of this package (lib/policy/ and dist/policy/ are both two levels down). */
export const PROFILES_DIR = fileURLToPath(new URL('../../profiles/', import.meta.url))
export const SCHEMA_PATH = path.join(PROFILES_DIR, 'policy.schema.json')

export interface LoadOptions {
  /** Overrides filesystem.workspace (e.g. `cordon run --workspace`, or the cwd). */
  workspace?: string
  /** Directory relative paths of an object policy (and opts.workspace) resolve against. */
  cwd?: string
  /** Name for an object policy in error messages (default "<policy object>"). */
  source?: string
}

type Path = (string | number)[]

/** One parsed layer (a file or an object) with what is needed to point at its lines. */
interface Layer {
  data: Record<string, unknown>
  file: string
  /** directory relative paths in this layer resolve against */
  dir: string
  doc?: Document
  lc?: LineCounter
}

/*
 * Validation cost: importing ajv and compiling the schema take ~250 ms of CPU, paid by every
 * process that loads a policy (twice on lock()'s re-exec path). So:
 *  - the accept check uses the validator scripts/gen-policy-validator.mjs generated ahead of time
 *    (ajv standalone code; build output beside this module in dist/, or build/policy/ of the
 *    package in development), and only when it was generated from this very schema (sha256);
 *  - ajv itself is loaded, and the schema compiled with allErrors + verbose, only when there is
 *    no matching generated validator or a policy is invalid (to report every problem).
 * The schema is the package's own and is checked against the JSON Schema meta-schema by a test
 * (test/policy/loader.test.ts), so the runtime compile skips that step (validateSchema: false).
 */
let schemaText: string | null = null
function readSchema(): string {
  return (schemaText ??= fs.readFileSync(SCHEMA_PATH, 'utf8'))
}

type Check = (data: unknown) => boolean
let fastCheck: Check | null | undefined
/** Where the generated validator may be (exported for tests). */
export const GENERATED_VALIDATORS = [
  fileURLToPath(new URL('./schema-validator.cjs', import.meta.url)),
  path.join(PROFILES_DIR, '..', 'build', 'policy', 'schema-validator.cjs'),
]
/** The generated validator for this schema, or null (none, or generated from another schema). */
export function generatedValidator(files = GENERATED_VALIDATORS): Check | null {
  if (fastCheck !== undefined && files === GENERATED_VALIDATORS) return fastCheck
  const want = createHash('sha256').update(readSchema()).digest('hex')
  let found: Check | null = null
  for (const f of files) {
    if (!fs.existsSync(f)) continue
    try {
      const m = require(f) as Check & { schemaSha256?: string }
      if (typeof m === 'function' && m.schemaSha256 === want) {
        found = m
        break
      }
    } catch {
      /* unreadable or broken: fall back to compiling the schema */
    }
  }
  if (files === GENERATED_VALIDATORS) fastCheck = found
  return found
}

let validator: ValidateFunction | null = null
function schemaValidator(): ValidateFunction {
  if (validator) return validator
  const schema = JSON.parse(readSchema()) as object
  const Ajv = (require('ajv') as typeof _Ajv).default
  const ajv = new Ajv({ allErrors: true, verbose: true, strict: true, allowUnionTypes: true, validateSchema: false })
  ajv.addKeyword({ keyword: 'x-allowed', schemaType: 'string' })
  validator = ajv.compile(schema)
  return validator
}

export function fieldName(p: Path): string {
  return p.reduce<string>((s, k) => (typeof k === 'number' ? `${s}[${k}]` : s ? `${s}.${k}` : String(k)), '')
}

/** Line of the node at path in a layer (the nearest existing ancestor when it is absent). */
function lineIn(layer: Layer, p: Path, key = false): number | undefined {
  const { doc, lc } = layer
  if (!doc || !lc) return undefined
  for (let n = p.length; n >= 0; n--) {
    const sub = p.slice(0, n)
    if (key && n === p.length && n > 0) {
      // point at the key itself (unknown-key errors)
      const parent = sub.length > 1 ? doc.getIn(sub.slice(0, -1), true) : doc.contents
      if (isMap(parent)) {
        const pair = parent.items.find((it) => isPair(it) && isScalar(it.key) && it.key.value === sub[sub.length - 1])
        const k = pair?.key as { range?: [number, number, number] } | undefined
        if (k?.range) return lc.linePos(k.range[0]).line
      }
    }
    const node = (n === 0 ? doc.contents : doc.getIn(sub, true)) as { range?: [number, number, number] } | null | undefined
    if (node && node.range) return lc.linePos(node.range[0]).line
  }
  return undefined
}

function hasIn(data: unknown, p: Path): boolean {
  let cur: unknown = data
  for (const k of p) {
    if (cur === null || typeof cur !== 'object' || !(k in (cur as object))) return false
    cur = (cur as Record<string | number, unknown>)[k]
  }
  return true
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function deepMerge(base: unknown, over: unknown): unknown {
  if (!isPlainObject(base) || !isPlainObject(over)) return over
  const out: Record<string, unknown> = { ...base }
  for (const [k, v] of Object.entries(over)) out[k] = k in base ? deepMerge(base[k], v) : v
  return out
}

function readLayer(file: string): Layer {
  let text: string
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    throw new PolicyError({ file, problem: e.code === 'ENOENT' ? 'no such file' : `cannot read it (${e.code ?? e.message})`,
      hint: 'give the path of a policy file (YAML or JSON), or a profile name with --profile' })
  }
  const lc = new LineCounter()
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true })
  if (doc.errors.length) {
    const errs = doc.errors.map((e) => new PolicyError({ file, line: lc.linePos(e.pos[0]).line,
      problem: `not valid YAML/JSON: ${e.message.split('\n')[0]}`, hint: 'check indentation, quoting and duplicate keys' }))
    Object.assign(errs[0]!, { others: errs.slice(1) })
    throw errs[0]
  }
  const data = doc.toJS() as unknown
  if (!isPlainObject(data))
    throw new PolicyError({ file, line: 1, problem: 'a policy must be a mapping', hint: 'start with `version: 1`' })
  return { data, file, dir: path.dirname(path.resolve(file)), doc, lc }
}

/** Turn ajv's errors into PolicyErrors: one per real problem, with what is allowed. */
function schemaErrors(errors: ErrorObject[], layer: Layer): PolicyError[] {
  const toPath = (ptr: string): Path =>
    ptr === '' ? [] : ptr.slice(1).split('/').map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'))
      .map((s) => (/^\d+$/.test(s) ? Number(s) : s))
  // For anyOf: when every branch failed on the value's type, report the anyOf (with x-allowed);
  // otherwise the value had the right type and the branch errors below it say what is wrong.
  const drop = new Set<ErrorObject>()
  const allowedOf = new Map<ErrorObject, string>()
  for (const any of errors.filter((e) => e.keyword === 'anyOf')) {
    const inner = errors.filter((e) => e !== any && e.schemaPath.startsWith(any.schemaPath.replace(/\/anyOf$/, '/anyOf/')))
    const shapeOnly = (e: ErrorObject) => e.instancePath === any.instancePath && ['type', 'enum', 'const'].includes(e.keyword)
    if (inner.every(shapeOnly)) inner.forEach((e) => drop.add(e))
    else {
      drop.add(any)
      inner.filter(shapeOnly).forEach((e) => drop.add(e))
      const xa = (any.parentSchema as Record<string, unknown> | undefined)?.['x-allowed']
      if (typeof xa === 'string') for (const e of inner) if (e.instancePath === any.instancePath && !allowedOf.has(e)) allowedOf.set(e, xa)
    }
  }
  const out: PolicyError[] = []
  const seen = new Set<string>()
  for (const e of errors) {
    if (drop.has(e) || e.keyword === 'if') continue
    let p = toPath(e.instancePath)
    let key = false
    let problem: string
    let hint: string | undefined
    const ps = (e.parentSchema ?? {}) as Record<string, unknown>
    const allowed = typeof ps['x-allowed'] === 'string' ? (ps['x-allowed'] as string) : allowedOf.get(e)
    const val = JSON.stringify(e.data)
    switch (e.keyword) {
      case 'additionalProperties': {
        const k = (e.params as { additionalProperty: string }).additionalProperty
        p = [...p, k]
        key = true
        problem = `unknown key "${k}"`
        const props = Object.keys((ps.properties ?? {}) as object)
        hint = props.length ? `allowed keys here: ${props.join(', ')}` : 'no keys are allowed here'
        break
      }
      case 'required': {
        const k = (e.params as { missingProperty: string }).missingProperty
        problem = `"${k}" is required here`
        hint = k === 'version' ? 'add `version: 1`' : undefined
        p = [...p, k]
        break
      }
      case 'enum':
        problem = `${val} is not allowed`
        hint = `allowed: ${((e.params as { allowedValues: unknown[] }).allowedValues).map((v) => JSON.stringify(v)).join(', ')}`
        break
      case 'const':
        problem = `${val} is not allowed`
        hint = `it must be ${JSON.stringify((e.params as { allowedValue: unknown }).allowedValue)}`
        break
      case 'type':
        problem = `${val} has the wrong type`
        hint = allowed ? `allowed: ${allowed}` : `it must be ${(e.params as { type: string }).type}`
        break
      case 'anyOf':
        problem = `${val} is not allowed`
        hint = allowed ? `allowed: ${allowed}` : undefined
        break
      case 'pattern':
        problem = `${val} is not valid`
        hint = allowed ? `allowed: ${allowed}` : `it must match ${(e.params as { pattern: string }).pattern}`
        break
      case 'uniqueItems':
        problem = 'lists the same item twice'
        hint = 'remove the duplicate'
        break
      case 'propertyNames':
        problem = 'has an invalid name'
        hint = 'environment variable names are letters, digits and _'
        break
      default:
        problem = `${val} ${e.message ?? 'is not valid'}`
        hint = allowed ? `allowed: ${allowed}` : undefined
    }
    if (e.keyword === 'propertyNames') continue // ajv also reports the offending name via pattern
    const err = new PolicyError({ file: layer.file, line: lineIn(layer, p, key), field: fieldName(p) || '(top level)', problem, hint })
    if (!seen.has(err.message)) {
      seen.add(err.message)
      out.push(err)
    }
  }
  return out
}

function throwAll(errs: PolicyError[]): void {
  if (errs.length === 0) return
  Object.assign(errs[0]!, { others: errs.slice(1) })
  throw errs[0]
}

function validateLayer(layer: Layer): void {
  const fast = generatedValidator()
  if (fast && fast(layer.data)) return
  const validate = schemaValidator()
  if (!validate(layer.data)) throwAll(schemaErrors(validate.errors ?? [], layer))
}

function profileFile(name: string): string | null {
  for (const ext of ['.yaml', '.yml', '.json']) {
    const f = path.join(PROFILES_DIR, name + ext)
    if (fs.existsSync(f)) return f
  }
  return null
}

export function listProfiles(): string[] {
  try {
    return fs.readdirSync(PROFILES_DIR).filter((f) => /\.(ya?ml|json)$/.test(f) && !f.includes('schema'))
      .map((f) => f.replace(/\.(ya?ml|json)$/, ''))
  } catch {
    return []
  }
}

/** Collect the layers: [base profile ..., this policy]. */
function collectLayers(top: Layer, origin: Layer): Layer[] {
  const layers: Layer[] = [top]
  let cur = top
  const seen = new Set<string>()
  for (;;) {
    const ext = typeof cur.data.extends === 'string' ? cur.data.extends : cur === origin ? 'agent' : 'none'
    if (ext === 'none') break
    const f = profileFile(ext)
    if (!f)
      throw new PolicyError({ file: cur.file, line: lineIn(cur, ['extends']), field: 'extends',
        problem: `no profile named "${ext}"`, hint: `allowed: none, ${listProfiles().join(', ')}` })
    if (seen.has(f) || seen.size > 8)
      throw new PolicyError({ file: cur.file, line: lineIn(cur, ['extends']), field: 'extends', problem: `profile "${ext}" extends itself`, hint: 'break the cycle' })
    seen.add(f)
    const next = readLayer(f)
    validateLayer(next)
    layers.unshift(next)
    cur = next
  }
  return layers
}

/** Defaults with `extends: none`: the strictest value of every field. */
const EMPTY = {
  requirements: { best_effort: true, rights: [] },
  filesystem: { system: false, read_only: [], read_write: [], executable: [], home: 'none', tmp: 'none' },
  network: 'none',
  process: { seccomp: 'none', env: { pass: [], set: {} }, rlimits: {}, capabilities: 'none', others: 'visible' },
}

/**
 * Load and resolve a policy. `input` is a path to a YAML/JSON policy file, or an object of the
 * same shape (version may be omitted in an object). Throws PolicyError.
 */
export function loadPolicy(input: string | object, opts: LoadOptions = {}): ResolvedPolicy {
  let layer: Layer
  if (typeof input === 'string') {
    layer = readLayer(input)
  } else if (isPlainObject(input)) {
    // fields set to undefined (`{ workspace: opts.dir }` with no dir) count as omitted
    const data = { version: 1, ...(dropUndefined(input) as Record<string, unknown>) }
    layer = { data, file: opts.source ?? '<policy object>', dir: path.resolve(opts.cwd ?? process.cwd()) }
  } else {
    throw new PolicyError({ file: opts.source, problem: 'a policy must be a file path or an object', hint: 'e.g. { filesystem: { workspace: "/path" } }' })
  }
  validateLayer(layer)
  const layers = collectLayers(layer, layer)
  let merged: unknown = EMPTY
  for (const l of layers) {
    const { extends: _e, ...rest } = l.data
    merged = deepMerge(merged, rest)
  }
  return resolve(merged as Record<string, unknown>, layers, layer, opts)
}

/** Load a shipped profile by name (`agent`, ...), e.g. for `cordon run --profile agent`. */
export function loadProfile(name: string, opts: Omit<LoadOptions, 'source'> = {}): ResolvedPolicy {
  const f = profileFile(name)
  if (!f) throw new PolicyError({ field: 'profile', problem: `no profile named "${name}"`, hint: `allowed: ${listProfiles().join(', ')}` })
  return loadPolicy(f, opts)
}

/** Load an OCI seccomp profile by shipped name or path. */
export function loadSeccompProfile(nameOrPath: string, baseDir = process.cwd()) {
  const f = /^[a-z][a-z0-9-]*$/.test(nameOrPath)
    ? path.join(PROFILES_DIR, 'seccomp', `${nameOrPath}.json`)
    : path.resolve(baseDir, nameOrPath)
  let text: string
  try {
    text = fs.readFileSync(f, 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    throw new PolicyError({ file: f, problem: code === 'ENOENT' ? 'no such seccomp profile' : `cannot read it (${code})`,
      hint: `use agent, none, or a path to an OCI seccomp JSON file (shipped: ${shippedSeccomp().join(', ')})` })
  }
  return { source: /^[a-z][a-z0-9-]*$/.test(nameOrPath) ? nameOrPath : f, profile: parseOciProfile(text, f) }
}

function shippedSeccomp(): string[] {
  try {
    return fs.readdirSync(path.join(PROFILES_DIR, 'seccomp')).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -5))
  } catch {
    return []
  }
}

function resolve(m: Record<string, unknown>, layers: Layer[], top: Layer, opts: LoadOptions): ResolvedPolicy {
  const errors: PolicyError[] = []
  /** the layer that set a field (topmost first) */
  const layerOf = (p: Path): Layer | undefined => [...layers].reverse().find((l) => hasIn(l.data, p))
  const origin = (p: Path): Origin => {
    const l = layerOf(p)
    return { field: fieldName(p), file: l?.file, line: l ? lineIn(l, p) : undefined }
  }
  const err = (p: Path, problem: string, hint?: string) => {
    const o = origin(p)
    errors.push(new PolicyError({ file: o.file, line: o.line, field: o.field, problem, hint }))
  }

  const fsIn = m.filesystem as Record<string, unknown>
  const req = m.requirements as Record<string, unknown>
  const proc = m.process as Record<string, unknown>

  // workspace: opts.workspace wins, then the policy (relative to its file), else none
  let workspace: string | null = null
  if (opts.workspace !== undefined) {
    workspace = path.resolve(opts.cwd ?? process.cwd(), expandHome(opts.workspace))
  } else if (typeof fsIn.workspace === 'string') {
    const l = layerOf(['filesystem', 'workspace'])
    workspace = path.resolve(l?.dir ?? process.cwd(), expandHome(fsIn.workspace))
  }
  if (workspace !== null) {
    let st: fs.Stats | null = null
    try {
      st = fs.statSync(workspace)
    } catch {
      /* reported below */
    }
    if (!st || !st.isDirectory()) {
      const what = st ? 'is not a directory' : 'does not exist'
      if (opts.workspace !== undefined)
        errors.push(new PolicyError({ field: 'filesystem.workspace', problem: `${workspace} ${what}`, hint: 'pass an existing directory as the workspace' }))
      else err(['filesystem', 'workspace'], `${workspace} ${what}`, 'create it, or pass another directory (cordon run --workspace DIR)')
    }
  }

  const expand = (raw: string, p: Path): string | null => {
    let s = expandHome(raw)
    if (s.includes('${workspace}')) {
      if (workspace === null) {
        err(p, 'uses ${workspace} but the policy has no workspace', 'set filesystem.workspace')
        return null
      }
      s = s.split('${workspace}').join(workspace)
    }
    if (/\$\{[^}]*\}/.test(s)) {
      err(p, `unknown variable in "${raw}"`, 'allowed: ${workspace} and a leading ~')
      return null
    }
    const l = layerOf(p)
    return path.resolve(l?.dir ?? process.cwd(), s)
  }

  const paths = (key: 'read_only' | 'read_write' | 'executable'): PathEntry[] => {
    const list = (fsIn[key] ?? []) as (string | { path: string; optional?: boolean })[]
    const out: PathEntry[] = []
    list.forEach((item, i) => {
      const p: Path = ['filesystem', key, i]
      const raw = typeof item === 'string' ? item : item.path
      const optional = typeof item === 'string' ? false : item.optional === true
      const abs = expand(raw, p)
      if (abs === null) return
      if (!optional && !fs.existsSync(abs)) {
        err(p, `${abs} does not exist`, 'create it, fix the path, or mark it { path: ..., optional: true }')
        return
      }
      out.push({ path: abs, optional, origin: origin(p) })
    })
    return out
  }
  const readOnly = paths('read_only')
  const readWrite = paths('read_write')
  const executable = paths('executable')

  const home = fsIn.home as 'private' | 'none'
  const tmp = fsIn.tmp as 'private' | 'shared' | 'none'
  if (home === 'private' && workspace === null) err(['filesystem', 'home'], '"private" needs a workspace (the home lives in it)', 'set filesystem.workspace, or home: none')
  if (tmp === 'private' && workspace === null) err(['filesystem', 'tmp'], '"private" needs a workspace (/tmp lives in it)', 'set filesystem.workspace, or tmp: shared | none')

  // network: passed through for the policy engine; shape checked by the schema
  let network: NetworkPolicy
  const net = m.network
  if (net === 'host') network = { mode: 'host' }
  else if (isPlainObject(net)) {
    const presets = (net.presets ?? []) as string[]
    const presetDir = path.join(PROFILES_DIR, 'presets')
    const known = fs.existsSync(presetDir)
      ? fs.readdirSync(presetDir).filter((f) => /\.(ya?ml|json)$/.test(f)).map((f) => f.replace(/\.(ya?ml|json)$/, ''))
      : []
    if (known.length) presets.forEach((name, i) => {
      if (!known.includes(name)) err(['network', 'presets', i], `no preset named "${name}"`, `allowed: ${known.join(', ')}`)
    })
    network = {
      mode: 'proxy',
      presets,
      allow: (net.allow ?? []) as NetRule[],
      deny: (net.deny ?? []) as NetRule[],
      unlisted: (net.unlisted ?? 'deny') as 'ask' | 'deny',
      bind: (net.bind ?? []) as number[],
      connect: (net.connect ?? []) as number[],
      namespace: (net.namespace ?? 'new') as 'new' | 'current',
    }
  } else network = { mode: 'none' }

  // seccomp
  let seccomp: ResolvedPolicy['process']['seccomp'] = null
  if (proc.seccomp !== 'none') {
    const l = layerOf(['process', 'seccomp'])
    try {
      seccomp = loadSeccompProfile(proc.seccomp as string, l?.dir)
    } catch (e) {
      if (!(e instanceof PolicyError)) throw e
      const o = origin(['process', 'seccomp'])
      errors.push(new PolicyError({ file: o.file, line: o.line, field: o.field, problem: `${proc.seccomp as string}: ${e.message}` }))
    }
  }

  const env = (proc.env ?? {}) as { pass?: string[]; set?: Record<string, unknown> }
  const set: Record<string, string> = {}
  for (const [k, v] of Object.entries(env.set ?? {})) {
    const s = String(v)
    set[k] = workspace !== null ? s.split('${workspace}').join(workspace) : s
  }

  const reqAbi = req.landlock_abi
  throwAll(errors)
  return {
    version: 1,
    source: top.file,
    extends: typeof top.data.extends === 'string' ? top.data.extends : 'agent',
    requirements: {
      landlockAbi: typeof reqAbi === 'number' ? reqAbi : null,
      rights: (req.rights ?? []) as string[],
      bestEffort: req.best_effort !== false,
      origins: {
        landlockAbi: origin(['requirements', 'landlock_abi']),
        rights: origin(['requirements', 'rights']),
        bestEffort: origin(['requirements', 'best_effort']),
      },
    },
    filesystem: { workspace, system: fsIn.system === true, readOnly, readWrite, executable, home, tmp },
    network,
    process: {
      seccomp,
      env: { pass: env.pass ?? [], set },
      rlimits: (proc.rlimits ?? {}) as Partial<Record<RlimitName, RlimitValue>>,
      capabilities: 'none',
      others: (proc.others ?? 'visible') as 'hidden' | 'visible' | 'auto',
    },
  }
}

function dropUndefined(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(dropUndefined)
  if (isPlainObject(v)) return Object.fromEntries(Object.entries(v).filter(([, x]) => x !== undefined).map(([k, x]) => [k, dropUndefined(x)]))
  return v
}

function expandHome(p: string): string {
  if (p === '~') return os.homedir()
  if (p.startsWith('~/')) return path.join(os.homedir(), p.slice(2))
  return p
}
