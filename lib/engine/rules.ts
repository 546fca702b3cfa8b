/**
 * Network rule evaluation for the egress gate: pure functions, no I/O.
 *
 * Rule forms (policy `network.allow` / `network.deny`, presets):
 *   "example.com"            exact host name
 *   "*.example.com"          any subdomain, at any depth (not the apex itself)
 *   "*"                      any destination (mostly useful in deny lists)
 *   "example.com:443"        with a port ("host:*" = every port, "host:8000-8100" = a range)
 *   "203.0.113.7", "[2001:db8::1]:443", "10.1.0.0/16", "10.1.0.0/16:5432"   addresses, CIDRs
 *   { host | cidr, ports: [443, "8000-8100"], methods: [GET], paths: ["/v1/"] }
 *
 * Ports: an allow rule without ports allows 80 and 443; a deny rule without ports denies all ports.
 * Methods / paths can only be checked on plain HTTP (absolute-URI requests). A tunnel (CONNECT)
 * hides them, so an allow rule restricted by method or path never allows a tunnel, and a deny
 * rule restricted by method or path denies the whole tunnel (fail closed: deny wins).
 *
 * Decision order: deny rules, then allow rules (policy, presets, session approvals), then the
 * session's operator denials, then the policy default (`unlisted: ask | deny`).
 * Addresses: a name is allowed by host rules only (a CIDR rule never allows a name), then resolved
 * by the gate; every address it resolves to must pass `checkAddress` (deny CIDRs; loopback,
 * link-local, metadata, private and other special ranges and the host's own addresses are refused
 * unless an allow CIDR rule names that range or a smaller one inside it: 0.0.0.0/0 does not count).
 * A CIDR allow rule allows IP-literal destinations inside it (CONNECT 203.0.113.7:443) and opens
 * its range to allowed names.
 */
import { isIP } from 'node:net'
import {
  type Addr,
  type Cidr,
  cidrContains,
  cidrWithin,
  formatIP,
  parseCidr,
  parseIP,
  specialRange,
  unwrap,
} from './ip.js'

export type RuleSpec =
  | string
  | {
      host?: string
      cidr?: string
      ports?: Array<number | string>
      methods?: string[]
      paths?: string[]
    }

export interface PortRange {
  lo: number
  hi: number
}

export interface Rule {
  /** 'host': a name pattern; 'cidr': an address or range (IP literal rules are /32 or /128) */
  kind: 'host' | 'cidr'
  /** lower-case name, without the '*.' of a wildcard; '*' for any */
  host?: string
  wildcard?: boolean
  cidr?: Cidr
  /** null = any port */
  ports: PortRange[] | null
  methods: string[] | null
  paths: string[] | null
  /** where it came from: "policy.yaml:12 network.allow[3]", "preset:npm", "approval:ab12cd" */
  origin: string
  /** the rule as written, for messages */
  text: string
}

export interface CompiledNetwork {
  mode: 'none' | 'host' | 'proxy'
  allow: Rule[]
  deny: Rule[]
  unlisted: 'ask' | 'deny'
  presets: string[]
  bind: number[]
}

export interface Target {
  /** normalized host: lower case, no trailing dot, IPv6 without brackets */
  host: string
  port: number
  /** plain HTTP only */
  method?: string
  /** plain HTTP only: normalized path (dot segments resolved), no query */
  path?: string
  tunnel: boolean
}

export type Action = 'allow' | 'deny' | 'unlisted'

export interface NameDecision {
  action: Action
  rule: Rule | null
  reason: string
}

export class RuleError extends Error {
  constructor(
    message: string,
    public readonly origin: string,
  ) {
    super(`${origin}: ${message}`)
  }
}

const HOST_RE = /^(\*\.)?([a-z0-9_]([a-z0-9_-]{0,62})?)(\.[a-z0-9_]([a-z0-9_-]{0,62})?)*$/

