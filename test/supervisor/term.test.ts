// cordon term's Ink components with ink-testing-library: panels render what an operator needs,
// keys approve / persist (after confirmation) / deny the selected request, the log filter, help,
// and batched rendering at 1,000 events per second.
import t from 'tap'
import React from 'react'
import { EventEmitter } from 'node:events'
import { render } from 'ink-testing-library'
import { App, HealthPanel, EgressPanel, groupDecisions, filterLogs } from '../../lib/supervisor/term/app.js'
import { TermStore, classify, type TermState } from '../../lib/supervisor/term/store.js'
import type { LogEntry } from '../../lib/supervisor/logs.js'

const h = React.createElement
const tick = (ms = 120) => new Promise((r) => setTimeout(r, ms))
/** Wait until cond() holds (Ink renders asynchronously; a fixed sleep is flaky on a loaded box). */
async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms
  while (!cond() && Date.now() < end) await tick(20)
}
/** Wait until Ink listens on stdin: it attaches its 'readable' listener in an effect after the
 *  first render, and a key written before that is lost. A fixed sleep lost keys on a loaded CI box. */
async function inputReady(app: { stdin: EventEmitter }, t: { ok(v: unknown, m?: string): unknown }): Promise<void> {
  await until(() => app.stdin.listenerCount('readable') > 0)
  t.ok(app.stdin.listenerCount('readable') > 0, 'Ink listens on stdin')
  await tick(20) // the handler's own effect runs in the same commit; let it settle
}

function fakeStore(state: Partial<TermState>) {
  const calls: string[] = []
  const s = Object.assign(new EventEmitter(), {
    state: { pending: [], decisions: [], calls: [], channels: [], conversations: [], logs: [], events: 0, ...state } as TermState,
    approve: async (id: string, persist: boolean) => {
      calls.push(`approve ${id} ${persist}`)
      return 'ok'
    },
    deny: async (id: string) => {
      calls.push(`deny ${id}`)
      return 'ok'
    },
  })
  return { store: s, calls }
}

const entry = (component: string, raw: Record<string, unknown>, source: 'log' | 'audit' = 'log'): LogEntry => ({ t: Date.now(), component, source, level: 'info', msg: String(raw.msg ?? ''), raw })

t.test('health panel shows each component with status, pid, restarts and listen address', async (t) => {
  const { lastFrame, unmount } = render(
    h(HealthPanel, {
      components: [
        { name: 'engine', pid: 101, status: 'healthy', health: { ok: true }, restarts: 2, listen: '127.0.0.1:3128', adopted: false, uptimeMs: 65_000 },
        { name: 'router', status: 'restarting', health: { ok: false }, restarts: 1, adopted: false },
      ],
    }),
  )
  const f = lastFrame()!
  t.match(f, /engine\s+healthy\s+pid 101\s+up 1m\s+↻2\s+127\.0\.0\.1:3128/)
  t.match(f, /router\s+restarting\s+pid -/)
  unmount()
})

t.test('egress panel groups repeated background denials', async (t) => {
  const d = (host: string, decision: string) => ({ t: Date.now(), host, port: 443, decision, binary: '/usr/bin/node' })
  const ds = [d('telemetry.example', 'deny'), d('telemetry.example', 'deny'), d('telemetry.example', 'deny'), d('inference.local', 'allow')]
  t.same(groupDecisions(ds).map((x) => [x.host, x.n]), [['telemetry.example', 3], ['inference.local', 1]])
  const r = render(h(EgressPanel, { decisions: ds, rows: 5 }))
  const f = r.lastFrame()!
  r.unmount()
  t.match(f, /deny\s+telemetry\.example:443 ×3/)
  t.match(f, /allow\s+inference\.local:443/)
})

