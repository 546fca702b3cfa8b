/**
 * router.yaml: schema, loading with file:line errors, and compilation into the immutable
 * CompiledConfig the server works from. A reload builds a new CompiledConfig; requests in flight
 * keep the one they started with, so they finish on the old routes.
 *
 * Validation uses ajv (JSON Schema); positions come from the `yaml` document's source ranges.
 */
import { readFileSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { isAbsolute, resolve, dirname } from 'node:path'
import { Ajv, type ErrorObject } from 'ajv'
import { parseDocument, LineCounter, isMap, isSeq, isPair, isScalar, type Document, type Node } from 'yaml'
import { resolveKey, type KeyRef, type KeyStore } from './keys.js'

export type ApiFamily = 'openai' | 'anthropic'
export type Provider = 'openai' | 'anthropic' | 'openai-compatible'
export type AuthStyle = 'bearer' | 'x-api-key' | 'api-key' | 'none'
export type FallbackCondition = '429' | '5xx' | 'connect' | 'timeout'

export interface Limits {
  /** Requests per minute (sliding 60 s window). */
  rpm?: number
  /** Tokens (input + output) per minute (sliding 60 s window). */
  tpm?: number
  /** Spend cap in USD per period, priced with the `prices` table. */
  spend?: { usd: number; period: 'hour' | 'day' | 'week' | 'month' }
}

export interface Price {
  /** USD per million input tokens. */
  input: number
  /** USD per million output tokens. */
  output: number
}

export interface Target {
  provider: Provider
  family: ApiFamily
  /** Provider API root that replaces the client's `/v1`: https://api.openai.com/v1 */
  baseUrl: URL
  origin: string
  /** Path prefix of baseUrl without a trailing slash ("/v1"). */
  basePath: string
  model: string
  keyRef: KeyRef | null
  /** The resolved key (null: none configured / not found; keyError says why). */
  key: string | null
  keyError: string | null
  auth: AuthStyle
  timeoutMs: number
  headers: Record<string, string>
  /** Ask an OpenAI-API upstream for usage in streams (stream_options.include_usage). */
  streamUsage: boolean
  /** Display name for audit/metrics: "<route>[i] provider/model". */
  label: string
}

export interface Route {
  name: string
  models: string[]
  family: ApiFamily
  targets: Target[]
  fallbackOn: Set<FallbackCondition>
  isDefault: boolean
}

export interface ListenerSpec {
  listen: string
  sandbox?: string
  identityHeader?: string
}

export interface SandboxSpec {
  id: string
  addresses: string[]
  limits: Limits
}

export interface CompiledConfig {
  file: string
  hash: string
  loadedAt: number
  routes: Route[]
  byModel: Map<string, Route>
  defaultRoute: Route | null
  sandboxes: Map<string, SandboxSpec>
  /** Source address (exact, normalized) -> sandbox id. */
  addressMap: Map<string, string>
  /** CIDR entries, checked when no exact match. */
  cidrMap: Array<{ net: bigint; bits: number; v6: boolean; id: string }>
  unmapped: 'reject' | 'by-address'
  defaultLimits: Limits
  prices: Map<string, Price>
  listeners: ListenerSpec[]
  maxBodyBytes: number
  auditPrompts: boolean
  /** fdatasync interval of the audit file in ms (0: every call waits for its fdatasync) */
  auditSyncMs: number
  /** Every resolved key in this config, for redaction. */
  keys: string[]
}

export class ConfigError extends Error {
  constructor(
    message: string,
    readonly file: string,
    readonly problems: Array<{ line: number; col: number; message: string }>,
  ) {
    super(message)
    this.name = 'ConfigError'
  }
}

const limitsSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    rpm: { type: 'integer', minimum: 1 },
    tpm: { type: 'integer', minimum: 1 },
    spend: {
      type: 'object',
      additionalProperties: false,
      required: ['usd', 'period'],
      properties: {
        usd: { type: 'number', exclusiveMinimum: 0 },
        period: { enum: ['hour', 'day', 'week', 'month'] },
      },
    },
  },
}

const keyRefSchema = {
  type: 'object',
  additionalProperties: false,
  minProperties: 1,
  maxProperties: 1,
  properties: {
    env: { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_]*$' },
    file: { type: 'string', minLength: 1 },
    store: { type: 'string', pattern: '^[A-Za-z0-9_.-]+$' },
  },
}

