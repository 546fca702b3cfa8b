/**
 * CLI of the policy engine: `cordon engine` (run it), `cordon approvals`, `cordon approve ID
 * [--persist]`, `cordon deny ID`, `cordon logs [--follow] [--denied]`, and `cordon policy
 * show|diff|reload` (added to the `policy` command through registerPolicyControl).
 * Everything but `engine` talks to the engine's control API (docs/engine.md).
 */
import fs from 'node:fs'
import { Command, Option } from 'commander'
import { Engine, parseHostPort, type HostPort, type Identify } from '../engine/engine.js'
import { startControl } from '../engine/control.js'
import { controlTarget, requestJson, requestRaw, DEFAULT_ENGINE_SOCKET } from '../engine/client.js'
import { tailFile } from '../engine/audit.js'
import * as kernelRelay from '../kernel/relay.js'

function collect(v: string, prev: string[]): string[] {
  return [...prev, v]
}

function fail(msg: string, code = 1): never {
  throw Object.assign(new Error(msg), { exitCode: code })
}

async function call<T>(opts: { control?: string }, method: string, path: string, body?: unknown): Promise<T> {
  const r = await requestJson<T & { error?: string }>(controlTarget(opts), method, path, body)
  if (r.status >= 400) {
    const b = r.body as { error?: string; errors?: string[] }
    fail(b?.error ?? (b?.errors ? `policy rejected, the old one stays in force:\n  ${b.errors.join('\n  ')}` : `engine answered ${r.status}`))
  }
  return r.body
}

const controlOpt = () => new Option('--control <socket>', `engine control socket (or http://host:port with CORDON_ENGINE_TOKEN); default $CORDON_ENGINE_SOCKET or ${DEFAULT_ENGINE_SOCKET}`)

interface AuditLine {
  time?: string
  type?: string
  id?: string
  decision?: string
  host?: string
  port?: number
  method?: string | null
  path?: string | null
  rule?: string | null
  reason?: string
  pid?: number | null
  binary?: string | null
  sandbox?: string
  pending_id?: string
  decision_id?: string
  bytes_in?: number
  bytes_out?: number
  duration_ms?: number
  [k: string]: unknown
}

export function formatAuditLine(line: string): string | null {
  let r: AuditLine
  try {
    r = JSON.parse(line)
  } catch {
    return null
  }
  const t = (r.time ?? '').replace('T', ' ').replace(/\.\d+Z$/, 'Z')
  if (r.type === 'decision') {
    const who = r.pid ? ` pid ${r.pid}${r.binary ? ` ${r.binary}` : ''}` : ''
    const what = `${r.method ? r.method + ' ' : ''}${r.host}:${r.port}${r.path ? r.path : ''}`
    const why = r.decision === 'pending' ? `waiting for the operator: cordon approve ${r.pending_id}` : (r.reason ?? '')
    return `${t} ${String(r.decision).toUpperCase().padEnd(7)} ${what} [${r.sandbox}${who}] ${why} (${r.id})`
  }
  if (r.type === 'end') return `${t} end     ${r.decision_id} in ${r.bytes_in} B out ${r.bytes_out} B ${r.duration_ms} ms${r.error ? ` (${r.error})` : ''}`
  if (r.type === 'reload') return `${t} reload  ${r.ok ? (r.changed ? `applied ${String(r.hash).slice(0, 12)}` : 'unchanged') : `REJECTED, old policy stays: ${(r.errors as string[]).join('; ')}`} (${r.trigger})`
  if (r.type === 'reopen') return `${t} reopen  the audit log continues in a new file (${r.trigger})`
  if (r.type === 'approval') return `${t} ${r.action === 'allow' ? 'APPROVE' : 'DENY   '} ${r.rule}${r.persist ? ' (persisted to the policy)' : ' (this session)'} by ${r.by} (${r.pending_id})`
  return `${t} ${r.type} ${JSON.stringify(r)}`
}

