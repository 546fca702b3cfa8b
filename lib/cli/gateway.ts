/**
 * CLI for the gateway: `cordon gateway` (run it), `cordon gateway status`,
 * `cordon pair list|approve CODE|deny CODE`, and `cordon chat` (the operator's local channel).
 * The operator commands talk to the gateway's control socket (or --control-url with a token).
 */
import { request, type RequestOptions } from 'node:http'
import os from 'node:os'
import path from 'node:path'
import { createInterface } from 'node:readline'
import type { Command } from 'commander'

export function defaultControlSocket(): string {
  if (process.env.CORDON_GATEWAY_CONTROL) return process.env.CORDON_GATEWAY_CONTROL
  if (process.env.CORDON_RUNTIME_DIR) return path.join(process.env.CORDON_RUNTIME_DIR, 'gateway.sock')
  if (process.getuid?.() === 0) return '/run/cordon/gateway.sock'
  const base = process.env.XDG_RUNTIME_DIR ?? path.join(os.tmpdir(), `cordon-${process.getuid?.() ?? 'user'}`)
  return path.join(base, 'cordon', 'gateway.sock')
}

function defaultStateDir(): string {
  if (process.getuid?.() === 0) return '/var/lib/cordon/gateway'
  return path.join(process.env.XDG_STATE_HOME ?? path.join(os.homedir(), '.local', 'state'), 'cordon', 'gateway')
}

interface CtlOpts {
  control?: string
  controlUrl?: string
}

/** Call the control API. */
export function control(opts: CtlOpts, method: string, p: string, body?: unknown, timeoutMs = 70000): Promise<{ status: number; data: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body)
    const headers: Record<string, string | number> = payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}
    let target: RequestOptions
    if (opts.controlUrl) {
      const u = new URL(p, opts.controlUrl)
      const tok = process.env.CORDON_GATEWAY_CONTROL_TOKEN
      if (tok) headers.authorization = `Bearer ${tok}`
      target = { hostname: u.hostname, port: u.port, path: u.pathname + u.search, method, headers }
    } else {
      target = { socketPath: opts.control ?? defaultControlSocket(), path: p, method, headers }
    }
    const req = request(target, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => {
        let data: Record<string, unknown> = {}
        try {
          data = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}')
        } catch {
          data = { error: Buffer.concat(chunks).toString('utf8') }
        }
        resolve({ status: res.statusCode ?? 0, data })
      })
    })
    req.setTimeout(timeoutMs, () => req.destroy(new Error('timed out')))
    req.on('error', (e: NodeJS.ErrnoException) => {
      const where = opts.controlUrl ?? opts.control ?? defaultControlSocket()
      if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED')
        reject(Object.assign(new Error(`cannot reach the gateway's control API at ${where} (${e.code}): is "cordon gateway" running? Pass --control SOCKET or set CORDON_GATEWAY_CONTROL.`), { exitCode: 2 }))
      else if (e.code === 'EACCES') reject(Object.assign(new Error(`permission denied on ${where}: the control socket is for the operator who runs the gateway`), { exitCode: 2 }))
      else reject(e)
    })
    if (payload) req.write(payload)
    req.end()
  })
}

function fail(msg: string, code = 1): never {
  throw Object.assign(new Error(msg), { exitCode: code })
}

function ctlOptions(cmd: Command): Command {
  return cmd
    .option('--control <socket>', `gateway control socket (default: ${defaultControlSocket()})`)
    .option('--control-url <url>', 'remote control API (bearer token from CORDON_GATEWAY_CONTROL_TOKEN)')
}

