/**
 * A NetworkPolicy evaluator (networking.k8s.io/v1 semantics) for reachability matrices.
 * Written by hand because no npm library evaluates NetworkPolicy objects offline; it covers what
 * the API defines: podSelector / namespaceSelector (matchLabels + matchExpressions, AND when both
 * are set), ipBlock cidr/except (IPv4 and IPv6), ports with protocol (default TCP), named ports
 * and endPort, policyTypes (defaulted as the API server does), isolation per direction.
 *
 * A flow src -> dst:port/proto is allowed when src's egress allows it (or no egress policy
 * selects src) AND dst's ingress allows it (or no ingress policy selects dst). Endpoints outside
 * the cluster have no policies. Ports are the destination's container ports (post-DNAT).
 */

export interface LabelSelector {
  matchLabels?: Record<string, string>
  matchExpressions?: { key: string; operator: 'In' | 'NotIn' | 'Exists' | 'DoesNotExist'; values?: string[] }[]
}
export interface PolicyPort { protocol?: string; port?: number | string; endPort?: number }
export interface Peer { podSelector?: LabelSelector; namespaceSelector?: LabelSelector; ipBlock?: { cidr: string; except?: string[] } }
export interface NetworkPolicy {
  metadata: { name: string; namespace?: string }
  spec: {
    podSelector: LabelSelector
    policyTypes?: ('Ingress' | 'Egress')[]
    ingress?: { from?: Peer[]; ports?: PolicyPort[] }[]
    egress?: { to?: Peer[]; ports?: PolicyPort[] }[]
  }
}

export interface Endpoint {
  name: string
  ip: string
  /** pods only */
  namespace?: string
  labels?: Record<string, string>
  /** named container ports: name -> { port, protocol } */
  ports?: { name?: string; port: number; protocol: string }[]
}

export function selects(sel: LabelSelector | undefined, labels: Record<string, string>): boolean {
  if (!sel) return true
  for (const [k, v] of Object.entries(sel.matchLabels ?? {})) if (labels[k] !== v) return false
  for (const e of sel.matchExpressions ?? []) {
    const has = Object.prototype.hasOwnProperty.call(labels, e.key)
    const vals = e.values ?? []
    switch (e.operator) {
      case 'In': if (!has || !vals.includes(labels[e.key]!)) return false; break
      case 'NotIn': if (has && vals.includes(labels[e.key]!)) return false; break
      case 'Exists': if (!has) return false; break
      case 'DoesNotExist': if (has) return false; break
      default: throw new Error(`unknown selector operator ${String(e.operator)}`)
    }
  }
  return true
}

// ---- IP / CIDR -------------------------------------------------------------------------------
function parseIp(ip: string): { v: 4 | 6; n: bigint } {
  if (ip.includes(':')) {
    const [head, tail] = ip.split('::') as [string, string | undefined]
    const h = head ? head.split(':') : []
    const t = tail !== undefined && tail !== '' ? tail.split(':') : []
    const fill = ip.includes('::') ? 8 - h.length - t.length : 0
    const groups = [...h, ...Array(fill).fill('0'), ...t]
    if (groups.length !== 8) throw new Error(`bad IPv6 address ${ip}`)
    return { v: 6, n: groups.reduce((a, g) => (a << 16n) | BigInt(parseInt(g || '0', 16)), 0n) }
  }
  const parts = ip.split('.').map(Number)
  if (parts.length !== 4 || parts.some((p) => !(p >= 0 && p <= 255))) throw new Error(`bad IPv4 address ${ip}`)
  return { v: 4, n: parts.reduce((a, p) => (a << 8n) | BigInt(p), 0n) }
}

export function inCidr(ip: string, cidr: string): boolean {
  const [base, lenS] = cidr.split('/') as [string, string]
  const a = parseIp(ip)
  const b = parseIp(base)
  if (a.v !== b.v) return false
  const bits = a.v === 4 ? 32 : 128
  const len = Number(lenS)
  const shift = BigInt(bits - len)
  return a.n >> shift === b.n >> shift
}