async function runEngine(o: Record<string, unknown>): Promise<void> {
  const services: Record<string, HostPort> = {}
  for (const s of (o.service as string[]) ?? []) {
    const eq = s.indexOf('=')
    if (eq < 1) fail(`--service: expected NAME=HOST:PORT, got "${s}"`)
    services[s.slice(0, eq)] = parseHostPort(s.slice(eq + 1), '--service')
  }
  const hosts: Record<string, string[]> = {}
  for (const s of (o.resolve as string[]) ?? []) {
    const eq = s.indexOf('=')
    if (eq < 1) fail(`--resolve: expected NAME=ADDRESS[,ADDRESS], got "${s}"`)
    hosts[s.slice(0, eq).toLowerCase()] = s.slice(eq + 1).split(',')
  }
  let token: string | null = process.env.CORDON_ENGINE_TOKEN ?? null
  if (o.controlTokenFile) token = fs.readFileSync(String(o.controlTokenFile), 'utf8').trim()
  // SIGTERM/SIGINT stop the engine from the moment it exists: one that arrives while it is still
  // starting lets the start finish (or fail), then stops it the same way (listeners closed, sockets
  // removed, the audit log closed with its stop record). A second signal while stopping is ignored.
  let signalled: NodeJS.Signals | null = null
  let onStop: () => void = () => undefined
  const stopRequested = new Promise<void>((r) => (onStop = r))
  const onSignal = (sig: NodeJS.Signals) => {
    if (signalled) return void process.stderr.write(`cordon engine: ${sig} while stopping (after ${signalled}); still stopping\n`)
    signalled = sig
    onStop()
  }
  process.on('SIGTERM', onSignal)
  process.on('SIGINT', onSignal)
  let control: Awaited<ReturnType<typeof startControl>> | null = null
  const engine = new Engine({
    policyFile: String(o.policy),
    listen: parseHostPort(String(o.listen), '--listen'),
    router: o.router ? parseHostPort(String(o.router), '--router') : null,
    gateway: o.gateway ? parseHostPort(String(o.gateway), '--gateway') : null,
    services,
    hosts,
    audit: (o.audit as string) ?? null,
    auditSync: o.auditSync as 'always' | 'none',
    stateDir: (o.state as string) ?? null,
    askTimeoutMs: Number(o.askTimeout) * 1000,
    sandboxId: o.sandboxId as string | undefined,
    netnsRegistry: o.netnsRegistry as string | undefined,
    identify: o.identify as Identify,
    identifyVia: (o.identifyVia as string) ?? undefined,
    watch: o.watch !== false,
    headersTimeoutMs: Number(o.headersTimeout) * 1000,
    relay: o.relay as 'splice' | 'node',
    socks: o.socks ? parseHostPort(String(o.socks), '--socks') : null,
    listenUnix: (o.listenUnix as string) ?? null,
  })
  let closing: Promise<void> | null = null
  const close = () =>
    (closing ??= (async () => {
      // the control API first (its listeners and followers), bounded: a control client must not hold the stop
      if (control) await Promise.race([control.close().catch(() => undefined), new Promise((r) => setTimeout(r, 1_000).unref())])
      await engine.stop() // bounded waits of its own
    })())
  let gate: HostPort
  try {
    gate = await engine.start()
  } catch (e) {
    await close() // what start() opened before it failed
    fail(`cannot start the engine: ${(e as Error).message}`)
  }
  if (!signalled) {
    try {
      control = await startControl(engine, {
        socket: o.control === 'none' ? null : String(o.control ?? process.env.CORDON_ENGINE_SOCKET ?? DEFAULT_ENGINE_SOCKET),
        tcp: o.controlTcp ? parseHostPort(String(o.controlTcp), '--control-tcp') : null,
        token,
      })
    } catch (e) {
      await close()
      fail(`cannot start the control API: ${(e as Error).message}`)
    }
  }
  const exit = async () => {
    try {
      await close()
    } catch (e) {
      process.stderr.write(`cordon engine: stopping failed: ${(e as Error).message}\n`)
      process.exitCode = 1
    }
    // process.exit() joins the thread pool, where the splice relay runs while it holds a tunnel:
    // after stop() it holds none; should it still, exit at once rather than never
    if (kernelRelay.relayed() > 0) {
      process.stderr.write(`cordon engine: the splice relay still holds ${kernelRelay.relayed()} tunnel(s) after stopping; exiting hard\n`)
      process.kill(process.pid, 'SIGKILL')
    }
    process.exit()
  }
  // a signal that came while starting waits in libuv's signal pipe until the loop polls; the start
  // can complete in promise callbacks alone, so pass through one poll before deciding
  await new Promise((r) => setImmediate(r))
  if (signalled) return exit() // stopped while starting: no ready line
  const ready = {
    ready: true,
    pid: process.pid,
    gate,
    control: o.control === 'none' ? null : (o.control ?? process.env.CORDON_ENGINE_SOCKET ?? DEFAULT_ENGINE_SOCKET),
    control_tcp: control?.tcpAddress ?? null,
    socks: engine.socksAddress(),
    policy: engine.policy.file,
    hash: engine.policy.hash,
  }
  process.stdout.write(JSON.stringify(ready) + '\n')
  process.stderr.write(`cordon engine: gate on ${gate.host}:${gate.port}${engine.socksAddress() ? `, socks5 on ${engine.socksAddress()!.host}:${engine.socksAddress()!.port}` : ''}, control ${ready.control ?? 'off'}, policy ${engine.policy.file} (${engine.policy.network.mode}, unlisted: ${engine.policy.network.unlisted})\n`)
  void stopRequested.then(exit)
  process.on('SIGHUP', () => {
    // one signal for both, as logrotate's postrotate sends it: continue the audit trail in a new
    // file at its path, and re-read the policy (a reload of an unchanged policy changes nothing)
    if (o.audit && !engine.reopenAudit('SIGHUP')) process.stderr.write(`cordon engine: could not reopen the audit log ${String(o.audit)}; still writing to the old file\n`)
    const r = engine.reload('SIGHUP')
    if (!r.ok) process.stderr.write(`cordon engine: reload rejected, old policy stays:\n  ${r.errors!.join('\n  ')}\n`)
  })
  await new Promise(() => undefined)
}

