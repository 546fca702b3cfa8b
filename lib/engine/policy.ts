/**
 * The engine's view of a policy file: only its `network` section, compiled to rules with
 * file:line origins. A full cordon policy (it has `version:`) is loaded and validated by
 * lib/policy's loadPolicy (the same loader `cordon run` uses: schema, `extends` of profiles),
 * and the engine takes the merged network section from it; a file without `version:` is read
 * as a network-only policy by the adapter below. Rule compilation (lib/engine/rules.ts) and
 * presets stay here.
 *
 *   network: none | host | { mode: proxy, presets: [npm, telegram], allow: [rules], deny: [rules],
 *                            unlisted: ask | deny, bind: [ports] }
 */
import fs from 'node:fs'
import path from 'node:path'
import { createHash } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { LineCounter, parseDocument, isMap, isSeq, isScalar, type Node as YNode, Document } from 'yaml'
import { type CompiledNetwork, type Rule, type RuleSpec, parseRule, RuleError } from './rules.js'
import { loadPolicy, PolicyError } from '../policy/index.js'

export interface PolicyProblem {
  file: string
  line: number
  col: number
  message: string
}

export class PolicyLoadError extends Error {
  constructor(public readonly problems: PolicyProblem[]) {
    super(problems.map((p) => `${p.file}:${p.line}:${p.col}: ${p.message}`).join('\n'))
    this.name = 'PolicyLoadError'
  }
}

export interface LoadedPolicy {
  file: string
  /** sha256 of the file's bytes */
  hash: string
  text: string
  network: CompiledNetwork
}

export function defaultPresetDir(): string {
  // lib/engine/policy.ts and dist/engine/policy.js both sit two levels below the package root
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'profiles', 'presets')
}

export function sha256(buf: Buffer | string): string {
  return createHash('sha256').update(buf).digest('hex')
}

function posOf(lc: LineCounter, node: YNode | null | undefined): { line: number; col: number } {
  const off = node?.range?.[0] ?? 0
  const p = lc.linePos(off)
  return { line: p.line, col: p.col }
}

export interface Preset {
  name: string
  description: string
  rules: Rule[]
}

const presetCache = new Map<string, { hash: string; preset: Preset }>()

export function loadPreset(name: string, dir = defaultPresetDir()): Preset {
  if (!/^[a-z0-9][a-z0-9_-]*$/.test(name)) throw new Error(`preset name "${name}" is not a plain name`)
  const file = path.join(dir, `${name}.yaml`)
  let text: string
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch {
    const have = fs.existsSync(dir)
      ? fs.readdirSync(dir).filter((f) => f.endsWith('.yaml')).map((f) => f.slice(0, -5)).sort()
      : []
    throw new Error(`unknown preset "${name}" (no ${file}); available: ${have.join(', ') || 'none'}`)
  }
  const h = sha256(text)
  const c = presetCache.get(file)
  if (c && c.hash === h) return c.preset
  const lc = new LineCounter()
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false })
  if (doc.errors.length) {
    const e = doc.errors[0]!
    const p = lc.linePos(e.pos[0])
    throw new Error(`${file}:${p.line}:${p.col}: ${e.message}`)
  }
  const root = doc.contents
  const rules: Rule[] = []
  const allow = isMap(root) ? root.get('allow', true) : null
  if (!isSeq(allow)) throw new Error(`${file}: a preset needs an "allow:" list`)
  allow.items.forEach((item, i) => {
    const spec = (item as YNode & { toJSON(): unknown }).toJSON() as RuleSpec
    const p = posOf(lc, item as YNode)
    try {
      rules.push(parseRule(spec, `preset:${name}`, 'allow'))
    } catch (e) {
      throw new Error(`${file}:${p.line}:${p.col}: allow[${i}]: ${(e as Error).message}`)
    }
  })
  const desc = isMap(root) ? String(root.get('description') ?? '') : ''
  const preset = { name, description: desc, rules }
  presetCache.set(file, { hash: h, preset })
  return preset
}

