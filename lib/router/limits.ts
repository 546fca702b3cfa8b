/**
 * Per-sandbox limits: requests per minute and tokens per minute over a sliding 60 s window, and a
 * spend cap per calendar period (UTC hour/day/week/month) priced from the config's price table.
 * Counters persist to --state DIR/router-state.json (written at most once a second, atomically,
 * and on shutdown) so a supervisor restart does not reset anybody's budget.
 */
import { readFileSync, writeFileSync, renameSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import type { Limits, Price } from './config.js'

const WINDOW = 60_000

class Deque<T> {
  items: T[] = []
  head = 0
  get length(): number {
    return this.items.length - this.head
  }
  push(x: T): void {
    this.items.push(x)
  }
  peek(): T | undefined {
    return this.items[this.head]
  }
  shift(): void {
    this.head++
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head)
      this.head = 0
    }
  }
  toArray(): T[] {
    return this.items.slice(this.head)
  }
}

interface IdentityState {
  req: Deque<number>
  tok: Deque<[number, number]>
  tokSum: number
  spend: { period: string; start: number; usd: number } | null
}

export interface Rejection {
  kind: 'rate_limit' | 'budget'
  retryAfterS: number
  message: string
}

export function periodStart(period: 'hour' | 'day' | 'week' | 'month', now: number): { start: number; end: number } {
  const d = new Date(now)
  if (period === 'hour') {
    const s = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate(), d.getUTCHours())
    return { start: s, end: s + 3_600_000 }
  }
  if (period === 'day') {
    const s = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate())
    return { start: s, end: s + 86_400_000 }
  }
  if (period === 'week') {
    const dow = (d.getUTCDay() + 6) % 7 // Monday = 0
    const s = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() - dow)
    return { start: s, end: s + 7 * 86_400_000 }
  }
  const s = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1)
  return { start: s, end: Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1) }
}

export function cost(price: Price | undefined, input: number, output: number): number {
  if (!price) return 0
  return (input * price.input + output * price.output) / 1_000_000
}

export class Limiter {
  private ids = new Map<string, IdentityState>()
  private dirty = false
  private timer: NodeJS.Timeout | null = null
  readonly stateFile: string | null

  constructor(stateDir: string | null, private readonly now: () => number = Date.now) {
    this.stateFile = stateDir ? join(stateDir, 'router-state.json') : null
    if (stateDir) {
      mkdirSync(stateDir, { recursive: true, mode: 0o700 })
      this.restore()
      this.timer = setInterval(() => this.flush(), 1000)
      this.timer.unref()
    }
  }

  private state(id: string): IdentityState {
    let s = this.ids.get(id)
    if (!s) {
      s = { req: new Deque(), tok: new Deque(), tokSum: 0, spend: null }
      this.ids.set(id, s)
    }
    return s
  }

  private prune(s: IdentityState, now: number): void {
    const cut = now - WINDOW
    while (s.req.length && s.req.peek()! <= cut) s.req.shift()
    while (s.tok.length && s.tok.peek()![0] <= cut) {
      s.tokSum -= s.tok.peek()![1]
      s.tok.shift()
    }
  }