export function normalizeHost(h: string): string {
  let s = h.trim().toLowerCase()
  if (s.startsWith('[') && s.endsWith(']')) s = s.slice(1, -1)
  if (s.endsWith('.') && !isIP(s)) s = s.slice(0, -1)
  return s
}

function parsePort(p: number | string, origin: string): PortRange {
  if (typeof p === 'number') {
    if (!Number.isInteger(p) || p < 1 || p > 65535) throw new RuleError(`port ${p} is not in 1-65535`, origin)
    return { lo: p, hi: p }
  }
  const s = String(p).trim()
  const m = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(s)
  if (!m) throw new RuleError(`port "${s}" is not a number or a range like 8000-8100`, origin)
  const lo = Number(m[1])
  const hi = m[2] ? Number(m[2]) : lo
  if (lo < 1 || hi > 65535 || lo > hi) throw new RuleError(`port range "${s}" is not within 1-65535`, origin)
  return { lo, hi }
}

function parsePortList(s: string, origin: string): PortRange[] | null {
  if (s === '*') return null
  return s.split(',').map((x) => parsePort(x, origin))
}

const DEFAULT_ALLOW_PORTS: PortRange[] = [
  { lo: 80, hi: 80 },
  { lo: 443, hi: 443 },
]

/** Parse one rule. `kind` decides the default ports (allow: 80+443, deny: all). */
export function parseRule(spec: RuleSpec, origin: string, kind: 'allow' | 'deny'): Rule {
  let target: string
  let ports: PortRange[] | null | undefined
  let methods: string[] | null = null
  let paths: string[] | null = null
  let text: string
  let cidrOnly = false
  if (typeof spec === 'string') {
    text = spec
    target = spec.trim()
    if (!target) throw new RuleError('empty rule', origin)
    // split off a port: [v6]:port, v4/host:port, cidr:port
    if (target.startsWith('[')) {
      const close = target.indexOf(']')
      if (close < 0) throw new RuleError(`"${spec}": missing "]"`, origin)
      const rest = target.slice(close + 1)
      if (rest) {
        if (!rest.startsWith(':')) throw new RuleError(`"${spec}": expected ":port" after "]"`, origin)
        ports = parsePortList(rest.slice(1), origin)
      }
      target = target.slice(1, close)
    } else if (isIP(target) !== 6 && !(target.includes('/') && parseCidr(target))) {
      const colon = target.lastIndexOf(':')
      if (colon >= 0) {
        ports = parsePortList(target.slice(colon + 1), origin)
        target = target.slice(0, colon)
      }
    }
  } else if (spec && typeof spec === 'object') {
    text = JSON.stringify(spec)
    if (spec.host && spec.cidr) throw new RuleError('a rule has either host or cidr, not both', origin)
    if (!spec.host && !spec.cidr) throw new RuleError('a rule object needs host or cidr', origin)
    target = String(spec.host ?? spec.cidr).trim()
    cidrOnly = !!spec.cidr
    if (spec.ports !== undefined) {
      if (!Array.isArray(spec.ports) || spec.ports.length === 0)
        throw new RuleError('ports must be a non-empty list', origin)
      ports = spec.ports.map((p) => parsePort(p, origin))
    }
    if (spec.methods !== undefined) {
      if (!Array.isArray(spec.methods) || spec.methods.length === 0)
        throw new RuleError('methods must be a non-empty list', origin)
      methods = spec.methods.map((m) => {
        const u = String(m).toUpperCase()
        if (!/^[A-Z]+$/.test(u)) throw new RuleError(`method "${m}" is not an HTTP method`, origin)
        return u
      })
    }
    if (spec.paths !== undefined) {
      if (!Array.isArray(spec.paths) || spec.paths.length === 0)
        throw new RuleError('paths must be a non-empty list', origin)
      paths = spec.paths.map((p) => {
        const s = String(p)
        if (!s.startsWith('/')) throw new RuleError(`path "${s}" must start with "/"`, origin)
        return normalizePath(s)
      })
    }
    const extra = Object.keys(spec).filter((k) => !['host', 'cidr', 'ports', 'methods', 'paths'].includes(k))
    if (extra.length) throw new RuleError(`unknown key ${extra.map((k) => `"${k}"`).join(', ')} in rule (expected host, cidr, ports, methods, paths)`, origin)
  } else {
    throw new RuleError(`a rule is a string or an object, got ${JSON.stringify(spec)}`, origin)
  }
  const resolvedPorts = ports === undefined ? (kind === 'allow' ? DEFAULT_ALLOW_PORTS : null) : ports

  const cidr = parseCidr(target.startsWith('[') ? target.slice(1, -1) : target)
  if (cidr) {
    return { kind: 'cidr', cidr, ports: resolvedPorts, methods, paths, origin, text }
  }
  if (cidrOnly) throw new RuleError(`"${target}" is not an address or CIDR range`, origin)
  const host = normalizeHost(target)
  if (host === '*') return { kind: 'host', host: '*', wildcard: true, ports: resolvedPorts, methods, paths, origin, text }
  if (!HOST_RE.test(host) || host.length > 253)
    throw new RuleError(
      `"${target}" is not a host name, "*.domain" pattern, address or CIDR (a wildcard may only be a leading "*.")`,
      origin,
    )
  if (host.startsWith('*.')) {
    return { kind: 'host', host: host.slice(2), wildcard: true, ports: resolvedPorts, methods, paths, origin, text }
  }
  return { kind: 'host', host, wildcard: false, ports: resolvedPorts, methods, paths, origin, text }
}

