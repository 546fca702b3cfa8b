/**
 * Prometheus metrics of the router (prom-client, a registry of its own), served on the control socket.
 *
 * The per-call counters (requests, tokens, spend) are tallied as plain numbers on the request path
 * and added to their prom-client counters when the registry is read (each counter's collect hook):
 * a prom-client inc, even on a labelled child, validates and hashes its labels on every call, four
 * times per request. The in-flight gauge is read from the router at scrape time the same way.
 */
import { Registry, Counter, Histogram, Gauge, collectDefaultMetrics } from 'prom-client'

/** Pending counts of one (route, sandbox, status), and its cached histogram children. */
export interface CallTally {
  readonly route: string
  readonly sandbox: string
  readonly status: string
  requests: number
  readonly duration: { observe(v: number): void }
  readonly ttfb: { observe(v: number): void }
}

/** Pending token and spend sums of one (route, sandbox). */
export interface UsageTally {
  readonly route: string
  readonly sandbox: string
  tokensIn: number
  tokensOut: number
  spendUsd: number
}

/** Tallies kept before the oldest are flushed and dropped (a bound on distinct label sets). */
const MAX_TALLIES = 20_000

export class RouterMetrics {
  readonly registry = new Registry()
  private calls = new Map<string, CallTally>()
  private usages = new Map<string, UsageTally>()
  readonly requests = new Counter({
    name: 'cordon_router_requests_total',
    help: 'Requests answered by the router, by route, sandbox and status',
    labelNames: ['route', 'sandbox', 'status'] as const,
    registers: [this.registry],
    collect: () => this.flushCalls(),
  })
  readonly tokens = new Counter({
    name: 'cordon_router_tokens_total',
    help: 'Tokens reported by upstream usage, by route, sandbox and direction',
    labelNames: ['route', 'sandbox', 'direction'] as const,
    registers: [this.registry],
    collect: () => this.flushUsage(),
  })
  readonly spend = new Counter({
    name: 'cordon_router_spend_usd_total',
    help: 'Spend in USD priced from the config price table',
    labelNames: ['route', 'sandbox'] as const,
    registers: [this.registry],
    collect: () => this.flushUsage(),
  })
  readonly ttfb = new Histogram({
    name: 'cordon_router_ttfb_seconds',
    help: 'Time from request to the first response byte sent to the client',
    labelNames: ['route'] as const,
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [this.registry],
  })
  readonly duration = new Histogram({
    name: 'cordon_router_request_duration_seconds',
    help: 'Total request duration',
    labelNames: ['route'] as const,
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
    registers: [this.registry],
  })
  readonly rejections = new Counter({
    name: 'cordon_router_limit_rejections_total',
    help: 'Requests refused by a rate limit or spend cap',
    labelNames: ['sandbox', 'kind'] as const,
    registers: [this.registry],
  })
  readonly upstreamErrors = new Counter({
    name: 'cordon_router_upstream_errors_total',
    help: 'Upstream failures (status >= 429 that triggered a fallback or was returned, connect errors, timeouts), by route and target',
    labelNames: ['route', 'target', 'reason'] as const,
    registers: [this.registry],
  })
  readonly fallbacks = new Counter({
    name: 'cordon_router_fallbacks_total',
    help: 'Times a request moved to the next target of its route',
    labelNames: ['route'] as const,
    registers: [this.registry],
  })
  readonly reloads = new Counter({
    name: 'cordon_router_config_reloads_total',
    help: 'Config reload attempts by result',
    labelNames: ['result'] as const,
    registers: [this.registry],
  })
  readonly inflight: Gauge = new Gauge({
    name: 'cordon_router_inflight_requests',
    help: 'Requests in flight',
    registers: [this.registry],
    collect: () => this.inflight.set(this.inflightNow()),
  })

  /** `inflightNow` gives the number of requests in flight when the gauge is read. */
  constructor(
    defaults = true,
    private readonly inflightNow: () => number = () => 0,
  ) {
    if (defaults) collectDefaultMetrics({ register: this.registry, prefix: 'cordon_router_' })
  }

  /** The tally of one (route, sandbox, status); the caller adds to `requests` and observes. */
  call(route: string, sandbox: string, status: number): CallTally {
    const key = `${route}\0${sandbox}\0${status}`
    let t = this.calls.get(key)
    if (t === undefined) {
      if (this.calls.size >= MAX_TALLIES) {
        this.flushCalls()
        this.calls.clear()
      }
      t = { route, sandbox, status: String(status), requests: 0, duration: this.duration.labels(route), ttfb: this.ttfb.labels(route) }
      this.calls.set(key, t)
    }
    return t
  }

  /** The token and spend tally of one (route, sandbox); the caller adds to it. */
  usage(route: string, sandbox: string): UsageTally {
    const key = `${route}\0${sandbox}`
    let t = this.usages.get(key)
    if (t === undefined) {
      if (this.usages.size >= MAX_TALLIES) {
        this.flushUsage()
        this.usages.clear()
      }
      t = { route, sandbox, tokensIn: 0, tokensOut: 0, spendUsd: 0 }
      this.usages.set(key, t)
    }
    return t
  }

  private flushCalls(): void {
    for (const t of this.calls.values()) {
      if (!t.requests) continue
      this.requests.inc({ route: t.route, sandbox: t.sandbox, status: t.status }, t.requests)
      t.requests = 0
    }
  }

  private flushUsage(): void {
    for (const t of this.usages.values()) {
      if (t.tokensIn) this.tokens.inc({ route: t.route, sandbox: t.sandbox, direction: 'in' }, t.tokensIn)
      if (t.tokensOut) this.tokens.inc({ route: t.route, sandbox: t.sandbox, direction: 'out' }, t.tokensOut)
      if (t.spendUsd) this.spend.inc({ route: t.route, sandbox: t.sandbox }, t.spendUsd)
      t.tokensIn = t.tokensOut = t.spendUsd = 0
    }
  }
}