export const routerConfigSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['routes'],
  properties: {
    version: { const: 1 },
    max_body_bytes: { type: 'integer', minimum: 1024 },
    unmapped: { enum: ['reject', 'by-address'] },
    defaults: {
      type: 'object',
      additionalProperties: false,
      properties: {
        limits: limitsSchema,
        timeout_ms: { type: 'integer', minimum: 1 },
        fallback_on: { type: 'array', items: { enum: ['429', 429, '5xx', 'connect', 'timeout'] }, uniqueItems: true },
      },
    },
    audit: {
      type: 'object',
      additionalProperties: false,
      properties: { prompts: { type: 'boolean' }, sync_ms: { type: 'integer', minimum: 0, maximum: 10000 } },
    },
    prices: {
      type: 'object',
      additionalProperties: {
        type: 'object',
        additionalProperties: false,
        required: ['input', 'output'],
        properties: { input: { type: 'number', minimum: 0 }, output: { type: 'number', minimum: 0 } },
      },
    },
    listeners: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['listen'],
        properties: {
          listen: { type: 'string', minLength: 1 },
          sandbox: { type: 'string', minLength: 1 },
          identity_header: { type: 'string', pattern: '^[A-Za-z0-9-]+$' },
        },
      },
    },
    sandboxes: {
      type: 'object',
      additionalProperties: {
        type: 'object',
        additionalProperties: false,
        properties: {
          addresses: { type: 'array', items: { type: 'string', minLength: 1 } },
          limits: limitsSchema,
        },
      },
    },
    routes: {
      type: 'array',
      minItems: 1,
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['name', 'targets'],
        properties: {
          name: { type: 'string', pattern: '^[A-Za-z0-9_.:/-]+$' },
          models: { type: 'array', items: { type: 'string', minLength: 1 }, uniqueItems: true },
          default: { type: 'boolean' },
          fallback_on: { type: 'array', items: { enum: ['429', 429, '5xx', 'connect', 'timeout'] }, uniqueItems: true },
          targets: {
            type: 'array',
            minItems: 1,
            items: {
              type: 'object',
              additionalProperties: false,
              required: ['provider', 'base_url', 'model'],
              properties: {
                provider: { enum: ['openai', 'anthropic', 'openai-compatible'] },
                base_url: { type: 'string', pattern: '^https?://' },
                model: { type: 'string', minLength: 1 },
                key: keyRefSchema,
                auth: { enum: ['bearer', 'x-api-key', 'api-key', 'none'] },
                timeout_ms: { type: 'integer', minimum: 1 },
                headers: { type: 'object', additionalProperties: { type: 'string' } },
                stream_usage: { type: 'boolean' },
              },
            },
          },
        },
      },
    },
  },
}

const ajv = new Ajv({ allErrors: true, strict: false })
const validateSchema = ajv.compile(routerConfigSchema)

interface RawLimits {
  rpm?: number
  tpm?: number
  spend?: { usd: number; period: 'hour' | 'day' | 'week' | 'month' }
}
interface RawTarget {
  provider: Provider
  base_url: string
  model: string
  key?: KeyRef
  auth?: AuthStyle
  timeout_ms?: number
  headers?: Record<string, string>
  stream_usage?: boolean
}
interface RawConfig {
  version?: 1
  max_body_bytes?: number
  unmapped?: 'reject' | 'by-address'
  defaults?: { limits?: RawLimits; timeout_ms?: number; fallback_on?: FallbackCondition[] }
  audit?: { prompts?: boolean; sync_ms?: number }
  prices?: Record<string, Price>
  listeners?: Array<{ listen: string; sandbox?: string; identity_header?: string }>
  sandboxes?: Record<string, { addresses?: string[]; limits?: RawLimits }>
  routes: Array<{
    name: string
    models?: string[]
    default?: boolean
    fallback_on?: FallbackCondition[]
    targets: RawTarget[]
  }>
}

/** Map a JSON path into the YAML document and return the node's 1-based line/col. */
function positionOf(doc: Document, lc: LineCounter, path: Array<string | number>, keyOf?: string): { line: number; col: number } {
  let node: unknown = doc.contents
  let best: { range?: [number, number, number] | null } | null = node as Node
  for (const seg of path) {
    if (isMap(node)) {
      const pair = node.items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === String(seg))
      if (!pair) break
      node = pair.value
      best = (pair.value as Node) ?? (pair.key as Node)
    } else if (isSeq(node)) {
      const item = node.items[Number(seg)]
      if (item === undefined) break
      node = item
      best = item as Node
    } else break
  }
  if (keyOf !== undefined && isMap(node)) {
    const pair = node.items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === keyOf)
    if (pair && isScalar(pair.key)) best = pair.key as Node
  }
  const off = best?.range?.[0] ?? 0
  const pos = lc.linePos(off)
  return { line: pos.line, col: pos.col }
}

