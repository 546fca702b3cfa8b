/**
 * Unified logs.
 *
 * Capture: each component's stdout and stderr go straight to LOG_DIR/<component>.log, opened
 * O_APPEND and handed to the child as its fds. The supervisor is not in the data path, so a
 * component keeps logging (and never sees EPIPE) when the supervisor itself is killed.
 * Rotation is by size, copy-then-truncate (the writers hold O_APPEND fds, so after the truncate
 * they continue at offset 0): <c>.log -> <c>.log.1 -> ... -> <c>.log.KEEP. Audit trails are the
 * components' own append-only files and are never rotated here.
 *
 * Reading (`cordon logs`, `cordon term`): every log and audit file is parsed as JSON lines
 * (pino: numeric `time` in ms; audit: ISO `time`), non-JSON lines (a stack trace on stderr) are
 * kept as {msg} with the time of the line before them, and everything is merged by time.
 */
import { closeSync, copyFileSync, existsSync, fstatSync, ftruncateSync, openSync, readdirSync, readSync, renameSync, statSync, unlinkSync } from 'node:fs'
import { basename, join } from 'node:path'

export interface LogEntry {
  /** ms since epoch */
  t: number
  component: string
  /** 'log' for captured stdout/stderr, 'audit' for an audit trail */
  source: 'log' | 'audit'
  level: string
  msg: string
  /** the original record */
  raw: Record<string, unknown>
}

const PINO_LEVELS: Record<number, string> = { 10: 'trace', 20: 'debug', 30: 'info', 40: 'warn', 50: 'error', 60: 'fatal' }

export function logPath(logDir: string, component: string) {
  return join(logDir, `${component}.log`)
}

/** Open the capture file for a child (O_APPEND|O_CREAT, 0600). Caller closes after spawn. */
export function openCapture(logDir: string, component: string): number {
  return openSync(logPath(logDir, component), 'a', 0o600)
}

/** Rotate `file` when larger than maxBytes. Returns true when it rotated. */
export function rotateIfNeeded(file: string, maxBytes: number, keep: number): boolean {
  let size: number
  try {
    size = statSync(file).size
  } catch {
    return false
  }
  if (size <= maxBytes) return false
  for (let i = keep - 1; i >= 1; i--) {
    const from = `${file}.${i}`
    if (existsSync(from)) renameSync(from, `${file}.${i + 1}`)
  }
  if (existsSync(`${file}.${keep + 1}`)) unlinkSync(`${file}.${keep + 1}`)
  copyFileSync(file, `${file}.1`)
  const fd = openSync(file, 'r+')
  try {
    ftruncateSync(fd, 0)
  } finally {
    closeSync(fd)
  }
  return true
}

function toMs(v: unknown): number | undefined {
  if (typeof v === 'number' && Number.isFinite(v)) return v > 1e14 ? v / 1000 : v < 1e11 ? v * 1000 : v
  if (typeof v === 'string') {
    const n = Date.parse(v)
    if (!Number.isNaN(n)) return n
  }
  return undefined
}

export function parseLine(line: string, component: string, source: 'log' | 'audit', prevT: number): LogEntry | undefined {
  if (!line.trim()) return undefined
  let raw: Record<string, unknown>
  try {
    const j = JSON.parse(line) as unknown
    if (!j || typeof j !== 'object' || Array.isArray(j)) throw new Error('not an object')
    raw = j as Record<string, unknown>
  } catch {
    return { t: prevT, component, source, level: source === 'audit' ? 'audit' : 'info', msg: line, raw: { msg: line } }
  }
  const t = toMs(raw.time ?? raw.ts ?? raw.timestamp) ?? prevT
  const lv = raw.level
  const level = typeof lv === 'number' ? (PINO_LEVELS[lv] ?? String(lv)) : typeof lv === 'string' ? lv : source === 'audit' ? 'audit' : 'info'
  const comp = typeof raw.component === 'string' && raw.component ? raw.component : component
  let msg = typeof raw.msg === 'string' ? raw.msg : typeof raw.message === 'string' ? raw.message : ''
  if (!msg && source === 'audit') msg = auditSummary(raw)
  return { t, component: comp, source, level, msg, raw }
}

/** A one-line human summary of an audit record (engine decisions, router calls, gateway events). */
export function auditSummary(r: Record<string, unknown>): string {
  const parts: string[] = []
  const d = r.decision ?? r.event ?? r.type ?? r.kind
  if (d !== undefined) parts.push(String(d))
  if (r.host !== undefined) parts.push(`${r.host}${r.port !== undefined ? `:${r.port}` : ''}`)
  if (r.method !== undefined) parts.push(String(r.method))
  if (r.path !== undefined) parts.push(String(r.path))
  if (r.route !== undefined) parts.push(`route=${r.route}`)
  if (r.model !== undefined) parts.push(`model=${r.model}`)
  if (r.status !== undefined) parts.push(`status=${r.status}`)
  if (r.rule !== undefined) parts.push(`rule=${typeof r.rule === 'string' ? r.rule : JSON.stringify(r.rule)}`)
  if (r.binary !== undefined) parts.push(`bin=${r.binary}`)
  return parts.join(' ')
}