export function listPresets(dir = defaultPresetDir()): string[] {
  try {
    return fs.readdirSync(dir).filter((f) => f.endsWith('.yaml')).map((f) => f.slice(0, -5)).sort()
  } catch {
    return []
  }
}

/** Parse and compile the network section of policy text. Throws PolicyLoadError. */
export function compileNetworkPolicy(text: string, file: string, presetDir = defaultPresetDir()): CompiledNetwork {
  const lc = new LineCounter()
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false })
  const problems: PolicyProblem[] = []
  const at = (node: YNode | null | undefined, message: string) => {
    const p = posOf(lc, node)
    problems.push({ file, line: p.line, col: p.col, message })
  }
  for (const e of doc.errors) {
    const p = lc.linePos(e.pos[0])
    problems.push({ file, line: p.line, col: p.col, message: e.message.split('\n')[0]! })
  }
  if (problems.length) throw new PolicyLoadError(problems)
  const root = doc.contents
  if (root !== null && !isMap(root)) {
    at(root as YNode, 'a policy is a mapping (key: value); found something else at the top level')
    throw new PolicyLoadError(problems)
  }
  const net: CompiledNetwork = { mode: 'proxy', allow: [], deny: [], unlisted: 'deny', presets: [], bind: [] }
  const netNode = (root ? root.get('network', true) : undefined) as unknown as YNode | null | undefined
  if (netNode === undefined || netNode === null) {
    // no network section: nothing is reachable but the always-on services
    net.mode = 'none'
    return net
  }
  if (isScalar(netNode)) {
    const v = netNode.value as unknown
    if (v === 'none' || v === 'host') {
      net.mode = v
      return net
    }
    at(netNode, `network: expected none, host or a mapping with mode: proxy; got ${JSON.stringify(v)}`)
    throw new PolicyLoadError(problems)
  }
  if (!isMap(netNode)) {
    at(netNode as YNode, 'network: expected none, host or a mapping (mode, presets, allow, deny, unlisted, bind)')
    throw new PolicyLoadError(problems)
  }
  const known = new Set(['mode', 'presets', 'allow', 'deny', 'unlisted', 'bind', 'connect', 'namespace'])
  for (const pair of netNode.items) {
    const k = isScalar(pair.key) ? String(pair.key.value) : String(pair.key)
    if (!known.has(k)) at(pair.key as YNode, `network: unknown key "${k}" (expected ${[...known].join(', ')})`)
  }
  const mode = netNode.get('mode', true)
  if (mode !== undefined) {
    const v = isScalar(mode) ? mode.value : undefined
    if (v !== 'proxy' && v !== 'none' && v !== 'host') at(mode as YNode, `network.mode: expected proxy, none or host; got ${JSON.stringify(v)}`)
    else net.mode = v
  }
  const unlisted = netNode.get('unlisted', true)
  if (unlisted !== undefined) {
    const v = isScalar(unlisted) ? unlisted.value : undefined
    if (v !== 'ask' && v !== 'deny') at(unlisted as YNode, `network.unlisted: expected ask or deny; got ${JSON.stringify(v)}`)
    else net.unlisted = v
  }
  const presets = netNode.get('presets', true)
  if (presets !== undefined) {
    if (!isSeq(presets)) at(presets as YNode, 'network.presets: expected a list of preset names, e.g. [npm, github]')
    else
      for (const item of presets.items) {
        const name = isScalar(item) ? String(item.value) : ''
        try {
          const p = loadPreset(name, presetDir)
          net.presets.push(name)
          net.allow.push(...p.rules)
        } catch (e) {
          at(item as YNode, `network.presets: ${(e as Error).message}`)
        }
      }
  }
  for (const kind of ['allow', 'deny'] as const) {
    const list = netNode.get(kind, true)
    if (list === undefined || list === null) continue
    if (!isSeq(list)) {
      at(list as YNode, `network.${kind}: expected a list of rules`)
      continue
    }
    list.items.forEach((item, i) => {
      const p = posOf(lc, item as YNode)
      const spec = (item as YNode & { toJSON(): unknown }).toJSON() as RuleSpec
      try {
        const r = parseRule(spec, `${path.basename(file)}:${p.line} network.${kind}[${i}]`, kind)
        // policy allow rules precede preset rules in messages only by origin; order is irrelevant
        net[kind].push(r)
      } catch (e) {
        const msg = e instanceof RuleError ? e.message.slice(e.origin.length + 2) : (e as Error).message
        at(item as YNode, `network.${kind}[${i}]: ${msg}`)
      }
    })
  }
  const bind = netNode.get('bind', true)
  if (bind !== undefined) {
    if (!isSeq(bind)) at(bind as YNode, 'network.bind: expected a list of ports')
    else
      for (const item of bind.items) {
        const v = isScalar(item) ? Number(item.value) : NaN
        if (!Number.isInteger(v) || v < 1 || v > 65535) at(item as YNode, `network.bind: ${JSON.stringify(isScalar(item) ? item.value : item)} is not a port`)
        else net.bind.push(v)
      }
  }
  if (problems.length) throw new PolicyLoadError(problems)
  return net
}