export function registerPolicyControl(policyCmd: Command): void {
  policyCmd
    .command('show')
    .description('show the network policy the running engine enforces (rules, presets, session approvals)')
    .addOption(controlOpt())
    .option('--json', 'print JSON')
    .action(async (o: { control?: string; json?: boolean }) => {
      const p = await call<Record<string, unknown>>(o, 'GET', '/v1/policy')
      if (o.json) return void process.stdout.write(JSON.stringify(p, null, 2) + '\n')
      const rules = (l: Array<{ rule: string; origin: string }>) => l.map((r) => `    ${r.rule}  (${r.origin})`).join('\n') || '    (none)'
      const session = p.session as Array<{ id: string; action: string; rule: string; persisted: boolean }>
      process.stdout.write(
        [
          `policy ${p.file}  sha256 ${String(p.hash).slice(0, 12)}  generation ${p.generation}`,
          `  network: ${p.mode}, unlisted: ${p.unlisted}, presets: ${(p.presets as string[]).join(', ') || '(none)'}`,
          `  deny:`,
          rules(p.deny as Array<{ rule: string; origin: string }>),
          `  allow:`,
          rules(p.allow as Array<{ rule: string; origin: string }>),
          `  session approvals (lost when the engine stops unless it runs with --state; never in the policy file unless --persist):`,
          session.map((a) => `    ${a.action} ${a.rule}  (${a.id}${a.persisted ? ', persisted' : ''})`).join('\n') || '    (none)',
          '',
        ].join('\n'),
      )
    })
  policyCmd
    .command('diff')
    .description('compare the policy file on disk with the policy the engine enforces')
    .addOption(controlOpt())
    .action(async (o: { control?: string }) => {
      const d = await call<{ same: boolean; diff: string; valid: { ok: boolean; errors?: string[] } }>(o, 'GET', '/v1/policy/diff')
      if (d.same) return void process.stdout.write('the policy file on disk is the policy in force\n')
      process.stdout.write(d.diff)
      if (!d.valid.ok) process.stdout.write(`\nthe file on disk is invalid; a reload would be rejected:\n  ${d.valid.errors!.join('\n  ')}\n`)
      else process.stdout.write('\nrun `cordon policy reload` to apply it\n')
      process.exitCode = 1
    })
  policyCmd
    .command('reload')
    .description('re-read the policy file; an invalid file is rejected and the old policy stays')
    .addOption(controlOpt())
    .action(async (o: { control?: string }) => {
      const r = await call<{ changed: boolean; hash: string; generation: number }>(o, 'POST', '/v1/policy/reload')
      process.stdout.write(r.changed ? `reloaded: sha256 ${r.hash.slice(0, 12)}, generation ${r.generation}\n` : 'unchanged: the file is the policy in force\n')
    })
}

