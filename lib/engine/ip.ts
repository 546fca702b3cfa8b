/**
 * IP address and CIDR arithmetic for the egress gate, on 16-byte buffers (IPv4 stored as
 * IPv4-mapped IPv6, so one code path serves both families).
 *
 * Written by hand because node:net's BlockList cannot tell *which* range matched (we need the
 * label for the operator's reason) and does not unwrap IPv4-mapped / NAT64 addresses.
 */
import { isIP } from 'node:net'

export type Addr = Uint8Array // 16 bytes

export function parseIPv4(s: string): Addr | null {
  const parts = s.split('.')
  if (parts.length !== 4) return null
  const out = new Uint8Array(16)
  out[10] = 0xff
  out[11] = 0xff
  for (let i = 0; i < 4; i++) {
    const p = parts[i]!
    if (!/^\d{1,3}$/.test(p)) return null
    const n = Number(p)
    if (n > 255) return null
    out[12 + i] = n
  }
  return out
}

export function parseIPv6(input: string): Addr | null {
  let s = input
  const pct = s.indexOf('%') // zone id: fe80::1%eth0
  if (pct >= 0) s = s.slice(0, pct)
  if (isIP(s) !== 6) return null
  const out = new Uint8Array(16)
  // embedded IPv4 tail
  let tail: Addr | null = null
  const lastColon = s.lastIndexOf(':')
  if (s.indexOf('.', lastColon) > 0) {
    tail = parseIPv4(s.slice(lastColon + 1))
    if (!tail) return null
    s = s.slice(0, lastColon + 1) + '0:0'
  }
  const dbl = s.indexOf('::')
  let head: string[]
  let rest: string[]
  if (dbl >= 0) {
    head = s.slice(0, dbl) ? s.slice(0, dbl).split(':') : []
    rest = s.slice(dbl + 2) ? s.slice(dbl + 2).split(':') : []
  } else {
    head = s.split(':')
    rest = []
  }
  const groups = new Array<number>(8).fill(0)
  head.forEach((g, i) => (groups[i] = parseInt(g, 16)))
  rest.forEach((g, i) => (groups[8 - rest.length + i] = parseInt(g, 16)))
  for (let i = 0; i < 8; i++) {
    out[i * 2] = (groups[i]! >> 8) & 0xff
    out[i * 2 + 1] = groups[i]! & 0xff
  }
  if (tail) {
    out[12] = tail[12]!
    out[13] = tail[13]!
    out[14] = tail[14]!
    out[15] = tail[15]!
  }
  return out
}

export function parseIP(s: string): Addr | null {
  const v = isIP(s.replace(/%.*$/, ''))
  if (v === 4) return parseIPv4(s)
  if (v === 6) return parseIPv6(s)
  return null
}

export function isV4Mapped(a: Addr): boolean {
  for (let i = 0; i < 10; i++) if (a[i] !== 0) return false
  return a[10] === 0xff && a[11] === 0xff
}

export function formatIP(a: Addr): string {
  if (isV4Mapped(a)) return `${a[12]}.${a[13]}.${a[14]}.${a[15]}`
  const g: string[] = []
  for (let i = 0; i < 8; i++) g.push(((a[i * 2]! << 8) | a[i * 2 + 1]!).toString(16))
  // compress the longest run of zeros
  let best = -1
  let bestLen = 0
  for (let i = 0; i < 8; ) {
    if (g[i] !== '0') {
      i++
      continue
    }
    let j = i
    while (j < 8 && g[j] === '0') j++
    if (j - i > bestLen && j - i > 1) {
      best = i
      bestLen = j - i
    }
    i = j
  }
  if (best < 0) return g.join(':')
  return `${g.slice(0, best).join(':')}::${g.slice(best + bestLen).join(':')}`
}

export interface Cidr {
  addr: Addr
  /** prefix length over the 128-bit form (IPv4 /n is stored as /96+n) */
  bits: number
  text: string
}