t.test('keys: a approves for the session, A asks then persists, d denies', async (t) => {
  const pending = [
    { id: 'p1', host: 'pypi.org', port: 443, binary: '/usr/bin/pip', pid: 7 },
    { id: 'p2', host: 'evil.example', port: 443, binary: '/usr/bin/curl', pid: 8 },
  ]
  const { store, calls } = fakeStore({ pending })
  const app = render(h(App, { store, rows: 40 }))
  await inputReady(app, t)
  t.match(app.lastFrame()!, /› p1\s+pypi\.org:443\s+\/usr\/bin\/pip \(pid 7\)/)
  app.stdin.write('a')
  await until(() => calls.length >= 1)
  t.same(calls, ['approve p1 false'])
  app.stdin.write('j') // select p2
  await until(() => /› p2\s+evil\.example/.test(app.lastFrame()!))
  t.match(app.lastFrame()!, /› p2\s+evil\.example/)
  app.stdin.write('d')
  await until(() => calls.length >= 2)
  t.same(calls.at(-1), 'deny p2')
  app.stdin.write('k')
  await until(() => /› p1\s+pypi\.org/.test(app.lastFrame()!))
  app.stdin.write('A')
  await until(() => /persist pypi\.org:443\? y\/n/.test(app.lastFrame()!))
  t.match(app.lastFrame()!, /persist pypi\.org:443\? y\/n/)
  t.equal(calls.length, 2, 'nothing persisted before the confirmation')
  app.stdin.write('n')
  await until(() => !/persist pypi\.org:443\? y\/n/.test(app.lastFrame()!))
  await tick()
  t.equal(calls.length, 2, 'n cancels')
  app.stdin.write('A')
  await until(() => /persist pypi\.org:443\? y\/n/.test(app.lastFrame()!))
  app.stdin.write('y')
  await until(() => calls.length >= 3)
  t.same(calls.at(-1), 'approve p1 true')
  app.unmount()
})

t.test('? shows help, / filters the log pane', async (t) => {
  const logs = [entry('engine', { msg: 'gate listening' }), entry('router', { msg: 'config reloaded' }), entry('engine', { decision: 'deny', host: 'x.example', type: 'decision' }, 'audit')]
  logs[2]!.msg = 'deny x.example'
  const { store } = fakeStore({ logs })
  const app = render(h(App, { store, rows: 40 }))
  await inputReady(app, t)
  t.match(app.lastFrame()!, /config reloaded/)
  app.stdin.write('?')
  await tick()
  t.match(app.lastFrame()!, /approve and persist to the policy file/)
  app.stdin.write('x')
  await tick()
  app.stdin.write('/')
  await tick()
  for (const c of 'denied') app.stdin.write(c)
  await tick()
  app.stdin.write('\r')
  await tick()
  const f = app.lastFrame()!
  t.match(f, /filter: denied/)
  t.match(f, /DENY\s+deny x\.example/)
  t.notMatch(f, /config reloaded/)
  t.equal(filterLogs(logs, 'component:router').length, 1)
  app.unmount()
})

t.test('audit records become egress decisions, inference calls and conversations', async (t) => {
  t.equal(classify(entry('engine', { type: 'decision', decision: 'deny', host: 'a.example', port: 443, binary: '/bin/curl' }, 'audit')).decision?.host, 'a.example')
  const c = classify(entry('router', { route: 'openai', model: 'gpt-4o-mini', upstream_model: 'gpt-4o-mini', status: 200, tokens_in: 10, tokens_out: 5, total_ms: 70 }, 'audit')).call!
  t.same([c.route, c.model, c.tokensIn, c.tokensOut, c.status], ['openai', 'gpt-4o-mini', 10, 5, 200])
  t.equal(classify(entry('gateway', { event: 'inbound', conversation: 'tg:1', channel: 'tg' }, 'audit')).conv?.conversation, 'tg:1')
})

t.test('1,000 events per second: renders are batched, nothing dropped from the count', async (t) => {
  const store = new TermStore({ supervisorSocket: '/nonexistent/s.sock', engineSocket: '/nonexistent/e.sock', gatewaySocket: '/nonexistent/g.sock', logDir: '/nonexistent', auditFiles: [], pollMs: 60_000, flushMs: 100 })
  let changes = 0
  store.on('change', () => changes++)
  store.start()
  const app = render(h(App, { store, rows: 40 }))
  const frames0 = app.frames.length
  const t0 = Date.now()
  for (let i = 0; i < 20; i++) {
    const batch: LogEntry[] = []
    for (let j = 0; j < 50; j++) batch.push(entry('engine', { type: 'decision', decision: j % 2 ? 'allow' : 'deny', host: `h${j}.example`, port: 443, msg: `e${i}.${j}` }, 'audit'))
    store.push(batch)
    await tick(50)
  }
  await tick(250)
  const elapsed = Date.now() - t0
  t.equal(store.state.events, 1000, 'every event counted')
  t.equal(store.state.decisions.length, 500, 'the panel keeps a bounded ring')
  t.ok(changes <= Math.ceil(elapsed / 100) + 3, `${changes} store publications for 1,000 events in ${elapsed} ms (<= one per 100 ms)`)
  const frames = app.frames.length - frames0
  t.ok(frames <= changes + 3, `${frames} frames rendered`)
  t.match(app.lastFrame()!, /1000 events/)
  app.unmount()
  store.stop()
})