export function loadNetworkPolicy(file: string, presetDir?: string): LoadedPolicy {
  let buf: Buffer
  try {
    buf = fs.readFileSync(file)
  } catch (e) {
    throw new PolicyLoadError([{ file, line: 0, col: 0, message: `cannot read the policy file: ${(e as Error).message}` }])
  }
  const text = buf.toString('utf8')
  const hash = sha256(buf)
  // a full cordon policy: validate it whole with lib/policy and take its merged network section
  const doc = parseDocument(text)
  if (!doc.errors.length && isMap(doc.contents) && doc.contents.has('version')) {
    let resolvedNet: unknown
    try {
      resolvedNet = loadPolicy(file, { workspace: path.dirname(path.resolve(file)) }).network
    } catch (e) {
      // paths of the sandbox's filesystem need not exist where the engine runs (another pod):
      // when only filesystem problems are reported, read the network section ourselves
      const all = e instanceof PolicyError ? [e, ...e.others] : []
      if (all.length && all.every((x) => (x.field ?? '').startsWith('filesystem'))) {
        return { file, hash, text, network: compileNetworkPolicy(text, file, presetDir) }
      }
      if (e instanceof PolicyError) {
        const lines = e.report.split('\n')
        throw new PolicyLoadError(
          lines.map((l) => {
            const m = /^(.*?):(\d+): (.*)$/.exec(l)
            return m ? { file: m[1]!, line: Number(m[2]), col: 1, message: m[3]! } : { file, line: 0, col: 0, message: l }
          }),
        )
      }
      throw e
    }
    // the file's own network section gives rules their file:line origins; when the network
    // section comes from an extended profile, compile the resolved one (origins: field paths)
    const own = compileNetworkPolicy(text, file, presetDir)
    const rn = resolvedNet as { mode: string }
    const ownJs = (doc.toJS() as { network?: unknown }).network
    const same = (() => {
      if (ownJs === undefined) return false
      if (typeof ownJs === 'string') return ownJs === rn.mode
      const o = ownJs as Record<string, unknown>
      const r = rn as Record<string, unknown>
      return o.mode === r.mode && ['allow', 'deny', 'presets'].every((k) => JSON.stringify(o[k] ?? []) === JSON.stringify(r[k] ?? []))
    })()
    if (same) return { file, hash, text, network: own }
    return { file, hash, text, network: compileResolved(rn as ResolvedNetwork, file, presetDir) }
  }
  return { file, hash, text, network: compileNetworkPolicy(text, file, presetDir) }
}

type ResolvedNetwork =
  | { mode: 'none' | 'host' }
  | { mode: 'proxy'; presets: string[]; allow: RuleSpec[]; deny: RuleSpec[]; unlisted: 'ask' | 'deny'; bind: number[] }