/** Is this entry a denial (for --denied)? */
export function isDenied(e: LogEntry): boolean {
  const d = String(e.raw.decision ?? e.raw.outcome ?? e.raw.verdict ?? '').toLowerCase()
  if (d === 'deny' || d === 'denied' || d === 'blocked' || d === 'refused' || d === 'timeout-denied' || d.startsWith('den')) return true
  if (e.raw.denied === true || e.raw.allowed === false) return true
  return false
}

export interface LogSource {
  component: string
  source: 'log' | 'audit'
  file: string
}

/** Every log source under the directories (rotated files first, oldest first). */
export function listSources(logDir: string, auditFiles: Array<{ component: string; file: string }>): LogSource[] {
  const out: LogSource[] = []
  let names: string[] = []
  try {
    names = readdirSync(logDir)
  } catch {
    /* no logs yet */
  }
  const byComp = new Map<string, Array<{ n: number; file: string }>>()
  for (const n of names) {
    const m = /^([a-z0-9_-]+)\.log(?:\.(\d+))?$/.exec(n)
    if (!m) continue
    const arr = byComp.get(m[1]!) ?? []
    arr.push({ n: m[2] ? Number(m[2]) : 0, file: join(logDir, n) })
    byComp.set(m[1]!, arr)
  }
  for (const [component, files] of byComp) {
    files.sort((a, b) => b.n - a.n)
    for (const f of files) out.push({ component, source: 'log', file: f.file })
  }
  for (const a of auditFiles) if (existsSync(a.file)) out.push({ component: a.component, source: 'audit', file: a.file })
  return out
}

/** Read a file from `offset`, returning complete lines and the offset after the last one. */
export function readLinesFrom(file: string, offset: number, maxBytes = 64 * 1024 * 1024): { lines: string[]; next: number; truncated: boolean } {
  let fd: number
  try {
    fd = openSync(file, 'r')
  } catch {
    return { lines: [], next: offset, truncated: false }
  }
  try {
    const size = fstatSync(fd).size
    if (size < offset) return { lines: [], next: 0, truncated: true } // rotated/truncated under us
    const start = Math.max(offset, size - maxBytes)
    const len = size - start
    if (len <= 0) return { lines: [], next: offset, truncated: false }
    const buf = Buffer.alloc(len)
    let got = 0
    while (got < len) {
      const n = readSync(fd, buf, got, len - got, start + got)
      if (n <= 0) break
      got += n
    }
    const text = buf.subarray(0, got).toString('utf8')
    const lastNl = text.lastIndexOf('\n')
    if (lastNl < 0) return { lines: [], next: start, truncated: false }
    const lines = text.slice(0, lastNl).split('\n')
    if (start > offset && lines.length) lines.shift() // first line may be partial
    return { lines, next: start + Buffer.byteLength(text.slice(0, lastNl + 1)), truncated: false }
  } finally {
    closeSync(fd)
  }
}

export interface LogFilter {
  components?: string[]
  since?: number
  denied?: boolean
  requestId?: string
  grep?: string
}

export function matches(e: LogEntry, f: LogFilter): boolean {
  if (f.components?.length && !f.components.includes(e.component)) return false
  if (f.since !== undefined && e.t < f.since) return false
  if (f.denied && !isDenied(e)) return false
  if (f.requestId) {
    const r = e.raw.request_id ?? e.raw.requestId ?? e.raw.req_id ?? (e.raw.req as { id?: unknown } | undefined)?.id
    if (r !== f.requestId) return false
  }
  if (f.grep && !JSON.stringify(e.raw).toLowerCase().includes(f.grep.toLowerCase()) && !e.msg.toLowerCase().includes(f.grep.toLowerCase())) return false
  return true
}

/** Read everything once and merge by time (stable: equal times keep file order). */
export function readMerged(sources: LogSource[], f: LogFilter = {}): LogEntry[] {
  const all: LogEntry[] = []
  for (const s of sources) {
    const { lines } = readLinesFrom(s.file, 0)
    let prev = 0
    for (const l of lines) {
      const e = parseLine(l, s.component, s.source, prev)
      if (!e) continue
      prev = e.t
      if (matches(e, f)) all.push(e)
    }
  }
  return all.map((e, i) => ({ e, i })).sort((a, b) => a.e.t - b.e.t || a.i - b.i).map((x) => x.e)
}