export function register(program: Command): void {
  const gw = program
    .command('gateway')
    .description('run the gateway: chat channels <-> the agent in the sandbox (gateway.local)')
    .option('--config <file>', 'gateway.yaml (see profiles/gateway.example.yaml)')
    .option('--agent-listen <host:port>', 'the agent endpoint (what the sandbox reaches as gateway.local)', '127.0.0.1:8790')
    .option('--control <socket>', 'operator control socket (mode 0600)', defaultControlSocket())
    .option('--state <dir>', 'directory for the durable queues and pairings', defaultStateDir())
    .option('--audit <file>', 'JSONL audit file')
    .action(async (o: { config?: string; agentListen: string; control: string; state: string; audit?: string }) => {
      if (!o.config) fail('cordon gateway: --config <gateway.yaml> is required (an example is in profiles/gateway.example.yaml)')
      const { loadConfig, Gateway } = await import('../gateway/index.js')
      const config = loadConfig(o.config)
      const g = await Gateway.start({ config, agentListen: o.agentListen, control: o.control, stateDir: o.state, ...(o.audit ? { auditFile: o.audit } : {}) })
      process.stdout.write(`gateway: agent endpoint ${g.agentUrl}, control ${o.control}${g.publicUrl ? `, public ${g.publicUrl}` : ''}\n`)
      await new Promise<void>((resolve) => {
        const stop = (sig: string) => {
          g.log.info(`received ${sig}; stopping`)
          g.stop().then(resolve, resolve)
        }
        process.once('SIGINT', () => stop('SIGINT'))
        process.once('SIGTERM', () => stop('SIGTERM'))
      })
    })

  ctlOptions(gw.command('status').description("show the gateway's health, channels, queues and pending pairings"))
    .option('--json', 'print JSON')
    .action(async (_o: unknown, cmd: Command) => {
      // `cordon gateway status --control S`: commander may hand --control to the parent command
      const o = cmd.optsWithGlobals() as CtlOpts & { json?: boolean }
      const { status, data } = await control(o, 'GET', '/v1/status')
      if (status !== 200) fail(`gateway status: HTTP ${status}: ${String(data.error ?? '')}`)
      if (o.json) return void process.stdout.write(JSON.stringify(data, null, 2) + '\n')
      const q = data.queues as { inbound: { pending: number; leased: number }; outbound: { pending: number } }
      const lines = [
        `gateway up since ${String(data.started_at)}; agent endpoint ${String(data.agent_endpoint)}`,
        `queues: inbound ${q.inbound.pending} waiting for the agent (${q.inbound.leased} leased), outbound ${q.outbound.pending} waiting for channels`,
        `pending pairings: ${String(data.pending_pairings)}`,
        'channels:',
        ...(data.channels as { name: string; type: string; state: string; detail: string; received: number; sent: number }[]).map(
          (c) => `  ${c.name.padEnd(12)} ${c.type.padEnd(9)} ${c.state.padEnd(10)} in ${c.received} out ${c.sent}${c.detail ? `  (${c.detail})` : ''}`,
        ),
      ]
      process.stdout.write(lines.join('\n') + '\n')
      const bad = (data.channels as { state: string }[]).some((c) => c.state === 'unhealthy')
      if (bad) process.exitCode = 3
    })

  const pair = program.command('pair').description('approve or deny senders who asked to talk to the agent')
  ctlOptions(pair.command('list').description('pending pairing requests')).option('--json', 'print JSON').action(async (o: CtlOpts & { json?: boolean }) => {
    const { status, data } = await control(o, 'GET', '/v1/pairings')
    if (status !== 200) fail(`pair list: HTTP ${status}: ${String(data.error ?? '')}`)
    const list = data.pairings as { code: string; channel: string; sender: string; name: string; created_at: string; expires_at: string }[]
    if (o.json) return void process.stdout.write(JSON.stringify(list, null, 2) + '\n')
    if (!list.length) return void process.stdout.write('no pending pairings\n')
    process.stdout.write(['CODE      CHANNEL      SENDER              NAME                 EXPIRES', ...list.map((p) => `${p.code}  ${p.channel.padEnd(12)} ${p.sender.padEnd(19)} ${p.name.slice(0, 20).padEnd(20)} ${p.expires_at}`)].join('\n') + '\n')
  })
  for (const verb of ['approve', 'deny'] as const) {
    ctlOptions(pair.command(`${verb} <code>`).description(verb === 'approve' ? 'let this sender talk to the agent' : 'refuse this sender from now on')).action(async (code: string, o: CtlOpts) => {
      const { status, data } = await control(o, 'POST', `/v1/pairings/${encodeURIComponent(code)}/${verb}`, {})
      if (status === 404) fail(`pair ${verb}: ${String(data.error)}`, 4)
      if (status !== 200) fail(`pair ${verb}: HTTP ${status}: ${String(data.error ?? '')}`)
      const p = data.pairing as { name: string; sender: string; channel: string }
      process.stdout.write(`${verb === 'approve' ? 'approved' : 'denied'}: ${p.name} (${p.sender}) on ${p.channel}\n`)
    })
  }

  ctlOptions(program.command('chat').description('talk to the agent from this terminal (the local channel; operator only)'))
    .option('-m, --message <text>', 'send one message, print the reply, exit')
    .option('--wait <seconds>', 'with --message: how long to wait for a reply', '60')
    .option('--conversation <name>', 'conversation name', 'operator')
    .action(async (o: CtlOpts & { message?: string; wait: string; conversation: string }) => {
      const send = async (text: string) => {
        const { status, data } = await control(o, 'POST', '/v1/chat', { text, conversation: o.conversation })
        if (status !== 202) fail(`chat: HTTP ${status}: ${String(data.error ?? '')}`)
        return data as { id: string; after: number }
      }
      const conv = `local:${o.conversation}`
      if (o.message !== undefined) {
        const sent = await send(o.message)
        const deadline = Date.now() + Number(o.wait) * 1000
        let after = sent.after
        while (Date.now() < deadline) {
          const wait = Math.max(1, Math.min(30, Math.ceil((deadline - Date.now()) / 1000)))
          const { data } = await control(o, 'GET', `/v1/chat/replies?after=${after}&wait=${wait}`)
          const replies = (data.replies as { conversation: string; text: string; in_reply_to: string | null }[]).filter((r) => r.conversation === conv)
          after = Number(data.next)
          if (replies.length) {
            for (const r of replies) process.stdout.write(r.text + '\n')
            return
          }
        }
        fail(`chat: no reply within ${o.wait}s (is an agent polling the gateway?)`, 5)
      }
      // interactive
      let after = 0
      {
        const { data } = await control(o, 'GET', '/v1/chat/replies?after=0&wait=0')
        after = Number(data.next)
      }
      let open = true
      const poll = (async () => {
        while (open) {
          try {
            const { data } = await control(o, 'GET', `/v1/chat/replies?after=${after}&wait=25`)
            after = Number(data.next)
            for (const r of data.replies as { conversation: string; text: string }[]) if (r.conversation === conv) process.stdout.write(`\nagent> ${r.text}\nyou> `)
          } catch (e) {
            process.stderr.write(`\n${(e as Error).message}\n`)
            await new Promise((r) => setTimeout(r, 2000))
          }
        }
      })()
      const rl = createInterface({ input: process.stdin, output: process.stdout, prompt: 'you> ' })
      rl.prompt()
      for await (const line of rl) {
        if (line.trim()) await send(line)
        rl.prompt()
      }
      open = false
      void poll
    })
}