export function register(program: Command): void {
  program
    .command('engine')
    .description('run the policy engine: egress gate, approvals, audit log, control API')
    .requiredOption('--policy <file>', 'policy file (its network section)')
    .option('--listen <host:port>', 'where the egress gate listens (only sandboxes should reach it)', '127.0.0.1:3128')
    .option('--control <socket>', `control API unix socket ("none" to disable); default $CORDON_ENGINE_SOCKET or ${DEFAULT_ENGINE_SOCKET}`)
    .option('--control-tcp <host:port>', 'also serve the control API over TCP (bearer token required)')
    .option('--control-token-file <file>', 'bearer token for --control-tcp (or CORDON_ENGINE_TOKEN)')
    .option('--listen-unix <path>', 'also serve the gate on a unix socket (for sandboxes without root: lib/sandbox/relay.ts)')
    .option('--socks <host:port>', 'also serve SOCKS5 (CONNECT, no auth) for TCP that is not HTTP; same rules')
    .option('--router <host:port>', 'privacy router address; inference.local leads there')
    .option('--gateway <host:port>', 'gateway address; gateway.local leads there')
    .option('--service <name=host:port>', 'another always-reachable name (repeatable)', collect, [])
    .option('--audit <file>', 'append-only JSONL audit log')
    .addOption(new Option('--audit-sync <mode>', 'fdatasync each decision before it takes effect (always) or only write it (none)').choices(['always', 'none']).default('always'))
    .option('--state <dir>', 'persist session approvals and pending requests here (survive a restart)')
    .option('--ask-timeout <seconds>', 'how long an unlisted request waits for the operator', '60')
    .option('--resolve <name=addr>', 'resolve NAME to ADDR[,ADDR] instead of DNS (repeatable; pinning, tests)', collect, [])
    .option('--sandbox-id <id>', 'sandbox label for audit records of unregistered clients')
    .option('--netns-registry <dir>', 'directory where sandbox namespaces register their addresses', '/run/cordon/netns')
    .addOption(new Option('--identify <which>', 'whose decisions name the client pid/binary (a /proc walk once per client connection, within a time budget): all clients, sandboxes (a registered sandbox namespace; others on deny/ask), flagged (deny/ask only) or none').choices(['all', 'sandboxes', 'flagged', 'none']).default('sandboxes'))
    .option('--identify-via <socket>', "ask the lookup service on this unix socket which process a client is (a confined engine may not read /proc for it: `cordon up` serves it from the supervisor); an answer not in 100 ms is an unknown client")
    .option('--no-watch', 'do not watch the policy file (reload only via the control API or SIGHUP)')
    .option('--headers-timeout <seconds>', 'drop clients that do not send request headers in time', '15')
    .addOption(new Option('--relay <who>', 'who moves the bytes of an established tunnel: the kernel (splice, no copies through the engine) or Node').choices(['splice', 'node']).default('splice'))
    .action(runEngine)

  program
    .command('approvals')
    .description('list requests waiting for an operator decision')
    .addOption(controlOpt())
    .option('--json', 'print JSON')
    .action(async (o: { control?: string; json?: boolean }) => {
      const list = await call<Array<Record<string, unknown>>>(o, 'GET', '/v1/pending')
      if (o.json) return void process.stdout.write(JSON.stringify(list, null, 2) + '\n')
      if (!list.length) return void process.stdout.write('nothing is waiting for approval\n')
      for (const p of list) {
        process.stdout.write(
          `${p.id}  ${p.method ?? p.via} ${p.host}:${p.port}${p.path ?? ''}  by ${p.binary ?? '?'} (pid ${p.pid ?? '?'}) in ${p.sandbox}  ${p.count}x, ${p.waiting} waiting, until ${p.expires}\n`,
        )
      }
      process.stdout.write('approve with `cordon approve ID [--persist]`, refuse with `cordon deny ID`\n')
    })

  program
    .command('approve')
    .description('allow a pending request for this session (--persist: also add it to the policy file)')
    .argument('<id>', 'pending request id (see `cordon approvals`)')
    .option('--persist', "write the rule to the policy file's network.allow")
    .addOption(controlOpt())
    .action(async (id: string, o: { control?: string; persist?: boolean }) => {
      const a = await call<{ rule: string; persisted: boolean }>(o, 'POST', `/v1/pending/${encodeURIComponent(id)}/approve`, { persist: !!o.persist, by: `cli:${process.env.SUDO_USER ?? process.env.USER ?? process.getuid?.()}` })
      process.stdout.write(`approved ${a.rule} ${a.persisted ? '(added to the policy file)' : 'for this session'}\n`)
    })

  program
    .command('deny')
    .description('refuse a pending request (and repeats of it this session)')
    .argument('<id>', 'pending request id (see `cordon approvals`)')
    .addOption(controlOpt())
    .action(async (id: string, o: { control?: string }) => {
      const a = await call<{ rule: string }>(o, 'POST', `/v1/pending/${encodeURIComponent(id)}/deny`, { by: `cli:${process.env.SUDO_USER ?? process.env.USER ?? process.getuid?.()}` })
      process.stdout.write(`denied ${a.rule} for this session\n`)
    })

  program
    .command('logs')
    .description("show the engine's audit log")
    .addOption(controlOpt())
    .option('-f, --follow', 'keep printing new records')
    .option('--denied', 'only denied and pending decisions')
    .option('-n, --tail <n>', 'how many records to show first', '50')
    .option('--json', 'print the JSONL records as they are')
    .option('--summary', 'group decisions by destination (counts, first/last, which binaries): background noise in one line each')
    .option('--file <audit.jsonl>', 'read an audit file directly instead of asking the engine')
    .action(async (o: { control?: string; follow?: boolean; denied?: boolean; tail: string; json?: boolean; file?: string; summary?: boolean }) => {
      if (o.summary) {
        const lines = o.file
          ? tailFile(o.file, Number(o.tail) || 1_000_000)
          : await (async () => {
              const q = new URLSearchParams({ tail: o.tail, denied: o.denied ? '1' : '0' })
              const r = await requestJson<string>(controlTarget(o), 'GET', `/v1/audit?${q}`)
              return String(r.body).split('\n')
            })()
        const groups = new Map<string, { n: number; first: string; last: string; bins: Set<string>; reason: string }>()
        for (const l of lines) {
          if (!l.includes('"type":"decision"')) continue
          const r = JSON.parse(l) as AuditLine
          if (o.denied && r.decision !== 'deny' && r.decision !== 'pending') continue
          const k = `${String(r.decision).toUpperCase().padEnd(7)} ${r.host}:${r.port}`
          const g = groups.get(k) ?? { n: 0, first: r.time ?? '', last: '', bins: new Set<string>(), reason: r.reason ?? '' }
          g.n++
          g.last = r.time ?? ''
          if (r.binary) g.bins.add(r.binary)
          groups.set(k, g)
        }
        for (const [k, g] of [...groups].sort((a, b) => b[1].n - a[1].n)) {
          process.stdout.write(`${String(g.n).padStart(6)}x ${k}  ${g.first.slice(11, 19)}..${g.last.slice(11, 19)}${g.bins.size ? `  ${[...g.bins].join(', ')}` : ''}${g.reason && k.startsWith('DENY') ? `  (${g.reason})` : ''}\n`)
        }
        return
      }
      const out = (line: string) => {
        if (!line.trim()) return
        if (o.json) process.stdout.write(line + '\n')
        else {
          const f = formatAuditLine(line)
          if (f) process.stdout.write(f + '\n')
        }
      }
      if (o.file) {
        const keep = (l: string) => !o.denied || /"decision":"(deny|pending)"/.test(l)
        for (const l of tailFile(o.file, 1_000_000).filter(keep).slice(-Number(o.tail))) out(l)
        return
      }
      const q = new URLSearchParams({ tail: o.tail, follow: o.follow ? '1' : '0', denied: o.denied ? '1' : '0' })
      const res = await requestRaw(controlTarget(o), 'GET', `/v1/audit?${q}`)
      if ((res.statusCode ?? 0) >= 400) fail(`engine answered ${res.statusCode}`)
      let buf = ''
      for await (const c of res) {
        buf += (c as Buffer).toString('utf8')
        let nl: number
        while ((nl = buf.indexOf('\n')) >= 0) {
          out(buf.slice(0, nl))
          buf = buf.slice(nl + 1)
        }
      }
    })

  const policy = program.commands.find((c) => c.name() === 'policy') ?? program.command('policy').description('check, explain, show, diff and reload policies')
  registerPolicyControl(policy)
}