/**
 * Follow: poll the live files (not the rotated ones) for growth; entries arriving in one poll
 * are merged by time before they are emitted. Returns a stop function.
 */
export function follow(sources: LogSource[], f: LogFilter, emit: (batch: LogEntry[]) => void, opts: { intervalMs?: number; fromEnd?: boolean; rescan?: () => LogSource[] } = {}): () => void {
  const offsets = new Map<string, { off: number; prev: number; s: LogSource }>()
  const live = (list: LogSource[]) => list.filter((s) => s.source === 'audit' || /\.log$/.test(s.file))
  const add = (s: LogSource) => {
    if (offsets.has(s.file)) return
    let off = 0
    if (opts.fromEnd !== false) {
      try {
        off = statSync(s.file).size
      } catch {
        off = 0
      }
    }
    offsets.set(s.file, { off, prev: Date.now(), s })
  }
  for (const s of live(sources)) add(s)
  const tick = () => {
    if (opts.rescan) for (const s of live(opts.rescan())) if (!offsets.has(s.file)) offsets.set(s.file, { off: 0, prev: Date.now(), s })
    const batch: LogEntry[] = []
    for (const st of offsets.values()) {
      const { lines, next } = readLinesFrom(st.s.file, st.off)
      st.off = next
      for (const l of lines) {
        const e = parseLine(l, st.s.component, st.s.source, st.prev)
        if (!e) continue
        st.prev = e.t
        if (matches(e, f)) batch.push(e)
      }
    }
    if (batch.length) emit(batch.sort((a, b) => a.t - b.t))
  }
  const timer = setInterval(tick, opts.intervalMs ?? 200)
  return () => clearInterval(timer)
}

const COLORS: Record<string, string> = { engine: '\x1b[36m', router: '\x1b[35m', gateway: '\x1b[33m', agent: '\x1b[32m', supervisor: '\x1b[34m' }
const LEVEL_COLORS: Record<string, string> = { error: '\x1b[31m', fatal: '\x1b[41m', warn: '\x1b[33m', debug: '\x1b[90m', trace: '\x1b[90m' }
const HIDDEN = new Set(['time', 'level', 'msg', 'message', 'component', 'pid', 'hostname', 'v'])

export function formatTime(t: number): string {
  const d = new Date(t)
  const pad = (n: number, w = 2) => String(n).padStart(w, '0')
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`
}

/** One human line: time, component, level (or audit), message, key=value for the rest. */
export function formatPretty(e: LogEntry, color = true): string {
  const c = (code: string | undefined, s: string) => (color && code ? `${code}${s}\x1b[0m` : s)
  const denied = isDenied(e)
  const lvl = e.source === 'audit' ? (denied ? 'DENY ' : 'AUDIT') : e.level.toUpperCase().padEnd(5)
  const extras = Object.entries(e.raw)
    .filter(([k]) => !HIDDEN.has(k))
    .filter(([k]) => !(e.source === 'audit' && ['decision', 'host', 'port', 'method', 'path', 'route', 'model', 'status', 'rule', 'binary'].includes(k)))
    .map(([k, v]) => `${k}=${typeof v === 'string' ? (/\s/.test(v) ? JSON.stringify(v) : v) : JSON.stringify(v)}`)
    .join(' ')
  return `${c('\x1b[90m', formatTime(e.t))} ${c(COLORS[e.component], e.component.padEnd(8))} ${c(denied ? '\x1b[31m' : e.source === 'audit' ? '\x1b[1m' : LEVEL_COLORS[e.level], lvl)} ${e.msg}${extras ? ` ${c('\x1b[90m', extras)}` : ''}`
}

/** JSON output: the original record plus the merged fields, one object per line. */
export function formatJson(e: LogEntry): string {
  return JSON.stringify({ ...e.raw, time: new Date(e.t).toISOString(), component: e.component, source: e.source })
}

/** --since: "90s", "10m", "2h", "1d", an ISO date or an epoch (ms). */
export function parseSince(s: string, now = Date.now()): number {
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/.exec(s.trim())
  if (m) {
    const mult = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 'ms']
    return now - Number(m[1]) * mult
  }
  if (/^\d{12,}$/.test(s)) return Number(s)
  const d = Date.parse(s)
  if (Number.isNaN(d)) throw new Error(`--since ${JSON.stringify(s)}: expected a duration like 10m, 2h, 1d or a date like 2026-05-01T12:00:00Z`)
  return d
}

export function componentOfFile(file: string): string {
  return basename(file).replace(/\.(log|jsonl)(\.\d+)?$/, '')
}