/** "10.0.0.0/8", "2001:db8::/32", or a bare address (host route). Returns null if not a CIDR. */
export function parseCidr(s: string): Cidr | null {
  const slash = s.indexOf('/')
  const ipPart = slash >= 0 ? s.slice(0, slash) : s
  const a = parseIP(ipPart)
  if (!a) return null
  const v4 = isIP(ipPart) === 4
  let bits = v4 ? 32 : 128
  if (slash >= 0) {
    const b = s.slice(slash + 1)
    if (!/^\d{1,3}$/.test(b)) return null
    bits = Number(b)
    if (bits > (v4 ? 32 : 128)) return null
  }
  const full = v4 ? bits + 96 : bits
  // canonicalize the network address (zero host bits)
  const net = new Uint8Array(a)
  for (let i = 0; i < 128; i++) {
    if (i >= full) net[i >> 3]! &= ~(0x80 >> (i & 7))
  }
  return { addr: net, bits: full, text: s }
}

export function cidrContains(c: Cidr, a: Addr): boolean {
  const whole = c.bits >> 3
  for (let i = 0; i < whole; i++) if (c.addr[i] !== a[i]) return false
  const rem = c.bits & 7
  if (rem === 0) return true
  const mask = (0xff << (8 - rem)) & 0xff
  return (c.addr[whole]! & mask) === (a[whole]! & mask)
}

/** true when every address of `inner` lies inside `outer` */
export function cidrWithin(inner: Cidr, outer: Cidr): boolean {
  return inner.bits >= outer.bits && cidrContains(outer, inner.addr)
}

export type SpecialKind =
  | 'unspecified'
  | 'loopback'
  | 'link-local'
  | 'metadata'
  | 'private'
  | 'shared (CGNAT)'
  | 'multicast'
  | 'reserved'
  | 'documentation'
  | 'benchmarking'

interface SpecialRange {
  cidr: Cidr
  kind: SpecialKind
}

function sr(text: string, kind: SpecialKind): SpecialRange {
  const c = parseCidr(text)
  if (!c) throw new Error(`bad built-in range ${text}`)
  return { cidr: c, kind }
}

/**
 * Destinations that an allowed *name* must never lead to unless a rule names the range (or a
 * smaller range inside it) explicitly. Order matters: the most specific label comes first.
 */
export const SPECIAL_RANGES: readonly SpecialRange[] = [
  // cloud metadata services (AWS/GCP/Azure/OpenStack, AWS IPv6, Alibaba, Oracle)
  sr('169.254.169.254/32', 'metadata'),
  sr('169.254.170.2/32', 'metadata'), // ECS task metadata
  sr('fd00:ec2::254/128', 'metadata'),
  sr('100.100.100.200/32', 'metadata'),
  sr('192.0.0.192/32', 'metadata'),
  sr('0.0.0.0/8', 'unspecified'),
  sr('127.0.0.0/8', 'loopback'),
  sr('169.254.0.0/16', 'link-local'),
  sr('10.0.0.0/8', 'private'),
  sr('172.16.0.0/12', 'private'),
  sr('192.168.0.0/16', 'private'),
  sr('100.64.0.0/10', 'shared (CGNAT)'),
  sr('192.0.0.0/24', 'reserved'),
  sr('192.0.2.0/24', 'documentation'),
  sr('198.51.100.0/24', 'documentation'),
  sr('203.0.113.0/24', 'documentation'),
  sr('198.18.0.0/15', 'benchmarking'),
  sr('224.0.0.0/4', 'multicast'),
  sr('240.0.0.0/4', 'reserved'), // includes 255.255.255.255
  sr('::/128', 'unspecified'),
  sr('::1/128', 'loopback'),
  sr('fe80::/10', 'link-local'),
  sr('fc00::/7', 'private'),
  sr('ff00::/8', 'multicast'),
  sr('2001:db8::/32', 'documentation'),
  sr('100::/64', 'reserved'),
  sr('::/96', 'reserved'), // deprecated IPv4-compatible
]

const NAT64 = parseCidr('64:ff9b::/96')!

/** IPv4 embedded in NAT64 (64:ff9b::/96) is checked as the IPv4 address it carries. */
export function unwrap(a: Addr): Addr {
  if (cidrContains(NAT64, a)) {
    const m = new Uint8Array(16)
    m[10] = 0xff
    m[11] = 0xff
    m.set(a.subarray(12), 12)
    return m
  }
  return a
}

export function specialRange(a: Addr): SpecialRange | null {
  const u = unwrap(a)
  for (const r of SPECIAL_RANGES) if (cidrContains(r.cidr, u)) return r
  return null
}

export function sameAddr(a: Addr, b: Addr): boolean {
  for (let i = 0; i < 16; i++) if (a[i] !== b[i]) return false
  return true
}