/** Resolve "." and ".." segments and collapse "//"; percent-encoded dots are decoded first. */
export function normalizePath(p: string): string {
  let s = p
  const q = s.search(/[?#]/)
  if (q >= 0) s = s.slice(0, q)
  s = s.replace(/%2e/gi, '.')
  const out: string[] = []
  for (const seg of s.split('/')) {
    if (seg === '' || seg === '.') continue
    if (seg === '..') out.pop()
    else out.push(seg)
  }
  const trailing = s.endsWith('/') && out.length > 0 ? '/' : ''
  return '/' + out.join('/') + trailing
}

function portMatches(r: Rule, port: number): boolean {
  if (!r.ports) return true
  for (const p of r.ports) if (port >= p.lo && port <= p.hi) return true
  return false
}

function pathPrefix(prefix: string, path: string): boolean {
  if (prefix === '/') return true
  if (prefix.endsWith('/')) return path.startsWith(prefix) || path === prefix.slice(0, -1)
  return path === prefix || path.startsWith(prefix + '/')
}

/** Method/path part. Tunnels hide both: allow rules restricted by them never match a tunnel,
 * deny rules restricted by them always do (fail closed). */
function httpMatches(r: Rule, t: Target, deny: boolean): boolean {
  if (!r.methods && !r.paths) return true
  if (t.tunnel || t.method === undefined) return deny
  if (r.methods && !r.methods.includes(t.method.toUpperCase())) return false
  if (r.paths) {
    const p = t.path ?? '/'
    if (!r.paths.some((pre) => pathPrefix(pre, p))) return false
  }
  return true
}

export function hostMatches(r: Rule, host: string): boolean {
  if (r.kind !== 'host') return false
  if (r.host === '*') return true
  if (r.wildcard) return host.endsWith('.' + r.host!) && host.length > r.host!.length + 1
  return host === r.host
}

/** Does rule r match the *name* (or IP literal) of the target? */
function nameMatches(r: Rule, t: Target, literal: Addr | null): boolean {
  if (r.kind === 'host') {
    if (r.host === '*') return true
    return literal === null && hostMatches(r, t.host)
  }
  return literal !== null && cidrContains(r.cidr!, unwrap(literal))
}

function describeRule(r: Rule): string {
  return `${r.text} (${r.origin})`
}

export interface SessionRules {
  allow: Rule[]
  /** operator denials of unlisted destinations: consulted only when nothing else decided */
  deny: Rule[]
}

/**
 * First phase: decide on the name (or IP literal) before any DNS resolution.
 * 'unlisted' means no rule decided; the caller applies `unlisted` (ask or deny) unless an allow
 * CIDR rule matches an address the name resolves to (see checkAddress).
 */
export function decideName(net: CompiledNetwork, session: SessionRules, t: Target): NameDecision {
  if (net.mode === 'none') return { action: 'deny', rule: null, reason: 'the policy says network: none' }
  const literal = parseIP(t.host)
  for (const r of net.deny) {
    if (nameMatches(r, t, literal) && portMatches(r, t.port) && httpMatches(r, t, true)) {
      return { action: 'deny', rule: r, reason: `denied by rule ${describeRule(r)}` }
    }
  }
  if (net.mode === 'host') return { action: 'allow', rule: null, reason: 'the policy says network: host' }
  for (const list of [net.allow, session.allow]) {
    for (const r of list) {
      if (nameMatches(r, t, literal) && portMatches(r, t.port) && httpMatches(r, t, false)) {
        return { action: 'allow', rule: r, reason: `allowed by rule ${describeRule(r)}` }
      }
    }
  }
  for (const r of session.deny) {
    if (nameMatches(r, t, literal) && portMatches(r, t.port)) {
      return { action: 'deny', rule: r, reason: `denied earlier by the operator (${r.origin})` }
    }
  }
  return { action: 'unlisted', rule: null, reason: 'no rule allows it' }
}

export interface AddressDecision {
  action: Action
  rule: Rule | null
  reason: string
}

/**
 * Second phase: check one resolved address (or the IP literal) against CIDR rules and the
 * special ranges. `hostOwn` says whether the address belongs to this host.
 * `nameAction` is the outcome of decideName; an 'unlisted' name may become allowed by a CIDR rule.
 */
export function checkAddress(
  net: CompiledNetwork,
  session: SessionRules,
  t: Target,
  addr: Addr,
  hostOwn: boolean,
  name: NameDecision,
): AddressDecision {
  const a = unwrap(addr)
  const shown = formatIP(addr)
  for (const r of net.deny) {
    if (r.kind === 'cidr' && cidrContains(r.cidr!, a) && portMatches(r, t.port) && httpMatches(r, t, true)) {
      return { action: 'deny', rule: r, reason: `${t.host} resolves to ${shown}, denied by rule ${describeRule(r)}` }
    }
  }
  if (name.action !== 'allow') return { action: name.action, rule: name.rule, reason: name.reason }
  const sp = specialRange(a)
  if (sp || hostOwn) {
    // only an allow rule naming this range (or a narrower one inside it; for the host's own
    // addresses: the address itself) opens it
    const opener = [...net.allow, ...session.allow].find(
      (r) =>
        r.kind === 'cidr' &&
        cidrContains(r.cidr!, a) &&
        (sp ? cidrWithin(r.cidr!, sp.cidr) : r.cidr!.bits === 128) &&
        portMatches(r, t.port) &&
        httpMatches(r, t, false),
    )
    if (!opener) {
      const what = hostOwn && !sp ? "an address of the engine's own host" : `a ${sp!.kind} address${hostOwn ? " of the engine's own host" : ''}`
      return {
        action: 'deny',
        rule: null,
        reason: `${t.host} resolves to ${shown}, ${what}; only an allow rule naming that range (cidr) opens it`,
      }
    }
  }
  return { action: 'allow', rule: name.rule, reason: name.reason }
}

/** Whether any allow rule is a CIDR (then an unlisted name is resolved before asking). */
export function hasAllowCidr(net: CompiledNetwork, session: SessionRules): boolean {
  return net.allow.some((r) => r.kind === 'cidr') || session.allow.some((r) => r.kind === 'cidr')
}

export function ruleToString(r: Rule): string {
  return r.text
}