  /** Check the limits and, when allowed, count the request. */
  admit(id: string, limits: Limits): Rejection | null {
    if (!limits.rpm && !limits.tpm && !limits.spend) return null
    const now = this.now()
    const s = this.state(id)
    this.prune(s, now)
    if (limits.spend) {
      const p = periodStart(limits.spend.period, now)
      if (s.spend && s.spend.start === p.start && s.spend.period === limits.spend.period && s.spend.usd >= limits.spend.usd) {
        return {
          kind: 'budget',
          retryAfterS: (p.end - now) / 1000,
          message: `spend cap reached for sandbox ${id}: $${s.spend.usd.toFixed(4)} of $${limits.spend.usd} this ${limits.spend.period} (resets ${new Date(p.end).toISOString()}); ask the operator to raise limits.spend in router.yaml`,
        }
      }
    }
    if (limits.rpm && s.req.length >= limits.rpm) {
      const oldest = s.req.items[s.req.head + s.req.length - limits.rpm]!
      return {
        kind: 'rate_limit',
        retryAfterS: (oldest + WINDOW - now) / 1000,
        message: `rate limit for sandbox ${id}: ${limits.rpm} requests per minute; retry after the Retry-After seconds`,
      }
    }
    if (limits.tpm && s.tokSum >= limits.tpm) {
      // time until enough token events leave the window to fall under the limit
      let sum = s.tokSum
      let wait = WINDOW
      for (let i = s.tok.head; i < s.tok.items.length; i++) {
        sum -= s.tok.items[i]![1]
        if (sum < limits.tpm) {
          wait = s.tok.items[i]![0] + WINDOW - now
          break
        }
      }
      return {
        kind: 'rate_limit',
        retryAfterS: wait / 1000,
        message: `token rate limit for sandbox ${id}: ${s.tokSum} of ${limits.tpm} tokens used in the last minute; retry after the Retry-After seconds`,
      }
    }
    s.req.push(now)
    this.dirty = true
    return null
  }

  /** Count tokens and spend after a call (tokens are known only from the response). */
  record(id: string, limits: Limits, tokens: number, usd: number): void {
    if (!limits.tpm && !limits.spend) return
    const now = this.now()
    const s = this.state(id)
    if (tokens > 0) {
      s.tok.push([now, tokens])
      s.tokSum += tokens
    }
    if (limits.spend && usd > 0) {
      const p = periodStart(limits.spend.period, now)
      if (!s.spend || s.spend.start !== p.start || s.spend.period !== limits.spend.period) s.spend = { period: limits.spend.period, start: p.start, usd: 0 }
      s.spend.usd += usd
    }
    this.dirty = true
  }

  snapshot(): Record<string, { rpmUsed: number; tpmUsed: number; spendUsd: number; spendPeriod: string | null }> {
    const now = this.now()
    const out: Record<string, { rpmUsed: number; tpmUsed: number; spendUsd: number; spendPeriod: string | null }> = {}
    for (const [id, s] of this.ids) {
      this.prune(s, now)
      out[id] = { rpmUsed: s.req.length, tpmUsed: s.tokSum, spendUsd: s.spend?.usd ?? 0, spendPeriod: s.spend?.period ?? null }
    }
    return out
  }

  flush(): void {
    if (!this.stateFile || !this.dirty) return
    this.dirty = false
    const now = this.now()
    const data: Record<string, unknown> = {}
    for (const [id, s] of this.ids) {
      this.prune(s, now)
      data[id] = { req: s.req.toArray(), tok: s.tok.toArray(), spend: s.spend }
    }
    const tmp = `${this.stateFile}.tmp`
    try {
      writeFileSync(tmp, JSON.stringify({ version: 1, savedAt: now, identities: data }), { mode: 0o600 })
      renameSync(tmp, this.stateFile)
    } catch {
      this.dirty = true
    }
  }

  private restore(): void {
    if (!this.stateFile) return
    let data: { version: number; identities: Record<string, { req?: number[]; tok?: Array<[number, number]>; spend?: IdentityState['spend'] }> }
    try {
      data = JSON.parse(readFileSync(this.stateFile, 'utf8'))
    } catch {
      return
    }
    if (data?.version !== 1 || typeof data.identities !== 'object') return
    const now = this.now()
    for (const [id, v] of Object.entries(data.identities)) {
      const s = this.state(id)
      for (const t of v.req ?? []) if (typeof t === 'number' && t > now - WINDOW) s.req.push(t)
      for (const e of v.tok ?? []) {
        if (Array.isArray(e) && e[0] > now - WINDOW) {
          s.tok.push([e[0], e[1]])
          s.tokSum += e[1]
        }
      }
      if (v.spend && typeof v.spend.usd === 'number') s.spend = v.spend
    }
  }

  close(): void {
    if (this.timer) clearInterval(this.timer)
    this.timer = null
    this.flush()
  }
}