function splitPointer(p: string): Array<string | number> {
  if (!p) return []
  return p
    .split('/')
    .slice(1)
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'))
    .map((s) => (/^\d+$/.test(s) ? Number(s) : s))
}

function describe(e: ErrorObject): { message: string; keyOf?: string } {
  const where = e.instancePath ? e.instancePath.slice(1).replace(/\//g, '.') : '(top level)'
  switch (e.keyword) {
    case 'additionalProperties': {
      const k = (e.params as { additionalProperty: string }).additionalProperty
      return { message: `unknown field "${k}" in ${where}`, keyOf: k }
    }
    case 'required':
      return { message: `${where}: missing required field "${(e.params as { missingProperty: string }).missingProperty}"` }
    case 'enum':
      return { message: `${where}: must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ')}` }
    case 'type':
      if (/\/key$/.test(e.instancePath)) return { message: `${where}: a key is never written inline in router.yaml; use key: {store: NAME} (after \`cordon keys set NAME\`), {env: VAR} or {file: PATH}` }
      return { message: `${where}: ${e.message}` }
    case 'minProperties':
    case 'maxProperties':
      if (/\/key$/.test(e.instancePath)) return { message: `${where}: a key reference is exactly one of {env: NAME}, {file: PATH} or {store: NAME}` }
      return { message: `${where}: ${e.message}` }
    default:
      return { message: `${where}: ${e.message}` }
  }
}

function normAddr(a: string): string {
  return a.startsWith('::ffff:') && a.includes('.') ? a.slice(7) : a.toLowerCase()
}

function parseIp(a: string): { v: bigint; v6: boolean } | null {
  a = normAddr(a)
  if (/^\d+\.\d+\.\d+\.\d+$/.test(a)) {
    const parts = a.split('.').map(Number)
    if (parts.some((x) => x > 255)) return null
    return { v: BigInt(((parts[0]! << 24) >>> 0) + (parts[1]! << 16) + (parts[2]! << 8) + parts[3]!), v6: false }
  }
  if (a.includes(':')) {
    const [head, tail] = a.split('::') as [string, string | undefined]
    const h = head ? head.split(':') : []
    const t = tail !== undefined && tail !== '' ? tail.split(':') : []
    if (tail === undefined && h.length !== 8) return null
    const groups = [...h, ...Array(8 - h.length - t.length).fill('0'), ...t]
    if (groups.length !== 8) return null
    let v = 0n
    for (const g of groups) {
      if (!/^[0-9a-f]{1,4}$/.test(g)) return null
      v = (v << 16n) | BigInt(parseInt(g, 16))
    }
    return { v, v6: true }
  }
  return null
}

export function matchCidr(cfg: CompiledConfig, addr: string): string | undefined {
  const exact = cfg.addressMap.get(normAddr(addr))
  if (exact) return exact
  if (!cfg.cidrMap.length) return undefined
  const ip = parseIp(addr)
  if (!ip) return undefined
  for (const c of cfg.cidrMap) {
    if (c.v6 !== ip.v6) continue
    const width = ip.v6 ? 128n : 32n
    const shift = width - BigInt(c.bits)
    if (ip.v >> shift === c.net >> shift) return c.id
  }
  return undefined
}

export interface LoadOptions {
  keyStore?: KeyStore | null
  env?: NodeJS.ProcessEnv
}

/** Parse and validate a router config text. Throws ConfigError with file:line problems. */
export function compileConfig(text: string, file: string, opts: LoadOptions = {}): CompiledConfig {
  const lc = new LineCounter()
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true })
  const problems: Array<{ line: number; col: number; message: string }> = []
  for (const err of doc.errors) {
    const pos = lc.linePos(err.pos[0])
    problems.push({ line: pos.line, col: pos.col, message: `YAML syntax: ${err.message.split('\n')[0]}` })
  }
  if (problems.length) throw configError(file, problems)
  const raw = doc.toJS() as RawConfig
  if (!validateSchema(raw)) {
    const seen = new Set<string>()
    for (const e of validateSchema.errors ?? []) {
      // oneOf/anyOf noise is not used in the schema; report each error once
      const d = describe(e)
      const pos = positionOf(doc, lc, splitPointer(e.instancePath), d.keyOf)
      const k = `${pos.line}:${d.message}`
      if (seen.has(k)) continue
      seen.add(k)
      problems.push({ ...pos, message: d.message })
    }
    throw configError(file, problems)
  }

  const at = (path: Array<string | number>, keyOf?: string) => positionOf(doc, lc, path, keyOf)
  const dir = dirname(resolve(file))
  const defaults = raw.defaults ?? {}
  const defTimeout = defaults.timeout_ms ?? 120_000
  const defFallback = (defaults.fallback_on ?? ['429', '5xx', 'connect', 'timeout']).map((x) => String(x) as FallbackCondition)

  const routes: Route[] = []
  const byModel = new Map<string, Route>()
  const keys = new Set<string>()
  let defaultRoute: Route | null = null
  const names = new Set<string>()
  raw.routes.forEach((r, ri) => {
    if (names.has(r.name)) problems.push({ ...at(['routes', ri, 'name']), message: `route name "${r.name}" is used twice` })
    names.add(r.name)
    const targets: Target[] = []
    let family: ApiFamily | null = null
    r.targets.forEach((t, ti) => {
      const fam: ApiFamily = t.provider === 'anthropic' ? 'anthropic' : 'openai'
      if (family && fam !== family) {
        problems.push({
          ...at(['routes', ri, 'targets', ti, 'provider']),
          message: `route "${r.name}": target ${ti} speaks the ${fam} API but target 0 speaks ${family}; a fallback chain must stay within one API family (the router does not translate between APIs)`,
        })
      }
      family ??= fam
      let url: URL
      try {
        url = new URL(t.base_url)
      } catch {
        problems.push({ ...at(['routes', ri, 'targets', ti, 'base_url']), message: `base_url "${t.base_url}" is not a valid URL` })
        return
      }
      if (url.username || url.password || url.search || url.hash) {
        problems.push({ ...at(['routes', ri, 'targets', ti, 'base_url']), message: `base_url must not carry credentials, a query or a fragment; put keys in key: {store|env|file}` })
      }
      if (t.headers) {
        for (const h of Object.keys(t.headers)) {
          if (/^(authorization|x-api-key|api-key|proxy-authorization|cookie|host|content-length|transfer-encoding|connection)$/i.test(h)) {
            problems.push({ ...at(['routes', ri, 'targets', ti, 'headers'], h), message: `header "${h}" cannot be set in headers: (credentials come from key:, framing headers from the router)` })
          }
        }
      }
      let key: string | null = null
      let keyError: string | null = null
      if (t.key) {
        const kr = t.key.file && !isAbsolute(t.key.file) ? { file: resolve(dir, t.key.file) } : t.key
        const res = resolveKey(kr, { store: opts.keyStore ?? null, env: opts.env ?? process.env })
        key = res.key
        keyError = res.error
        if (key) keys.add(key)
      }
      const auth: AuthStyle = t.auth ?? (t.provider === 'anthropic' ? 'x-api-key' : 'bearer')
      targets.push({
        provider: t.provider,
        family: fam,
        baseUrl: url,
        origin: url.origin,
        basePath: url.pathname.replace(/\/+$/, ''),
        model: t.model,
        keyRef: t.key ?? null,
        key,
        keyError,
        auth,
        timeoutMs: t.timeout_ms ?? defTimeout,
        headers: t.headers ?? {},
        streamUsage: t.stream_usage ?? true,
        label: `${r.name}[${ti}] ${t.provider}/${t.model}`,
      })
    })
    const route: Route = {
      name: r.name,
      models: r.models ?? [r.name],
      family: family ?? 'openai',
      targets,
      fallbackOn: new Set(r.fallback_on ? r.fallback_on.map((x) => String(x) as FallbackCondition) : defFallback),
      isDefault: !!r.default,
    }
    for (const [mi, m] of route.models.entries()) {
      const prev = byModel.get(m)
      if (prev) problems.push({ ...at(['routes', ri, 'models', mi]), message: `model alias "${m}" is already served by route "${prev.name}"` })
      else byModel.set(m, route)
    }
    if (route.isDefault) {
      if (defaultRoute) problems.push({ ...at(['routes', ri, 'default']), message: `only one route may be the default; "${defaultRoute.name}" already is` })
      else defaultRoute = route
    }
    routes.push(route)
  })

  const sandboxes = new Map<string, SandboxSpec>()
  const addressMap = new Map<string, string>()
  const cidrMap: CompiledConfig['cidrMap'] = []
  for (const [id, s] of Object.entries(raw.sandboxes ?? {})) {
    const addresses = s.addresses ?? []
    addresses.forEach((a, ai) => {
      const [ipPart, bitsPart] = a.split('/') as [string, string | undefined]
      const ip = parseIp(ipPart)
      if (!ip) {
        problems.push({ ...at(['sandboxes', id, 'addresses', ai]), message: `"${a}" is not an IP address or CIDR` })
        return
      }
      const max = ip.v6 ? 128 : 32
      const bits = bitsPart === undefined ? max : Number(bitsPart)
      if (!Number.isInteger(bits) || bits < 0 || bits > max) {
        problems.push({ ...at(['sandboxes', id, 'addresses', ai]), message: `"${a}": prefix length must be 0..${max}` })
        return
      }
      if (bits === max) {
        const prev = addressMap.get(normAddr(ipPart))
        if (prev && prev !== id) problems.push({ ...at(['sandboxes', id, 'addresses', ai]), message: `address ${a} is already mapped to sandbox "${prev}"` })
        addressMap.set(normAddr(ipPart), id)
      } else cidrMap.push({ net: ip.v, bits, v6: ip.v6, id })
    })
    sandboxes.set(id, { id, addresses, limits: { ...(defaults.limits ?? {}), ...(s.limits ?? {}) } })
  }
  cidrMap.sort((a, b) => b.bits - a.bits)

  const listeners: ListenerSpec[] = []
  ;(raw.listeners ?? []).forEach((l, li) => {
    if (l.sandbox && l.identity_header) problems.push({ ...at(['listeners', li]), message: 'a listener has either a fixed sandbox: or an identity_header:, not both' })
    if (l.sandbox && !sandboxes.has(l.sandbox)) problems.push({ ...at(['listeners', li, 'sandbox']), message: `sandbox "${l.sandbox}" is not declared under sandboxes:` })
    listeners.push({ listen: l.listen, sandbox: l.sandbox, identityHeader: l.identity_header?.toLowerCase() })
  })

  const prices = new Map<string, Price>(Object.entries(raw.prices ?? {}))
  // a spend cap without a price for a target's model cannot be enforced: say so at load time
  const anySpend = [...sandboxes.values()].some((s) => s.limits.spend) || !!defaults.limits?.spend
  if (anySpend) {
    raw.routes.forEach((r, ri) =>
      r.targets.forEach((t, ti) => {
        if (!prices.has(t.model)) problems.push({ ...at(['routes', ri, 'targets', ti, 'model']), message: `a spend cap is configured but prices: has no entry for model "${t.model}"; add prices.${t.model}: {input: USD_PER_MTOK, output: USD_PER_MTOK}` })
      }),
    )
  }

  if (problems.length) throw configError(file, problems)
  return {
    file,
    hash: createHash('sha256').update(text).digest('hex'),
    loadedAt: Date.now(),
    routes,
    byModel,
    defaultRoute,
    sandboxes,
    addressMap,
    cidrMap,
    unmapped: raw.unmapped ?? 'by-address',
    defaultLimits: defaults.limits ?? {},
    prices,
    listeners,
    maxBodyBytes: raw.max_body_bytes ?? 10 * 1024 * 1024,
    auditPrompts: raw.audit?.prompts ?? false,
    auditSyncMs: raw.audit?.sync_ms ?? 100,
    keys: [...keys],
  }
}

function configError(file: string, problems: Array<{ line: number; col: number; message: string }>): ConfigError {
  problems.sort((a, b) => a.line - b.line || a.col - b.col)
  const text = problems.map((p) => `${file}:${p.line}:${p.col}: ${p.message}`).join('\n')
  return new ConfigError(`invalid router config (the previous config, if any, stays in force):\n${text}`, file, problems)
}

export function loadConfigFile(file: string, opts: LoadOptions = {}): CompiledConfig {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (e) {
    const err = e as NodeJS.ErrnoException
    throw new ConfigError(`cannot read router config ${file}: ${err.code ?? err.message}; pass --config PATH to an existing router.yaml`, file, [])
  }
  return compileConfig(text, file, opts)
}

export function hashText(text: string | Buffer): string {
  return createHash('sha256').update(text).digest('hex')
}