// ---- matching --------------------------------------------------------------------------------
function peerMatches(peer: Peer, policyNs: string, other: Endpoint, nsLabels: (ns: string) => Record<string, string>): boolean {
  if (peer.ipBlock) {
    if (!inCidr(other.ip, peer.ipBlock.cidr)) return false
    return !(peer.ipBlock.except ?? []).some((c) => inCidr(other.ip, c))
  }
  if (other.namespace === undefined) return false // selectors match pods only
  if (peer.namespaceSelector) {
    if (!selects(peer.namespaceSelector, nsLabels(other.namespace))) return false
  } else if (other.namespace !== policyNs) {
    return false
  }
  return selects(peer.podSelector, other.labels ?? {})
}

function portMatches(ports: PolicyPort[] | undefined, port: number, proto: string, dst: Endpoint): boolean {
  if (!ports || ports.length === 0) return true
  return ports.some((p) => {
    if ((p.protocol ?? 'TCP') !== proto) return false
    if (p.port === undefined) return true
    if (typeof p.port === 'string') {
      const named = (dst.ports ?? []).find((c) => c.name === p.port && c.protocol === proto)
      return named !== undefined && named.port === port
    }
    return p.endPort !== undefined ? port >= p.port && port <= p.endPort : port === p.port
  })
}

function types(p: NetworkPolicy): ('Ingress' | 'Egress')[] {
  if (p.spec.policyTypes && p.spec.policyTypes.length) return p.spec.policyTypes
  return p.spec.egress && p.spec.egress.length ? ['Ingress', 'Egress'] : ['Ingress']
}

export interface Verdict { allowed: boolean; egress: string; ingress: string }

export function evaluate(
  policies: NetworkPolicy[],
  nsLabels: (ns: string) => Record<string, string>,
  src: Endpoint,
  dst: Endpoint,
  port: number,
  proto: string,
): Verdict {
  const applying = (ep: Endpoint, dir: 'Ingress' | 'Egress') =>
    ep.namespace === undefined
      ? []
      : policies.filter((p) => (p.metadata.namespace ?? '') === ep.namespace && types(p).includes(dir) && selects(p.spec.podSelector, ep.labels ?? {}))

  let egress = 'not isolated'
  let eOk = true
  const eg = applying(src, 'Egress')
  if (eg.length) {
    const hit = eg.find((p) => (p.spec.egress ?? []).some((r) => (!r.to || r.to.length === 0 || r.to.some((peer) => peerMatches(peer, p.metadata.namespace ?? '', dst, nsLabels))) && portMatches(r.ports, port, proto, dst)))
    eOk = hit !== undefined
    egress = hit ? `allowed by ${hit.metadata.name}` : `denied (selected by ${eg.map((p) => p.metadata.name).join(', ')})`
  }
  let ingress = 'not isolated'
  let iOk = true
  const ig = applying(dst, 'Ingress')
  if (ig.length) {
    const hit = ig.find((p) => (p.spec.ingress ?? []).some((r) => (!r.from || r.from.length === 0 || r.from.some((peer) => peerMatches(peer, p.metadata.namespace ?? '', src, nsLabels))) && portMatches(r.ports, port, proto, dst)))
    iOk = hit !== undefined
    ingress = hit ? `allowed by ${hit.metadata.name}` : `denied (selected by ${ig.map((p) => p.metadata.name).join(', ')})`
  }
  return { allowed: eOk && iOk, egress, ingress }
}

/** Rows of the markdown table under the heading that contains `heading` (| from | to | port | verdict | why |). */
export function parseTable(markdown: string, heading: string): { from: string; to: string; port: string; verdict: string; why: string; line: number }[] {
  const lines = markdown.split('\n')
  const h = lines.findIndex((l) => l.startsWith('#') && l.includes(heading))
  if (h < 0) throw new Error(`no heading containing "${heading}"`)
  const rows: ReturnType<typeof parseTable> = []
  let i = h + 1
  while (i < lines.length && !lines[i]!.startsWith('| from |')) i++
  if (i >= lines.length) throw new Error(`no "| from | to | port | verdict | why |" table after "${heading}"`)
  for (i += 2; i < lines.length && lines[i]!.startsWith('|'); i++) {
    const cells = lines[i]!.split('|').slice(1, -1).map((c) => c.trim())
    if (cells.length !== 5) throw new Error(`README line ${i + 1}: expected 5 cells, got ${cells.length}`)
    const [from, to, port, verdict, why] = cells as [string, string, string, string, string]
    rows.push({ from, to, port, verdict, why, line: i + 1 })
  }
  return rows
}
