/** Prometheus metrics of the router (prom-client, a registry of its own), served on the control socket. */
import { Registry, Counter, Histogram, Gauge, collectDefaultMetrics } from 'prom-client'

export class RouterMetrics {
  readonly registry = new Registry()
  readonly requests = new Counter({
    name: 'cordon_router_requests_total',
    help: 'Requests answered by the router, by route, sandbox and status',
    labelNames: ['route', 'sandbox', 'status'] as const,
    registers: [this.registry],
  })
  readonly tokens = new Counter({
    name: 'cordon_router_tokens_total',
    help: 'Tokens reported by upstream usage, by route, sandbox and direction',
    labelNames: ['route', 'sandbox', 'direction'] as const,
    registers: [this.registry],
  })
  readonly spend = new Counter({
    name: 'cordon_router_spend_usd_total',
    help: 'Spend in USD priced from the config price table',
    labelNames: ['route', 'sandbox'] as const,
    registers: [this.registry],
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
  readonly inflight = new Gauge({
    name: 'cordon_router_inflight_requests',
    help: 'Requests in flight',
    registers: [this.registry],
  })

  constructor(defaults = true) {
    if (defaults) collectDefaultMetrics({ register: this.registry, prefix: 'cordon_router_' })
  }
}
