/**
 * Per-sandbox limits: requests per minute and tokens per minute over a sliding 60 s window, and a
 * spend cap per calendar period (UTC hour/day/week/month) priced from the config's price table.
 * Counters persist to --state DIR/router-state.json (written at most once a second, atomically,
 * and on shutdown) so a supervisor restart does not reset anybody's budget.
 *
 * Tokens and spend are known only when a call's usage arrives. So that calls made at once cannot
 * together run far past a cap, each admitted call holds an estimate of its cost (a Hold) against
 * the sandbox's tpm and spend until its usage is recorded or it ends: a call is refused while what
 * was used plus what the calls in flight hold reaches a limit. A call's own hold does not count
 * against itself, so the one call that crosses a limit can still take the sandbox past it.
 */
import { readFileSync, writeFileSync, renameSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import type { Limits, Price } from './config.js'

const WINDOW = 60_000

/**
 * A sliding 60 s window kept as per-second buckets (at most 61), so the cost per request and the
 * size of the state file stay constant however many requests a minute a sandbox makes.
 */
class Window {
  /** [second (ms since epoch / 1000, floored), amount] oldest first */
  buckets: Array<[number, number]> = []
  sum = 0
  add(now: number, n: number): void {
    const sec = Math.floor(now / 1000)
    const last = this.buckets[this.buckets.length - 1]
    if (last && last[0] === sec) last[1] += n
    else this.buckets.push([sec, n])
    this.sum += n
  }
  prune(now: number): void {
    // a bucket leaves the window 60 s after its second began (1 s granularity)
    const cut = Math.floor((now - WINDOW) / 1000)
    let i = 0
    while (i < this.buckets.length && this.buckets[i]![0] <= cut) this.sum -= this.buckets[i++]![1]
    if (i) this.buckets.splice(0, i)
  }
  /** ms until the sum drops below limit */
  waitBelow(limit: number, now: number): number {
    let sum = this.sum
    for (const [sec, n] of this.buckets) {
      sum -= n
      if (sum < limit) return Math.max(0, sec * 1000 + WINDOW - now)
    }
    return WINDOW
  }
}

interface IdentityState {
  req: Window
  tok: Window
  spend: { period: string; start: number; usd: number } | null
  /** what the calls in flight hold (not persisted: a restart ends them) */
  inflight: { calls: number; tokens: number; usd: number }
}

/** What a call in flight is expected to cost; held against tpm and spend until it is released. */
export interface Hold {
  tokens: number
  usd: number
  /** set while the hold counts (admit), cleared by release() or record() */
  held?: boolean
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
      s = { req: new Window(), tok: new Window(), spend: null, inflight: { calls: 0, tokens: 0, usd: 0 } }
      this.ids.set(id, s)
    }
    return s
  }

  private prune(s: IdentityState, now: number): void {
    s.req.prune(now)
    s.tok.prune(now)
  }

  /**
   * Check the limits and, when allowed, count the request; with a hold (when the limits include tpm
   * or spend), the call then holds that estimate until release() or record().
   */
  admit(id: string, limits: Limits, hold?: Hold): Rejection | null {
    if (!limits.rpm && !limits.tpm && !limits.spend) return null
    const now = this.now()
    const s = this.state(id)
    this.prune(s, now)
    const fl = s.inflight
    const inFlight = () => `${fl.calls} call${fl.calls === 1 ? '' : 's'} in flight` // for the refusals only
    if (limits.spend) {
      const p = periodStart(limits.spend.period, now)
      const used = s.spend && s.spend.start === p.start && s.spend.period === limits.spend.period ? s.spend.usd : 0
      if (used >= limits.spend.usd) {
        return {
          kind: 'budget',
          retryAfterS: (p.end - now) / 1000,
          message: `spend cap reached for sandbox ${id}: $${used.toFixed(4)} of $${limits.spend.usd} this ${limits.spend.period} (resets ${new Date(p.end).toISOString()}); ask the operator to raise limits.spend in router.yaml`,
        }
      }
      if (fl.calls > 0 && used + fl.usd >= limits.spend.usd) {
        return {
          kind: 'rate_limit',
          retryAfterS: 1,
          message: `spend cap for sandbox ${id}: $${used.toFixed(4)} spent and up to $${fl.usd.toFixed(4)} held by ${inFlight()}, of $${limits.spend.usd} this ${limits.spend.period}; retry when they have finished`,
        }
      }
    }
    if (limits.rpm && s.req.sum >= limits.rpm) {
      return {
        kind: 'rate_limit',
        retryAfterS: s.req.waitBelow(limits.rpm, now) / 1000,
        message: `rate limit for sandbox ${id}: ${limits.rpm} requests per minute; retry after the Retry-After seconds`,
      }
    }
    if (limits.tpm && s.tok.sum >= limits.tpm) {
      return {
        kind: 'rate_limit',
        retryAfterS: s.tok.waitBelow(limits.tpm, now) / 1000,
        message: `token rate limit for sandbox ${id}: ${s.tok.sum} of ${limits.tpm} tokens used in the last minute; retry after the Retry-After seconds`,
      }
    }
    if (limits.tpm && fl.calls > 0 && s.tok.sum + fl.tokens >= limits.tpm) {
      return {
        kind: 'rate_limit',
        retryAfterS: 1,
        message: `token rate limit for sandbox ${id}: ${s.tok.sum} tokens used in the last minute and up to ${fl.tokens} held by ${inFlight()}, of ${limits.tpm}; retry when they have finished`,
      }
    }
    s.req.add(now, 1)
    if (hold && (limits.tpm || limits.spend) && !hold.held) {
      fl.calls++
      fl.tokens += hold.tokens
      fl.usd += hold.usd
      hold.held = true
    }
    this.dirty = true
    return null
  }

  /** A call has ended (or its usage is known): its hold no longer counts. Idempotent. */
  release(id: string, hold: Hold | undefined): void {
    if (!hold?.held) return
    hold.held = false
    const fl = this.state(id).inflight
    fl.calls--
    fl.tokens -= hold.tokens
    fl.usd -= hold.usd
    if (fl.calls <= 0) fl.calls = fl.tokens = fl.usd = 0 // no float residue once nothing is in flight
  }

  /** Count tokens and spend after a call (tokens are known only from the response); ends its hold. */
  record(id: string, limits: Limits, tokens: number, usd: number, hold?: Hold): void {
    this.release(id, hold)
    if (!limits.tpm && !limits.spend) return
    const now = this.now()
    const s = this.state(id)
    if (tokens > 0) s.tok.add(now, tokens)
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
      out[id] = { rpmUsed: s.req.sum, tpmUsed: s.tok.sum, spendUsd: s.spend?.usd ?? 0, spendPeriod: s.spend?.period ?? null }
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
      data[id] = { req: s.req.buckets, tok: s.tok.buckets, spend: s.spend }
    }
    const tmp = `${this.stateFile}.tmp`
    try {
      writeFileSync(tmp, JSON.stringify({ version: 2, savedAt: now, identities: data }), { mode: 0o600 })
      renameSync(tmp, this.stateFile)
    } catch {
      this.dirty = true
    }
  }

  private restore(): void {
    if (!this.stateFile) return
    let data: { version: number; identities: Record<string, { req?: Array<[number, number]>; tok?: Array<[number, number]>; spend?: IdentityState['spend'] }> }
    try {
      data = JSON.parse(readFileSync(this.stateFile, 'utf8'))
    } catch {
      return
    }
    if (data?.version !== 2 || typeof data.identities !== 'object') return
    const now = this.now()
    for (const [id, v] of Object.entries(data.identities)) {
      const s = this.state(id)
      for (const [w, saved] of [
        [s.req, v.req],
        [s.tok, v.tok],
      ] as const) {
        for (const b of saved ?? []) {
          if (Array.isArray(b) && typeof b[0] === 'number' && typeof b[1] === 'number') {
            w.buckets.push([b[0], b[1]])
            w.sum += b[1]
          }
        }
        w.prune(now)
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
