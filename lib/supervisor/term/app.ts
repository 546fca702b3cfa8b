/**
 * `cordon term`: the operator's terminal (Ink 5 + React 18). Written with React.createElement
 * (`h`) so it compiles without JSX settings. Panels are pure components over TermState; the App
 * wires keys to TermActions. Every action here is also a CLI command:
 *   a / A  -> cordon approve ID [--persist]     d -> cordon deny ID
 *   health -> cordon status                      logs -> cordon logs [--grep]
 *   channels -> cordon gateway status
 */
import React, { useEffect, useRef, useState } from 'react'
import { Box, Text, useApp, useInput, useStdout } from 'ink'
import type { EventEmitter } from 'node:events'
import type { LogEntry } from '../logs.js'
import { formatTime, isDenied } from '../logs.js'
import type { Channel, Conversation, Decision, InferenceCall, Pending, TermActions, TermState } from './store.js'
import type { ComponentStatus } from '../supervisor.js'

const h = React.createElement

const hhmmss = (t: number) => formatTime(t).slice(11, 19)
function ago(ms?: number) {
  if (ms === undefined) return '-'
  const s = Math.floor(ms / 1000)
  if (s < 60) return `${s}s`
  if (s < 3600) return `${Math.floor(s / 60)}m`
  return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`
}

function Panel(props: { title: string; focus?: boolean; children?: React.ReactNode; width?: string | number; grow?: number; height?: number }) {
  return h(
    Box,
    { flexDirection: 'column', borderStyle: 'round', borderColor: props.focus ? 'cyan' : 'gray', paddingX: 1, width: props.width, flexGrow: props.grow, height: props.height, overflow: 'hidden' },
    h(Text, { bold: true, color: props.focus ? 'cyan' : undefined }, props.title),
    props.children,
  )
}

export function HealthPanel({ components, error }: { components: ComponentStatus[]; error?: string }) {
  return h(
    Panel,
    { title: 'Health', width: 70 },
    error ? h(Text, { color: 'red' }, error) : null,
    ...components.map((c) =>
      h(
        Text,
        { key: c.name },
        h(Text, { color: c.status === 'healthy' || c.status === 'running' ? 'green' : c.status === 'restarting' || c.status === 'starting' || c.status === 'unhealthy' ? 'yellow' : 'red' }, c.status === 'healthy' || c.status === 'running' ? '●' : '○'),
        ` ${c.name.padEnd(8)} ${c.status.padEnd(10)} pid ${String(c.pid ?? '-').padEnd(7)} up ${ago(c.uptimeMs).padEnd(6)} ↻${c.restarts}${c.listen ? `  ${c.listen}` : ''}`,
      ),
    ),
  )
}

export function ApprovalsPanel({ pending, selected, confirm, error }: { pending: Pending[]; selected: number; confirm?: string; error?: string }) {
  return h(
    Panel,
    { title: `Pending approvals (${pending.length})  a approve · A persist · d deny`, grow: 1, focus: pending.length > 0 },
    error ? h(Text, { color: 'red' }, error) : null,
    pending.length === 0 ? h(Text, { dimColor: true }, 'nothing waiting') : null,
    ...pending.slice(0, 6).map((p, i) =>
      h(
        Text,
        { key: p.id, inverse: i === selected },
        `${i === selected ? '›' : ' '} ${p.id}  ${p.host}:${p.port}${p.method ? ` ${p.method}` : ''}${p.path ? ` ${p.path}` : ''}  ${p.binary ?? '?'}${p.pid ? ` (pid ${p.pid})` : ''}${p.count && p.count > 1 ? ` ×${p.count}` : ''}`,
      ),
    ),
    confirm ? h(Text, { color: 'yellow', bold: true }, confirm) : null,
  )
}

/** Group consecutive decisions with the same host and outcome (background noise stays quiet). */
export function groupDecisions(ds: Decision[]): Array<Decision & { n: number }> {
  const out: Array<Decision & { n: number }> = []
  for (const d of ds) {
    const last = out[out.length - 1]
    if (last && last.host === d.host && last.port === d.port && last.decision === d.decision) {
      last.n++
      last.t = d.t
    } else out.push({ ...d, n: 1 })
  }
  return out
}

export function EgressPanel({ decisions, rows }: { decisions: Decision[]; rows: number }) {
  const g = groupDecisions(decisions).slice(-rows)
  return h(
    Panel,
    { title: 'Egress decisions', grow: 1 },
    g.length === 0 ? h(Text, { dimColor: true }, 'no traffic yet') : null,
    ...g.map((d, i) =>
      h(
        Text,
        { key: i, wrap: 'truncate' },
        h(Text, { dimColor: true }, hhmmss(d.t) + ' '),
        h(Text, { color: d.decision === 'allow' ? 'green' : d.decision === 'pending' ? 'yellow' : 'red' }, d.decision.padEnd(7)),
        ` ${d.host}${d.port ? `:${d.port}` : ''}${d.n > 1 ? ` ×${d.n}` : ''}  ${d.binary ?? ''}${d.rule ? `  [${d.rule}]` : ''}`,
      ),
    ),
  )
}

export function InferencePanel({ calls, rows, limits }: { calls: InferenceCall[]; rows: number; limits?: string }) {
  const c = calls.slice(-rows)
  return h(
    Panel,
    { title: `Inference calls${limits ? `  ${limits}` : ''}`, grow: 1 },
    c.length === 0 ? h(Text, { dimColor: true }, 'no calls yet') : null,
    ...c.map((x, i) =>
      h(
        Text,
        { key: i, wrap: 'truncate' },
        h(Text, { dimColor: true }, hhmmss(x.t) + ' '),
        h(Text, { color: x.status && x.status < 300 ? 'green' : 'red' }, String(x.status ?? '-').padEnd(4)),
        `${(x.route ?? '-').padEnd(10)} ${(x.model ?? '-').padEnd(16)} in ${x.tokensIn ?? '-'} out ${x.tokensOut ?? '-'}  ${x.ms !== undefined ? `${Math.round(x.ms)} ms` : ''}${x.error ? `  ${x.error}` : ''}`,
      ),
    ),
  )
}

export function GatewayPanel({ channels, conversations, queues, rows }: { channels: Channel[]; conversations: Conversation[]; queues?: { inbound?: number; outbound?: number }; rows: number }) {
  const latest = new Map<string, Conversation & { n: number }>()
  for (const c of conversations) latest.set(c.conversation, { ...c, n: (latest.get(c.conversation)?.n ?? 0) + 1 })
  const recent = [...latest.values()].sort((a, b) => b.t - a.t).slice(0, rows)
  return h(
    Panel,
    { title: `Gateway${queues ? `  queued in ${queues.inbound ?? 0} · out ${queues.outbound ?? 0}` : ''}`, grow: 1 },
    h(Text, { wrap: 'truncate' }, channels.length ? channels.map((c) => `${c.state === 'healthy' ? '●' : '○'} ${c.name}${c.type ? `(${c.type})` : ''}`).join('  ') : 'channels: -'),
    ...recent.map((c) => h(Text, { key: c.conversation, wrap: 'truncate' }, h(Text, { dimColor: true }, hhmmss(c.t) + ' '), `${c.conversation}  ${c.event}${c.outcome ? ` ${c.outcome}` : ''}  (${c.n} events)`)),
  )
}

export function filterLogs(entries: LogEntry[], filter: string): LogEntry[] {
  if (!filter) return entries
  const f = filter.toLowerCase()
  if (f === 'denied') return entries.filter(isDenied)
  const m = /^component:(\S+)$/.exec(f)
  if (m) return entries.filter((e) => e.component === m[1])
  return entries.filter((e) => e.msg.toLowerCase().includes(f) || e.component.includes(f) || JSON.stringify(e.raw).toLowerCase().includes(f))
}

export function LogPane({ entries, filter, editing, rows }: { entries: LogEntry[]; filter: string; editing: boolean; rows: number }) {
  const shown = filterLogs(entries, filter).slice(-rows)
  return h(
    Panel,
    { title: `Logs${filter || editing ? `  filter: ${filter}${editing ? '▌' : ''}` : '  (/ to filter)'}` },
    ...shown.map((e, i) =>
      h(
        Text,
        { key: i, wrap: 'truncate' },
        h(Text, { dimColor: true }, hhmmss(e.t) + ' '),
        h(Text, { color: e.component === 'engine' ? 'cyan' : e.component === 'router' ? 'magenta' : e.component === 'gateway' ? 'yellow' : e.component === 'agent' ? 'green' : 'blue' }, e.component.padEnd(8)),
        h(Text, { color: isDenied(e) ? 'red' : e.level === 'error' || e.level === 'fatal' ? 'red' : e.level === 'warn' ? 'yellow' : undefined }, ` ${e.source === 'audit' ? (isDenied(e) ? 'DENY ' : 'AUDIT') : e.level.toUpperCase().padEnd(5)} `),
        e.msg,
      ),
    ),
  )
}

export const HELP = [
  'cordon term — keys',
  '  ↑/↓ or j/k   select a pending approval',
  '  a            approve it for this session      (cordon approve ID)',
  '  A            approve and persist to the policy file, after y/n   (cordon approve ID --persist)',
  '  d            deny it                          (cordon deny ID)',
  '  /            filter the log pane (text, "denied", "component:NAME"); Enter keeps, Esc clears',
  '  ?            this help (any key closes)',
  '  q or Ctrl-C  quit (cordon keeps running)',
  'CLI equivalents: cordon status, cordon logs -f, cordon approvals, cordon gateway status',
]

export function Help() {
  return h(Panel, { title: 'Help', focus: true }, ...HELP.map((l, i) => h(Text, { key: i }, l)))
}

export interface Store extends EventEmitter, TermActions {
  state: TermState
}

export function App({ store, rows: rowsProp }: { store: Store; rows?: number }) {
  const { exit } = useApp()
  const { stdout } = useStdout()
  const [state, setState] = useState<TermState>(store.state)
  const [sel, setSel] = useState(0)
  const [help, setHelp] = useState(false)
  const [filter, setFilter] = useState('')
  const [editing, setEditing] = useState(false)
  const [confirm, setConfirm] = useState<Pending | undefined>()

  useEffect(() => {
    const on = (s: TermState) => setState(s)
    store.on('change', on)
    setState(store.state)
    return () => {
      store.off('change', on)
    }
  }, [store])

  const pending = state.pending
  const selected = Math.min(sel, Math.max(0, pending.length - 1))
  const cur = pending[selected]
  // The key handler reads the values of the latest render through a ref: Ink re-registers the
  // handler in an effect, after the frame is drawn, so a key pressed right after a frame would
  // otherwise act on the previous selection (approve or deny the wrong request).
  const live = useRef({ help, editing, confirm, pending, cur })
  live.current = { help, editing, confirm, pending, cur }

  useInput((input, key) => {
    const { help, editing, confirm, pending, cur } = live.current
    if (help) {
      setHelp(false)
      return
    }
    if (editing) {
      if (key.return) setEditing(false)
      else if (key.escape) {
        setFilter('')
        setEditing(false)
      } else if (key.backspace || key.delete) setFilter((f) => f.slice(0, -1))
      else if (input && !key.ctrl && !key.meta) setFilter((f) => f + input)
      return
    }
    if (confirm) {
      if (input === 'y' || input === 'Y') void store.approve(confirm.id, true)
      setConfirm(undefined)
      return
    }
    if (input === 'q' || (key.ctrl && input === 'c')) return exit()
    if (input === '?') return setHelp(true)
    if (input === '/') return setEditing(true)
    if (key.upArrow || input === 'k') return setSel((s) => Math.max(0, s - 1))
    if (key.downArrow || input === 'j') return setSel((s) => Math.min(pending.length - 1, s + 1))
    if (!cur) return
    if (input === 'a') void store.approve(cur.id, false)
    else if (input === 'A' || input === 'p') setConfirm(cur)
    else if (input === 'd') void store.deny(cur.id)
  })

  const rows = rowsProp ?? stdout?.rows ?? 40
  const small = Math.max(3, Math.floor((rows - 22) / 2))
  if (help) return h(Help)
  return h(
    Box,
    { flexDirection: 'column' },
    h(
      Box,
      null,
      h(HealthPanel, { components: state.health?.components ?? [], error: state.healthError }),
      h(ApprovalsPanel, { pending, selected, error: state.pendingError, confirm: confirm ? `persist ${confirm.host}:${confirm.port}? y/n` : undefined }),
    ),
    h(Box, null, h(EgressPanel, { decisions: state.decisions, rows: small }), h(InferencePanel, { calls: state.calls, rows: small, limits: state.limits })),
    h(GatewayPanel, { channels: state.channels, conversations: state.conversations, queues: state.gatewayQueues, rows: 3 }),
    h(LogPane, { entries: state.logs, filter, editing, rows: small }),
    h(Text, { dimColor: true, wrap: 'truncate' }, `${state.message ? `${state.message}  ·  ` : ''}${state.events} events  ·  ? help  ·  q quit`),
  )
}
