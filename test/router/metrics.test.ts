/**
 * The per-call tallies reach the Prometheus counters when the registry is read, once: a second
 * scrape does not count them again, and counts made between scrapes add up. The in-flight gauge
 * shows the router's count at scrape time.
 */
import t from 'tap'
import { RouterMetrics } from '../../lib/router/metrics.js'

let inflight = 3
const m = new RouterMetrics(false, () => inflight)
const c = m.call('main', 'sb1', 200)
c.requests += 2
c.duration.observe(0.002)
const u = m.usage('main', 'sb1')
u.tokensIn += 10
u.tokensOut += 5
u.spendUsd += 0.25

let text = await m.registry.metrics()
t.match(text, /cordon_router_requests_total\{route="main",sandbox="sb1",status="200"\} 2\n/)
t.match(text, /cordon_router_tokens_total\{route="main",sandbox="sb1",direction="in"\} 10\n/)
t.match(text, /cordon_router_tokens_total\{route="main",sandbox="sb1",direction="out"\} 5\n/)
t.match(text, /cordon_router_spend_usd_total\{route="main",sandbox="sb1"\} 0\.25\n/)
t.match(text, /cordon_router_inflight_requests 3\n/)
t.match(text, /cordon_router_request_duration_seconds_count\{route="main"\} 1\n/)

t.equal(m.call('main', 'sb1', 200), c, 'one tally per label set')
c.requests++
u.tokensIn += 1
inflight = 0
text = await m.registry.metrics()
t.match(text, /cordon_router_requests_total\{route="main",sandbox="sb1",status="200"\} 3\n/, 'counted once, then added to')
t.match(text, /cordon_router_tokens_total\{route="main",sandbox="sb1",direction="in"\} 11\n/)
t.match(text, /cordon_router_spend_usd_total\{route="main",sandbox="sb1"\} 0\.25\n/, 'spend not counted twice')
t.match(text, /cordon_router_inflight_requests 0\n/)