function compileResolved(n: ResolvedNetwork, file: string, presetDir?: string): CompiledNetwork {
  const net: CompiledNetwork = { mode: n.mode, allow: [], deny: [], unlisted: 'deny', presets: [], bind: [] }
  if (n.mode !== 'proxy') return net
  const problems: PolicyProblem[] = []
  net.unlisted = n.unlisted
  net.bind = [...n.bind]
  for (const name of n.presets) {
    try {
      net.allow.push(...loadPreset(name, presetDir).rules)
      net.presets.push(name)
    } catch (e) {
      problems.push({ file, line: 0, col: 0, message: `network.presets: ${(e as Error).message}` })
    }
  }
  for (const kind of ['allow', 'deny'] as const) {
    n[kind].forEach((spec, i) => {
      try {
        net[kind].push(parseRule(spec, `${path.basename(file)} (merged) network.${kind}[${i}]`, kind))
      } catch (e) {
        problems.push({ file, line: 0, col: 0, message: `network.${kind}[${i}]: ${(e as Error).message}` })
      }
    })
  }
  if (problems.length) throw new PolicyLoadError(problems)
  return net
}

/**
 * Add a rule to network.allow of the policy file, keeping comments and layout (yaml Document
 * API), written atomically: temp file in the same directory, fsync, rename, fsync the directory.
 * The real file behind a symlink is replaced (the link stays).
 */
export function persistAllowRule(file: string, rule: string): void {
  const real = fs.realpathSync(file)
  const text = fs.readFileSync(real, 'utf8')
  const doc = parseDocument(text)
  if (doc.errors.length) throw new Error(`${file}: cannot edit: ${doc.errors[0]!.message}`)
  let net = doc.get('network', true)
  if (net === undefined || net === null) {
    doc.set('network', doc.createNode({ mode: 'proxy', allow: [] }))
    net = doc.get('network', true)
  }
  if (isScalar(net)) {
    throw new Error(
      `${file}: network is "${String(net.value)}"; change it to a mapping (network: { mode: proxy, allow: [...] }) to persist approvals`,
    )
  }
  if (!isMap(net)) throw new Error(`${file}: network is not a mapping`)
  let allow = net.get('allow', true)
  if (allow === undefined || allow === null) {
    net.set('allow', new Document().createNode([]))
    allow = net.get('allow', true)
  }
  if (!isSeq(allow)) throw new Error(`${file}: network.allow is not a list`)
  const exists = allow.items.some((i) => isScalar(i) && i.value === rule)
  if (!exists) allow.add(doc.createNode(rule))
  const out = doc.toString()
  try {
    atomicWrite(real, out)
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code
    // a confined engine (cordon up) may write the policy file but not create files beside it, and
    // a file that is a bind mount (a container's single-file mount) cannot be renamed over (EBUSY):
    // rewrite it in place (same inode, so a Landlock rule on it still covers it). The new text only
    // adds a rule, so it is never shorter than the old: a crash mid-write cannot leave the old tail
    if (code !== 'EACCES' && code !== 'EPERM' && code !== 'EBUSY') throw e
    rewriteInPlace(real, out)
  }
}

/** Write data over file, same inode: write from offset 0, cut to its length, fsync. */
export function rewriteInPlace(file: string, data: string): void {
  const fd = fs.openSync(file, 'r+')
  try {
    const buf = Buffer.from(data)
    let off = 0
    while (off < buf.length) off += fs.writeSync(fd, buf, off, buf.length - off, off)
    fs.ftruncateSync(fd, buf.length)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

export function atomicWrite(file: string, data: string): void {
  const dir = path.dirname(file)
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${Date.now()}.tmp`)
  let mode = 0o644
  try {
    mode = fs.statSync(file).mode & 0o777
  } catch {
    /* new file */
  }
  const fd = fs.openSync(tmp, 'w', mode)
  try {
    fs.writeSync(fd, data)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
  try {
    fs.renameSync(tmp, file)
  } catch (e) {
    fs.rmSync(tmp, { force: true })
    throw e
  }
  try {
    const dfd = fs.openSync(dir, 'r')
    try {
      fs.fsyncSync(dfd)
    } finally {
      fs.closeSync(dfd)
    }
  } catch {
    /* directory fsync not supported: the rename is still atomic */
  }
}
