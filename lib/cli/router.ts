/**
 * `cordon router` (run the privacy router; `router check|status|reload`) and
 * `cordon keys set|list|rm` (the root-only key store the router reads; keys are read from stdin
 * or a variable of this process, never from argv, and never printed back).
 */
import type { Command } from 'commander'
import http from 'node:http'
import { readFileSync } from 'node:fs'
import { PrivacyRouter } from '../router/server.js'
import { ConfigError, loadConfigFile } from '../router/config.js'
import { defaultKeyStorePath, listKeys, removeKey, setKey, fingerprint, openKeyStore, KeyStoreError } from '../router/keys.js'

function collect(v: string, prev: string[]): string[] {
  return [...prev, v]
}

function fail(msg: string, code = 1): never {
  const e = new Error(msg) as Error & { exitCode: number }
  e.exitCode = code
  throw e
}

/**
 * The control token: --control-token-file FILE, else CORDON_ROUTER_TOKEN. Null when neither is
 * given; an unreadable or empty file is an error (never silently no token).
 */
function controlToken(file: string | undefined): string | null {
  if (file) {
    let text: string
    try {
      text = readFileSync(file, 'utf8')
    } catch (e) {
      fail(`cannot read the control token file ${file} (${(e as NodeJS.ErrnoException).code}); create it with \`openssl rand -hex 32 > ${file}; chmod 600 ${file}\``, 2)
    }
    const tok = text.trim()
    if (!tok) fail(`the control token file ${file} is empty; put a random token in it (\`openssl rand -hex 32\`)`, 2)
    return tok
  }
  const env = process.env.CORDON_ROUTER_TOKEN?.trim()
  return env ? env : null
}

function controlRequest(where: string, method: string, path: string, token: string | null = null): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const m = /^([^/][^:]*):(\d+)$/.exec(where)
    const opts = m ? { host: m[1], port: Number(m[2]) } : { socketPath: where }
    const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {}
    const req = http.request({ ...opts, method, path, headers }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }))
    })
    req.on('error', (e: NodeJS.ErrnoException) => reject(new Error(`cannot reach the router's control socket ${where} (${e.code}); is \`cordon router --control ${where}\` running?`)))
    req.end()
  })
}

async function readSecret(prompt: string): Promise<string> {
  const stdin = process.stdin
  if (!stdin.isTTY) {
    const chunks: Buffer[] = []
    for await (const c of stdin) chunks.push(c as Buffer)
    return Buffer.concat(chunks).toString('utf8').trim()
  }
  process.stderr.write(prompt)
  stdin.setRawMode(true)
  stdin.resume()
  return new Promise((resolve, reject) => {
    let s = ''
    const onData = (b: Buffer) => {
      for (const ch of b.toString('utf8')) {
        if (ch === '\r' || ch === '\n') {
          done()
          resolve(s.trim())
          return
        }
        if (ch === '\u0003') {
          done()
          reject(new Error('cancelled'))
          return
        }
        if (ch === '\u007f') s = s.slice(0, -1)
        else s += ch
      }
    }
    const done = () => {
      stdin.off('data', onData)
      stdin.setRawMode(false)
      stdin.pause()
      process.stderr.write('\n')
    }
    stdin.on('data', onData)
  })
}

export function register(program: Command): void {
  const router = program
    .command('router')
    .description('Run the privacy router (inference.local): holds provider keys, injects them, streams, limits and audits')
    .option('--config <file>', 'router.yaml (routes, limits, prices, listeners)', 'router.yaml')
    .option('--listen <host:port>', 'listener for sandboxes (repeatable; HOST:PORT, [V6]:PORT or a unix socket path); identity by source address', collect, [] as string[])
    .option('--control <socket>', 'control listener (unix socket path; never reachable from a sandbox): /metrics, /status, /reload')
    .option('--control-token-file <file>', 'bearer token the control listener requires (default: $CORDON_ROUTER_TOKEN); mandatory when --control is HOST:PORT')
    .option('--keys <file>', 'key store file (root-only, 0600)', defaultKeyStorePath())
    .option('--audit <file>', 'audit JSONL file, one record per call')
    .option('--state <dir>', 'directory for limit counters that survive a restart')
    .option('--log-level <level>', 'pino log level', 'info')
    .option('--no-watch', 'do not watch the config directory (reload with SIGHUP or POST /reload)')
    .action(async (o: { config: string; listen: string[]; control?: string; controlTokenFile?: string; keys: string; audit?: string; state?: string; logLevel: string; watch: boolean }) => {
      if (!o.listen.length && !o.control) fail('give at least one --listen HOST:PORT (and a --control SOCKET for metrics and reloads)')
      const controlTok = controlToken(o.controlTokenFile)
      if (o.control && !controlTok && /^(\[[^\]]+\]|[^/][^:]*):\d+$/.test(o.control)) {
        fail(
          `refusing to open the control listener on ${o.control} (TCP) without authentication: give --control-token-file FILE (or set CORDON_ROUTER_TOKEN) with a random token (\`openssl rand -hex 32\`), or use a unix socket path for --control`,
          2,
        )
      }
      let r: PrivacyRouter
      try {
        r = await PrivacyRouter.start({ config: o.config, listen: o.listen, control: o.control, controlToken: controlTok, keys: o.keys, audit: o.audit, state: o.state, logLevel: o.logLevel, watch: o.watch })
      } catch (e) {
        if (e instanceof ConfigError || e instanceof KeyStoreError) fail(e.message, 2)
        if (e instanceof Error && /control token|refusing to open the control listener/.test(e.message)) fail(e.message, 2)
        throw e
      }
      process.stderr.write(`cordon router: listening on ${r.addresses().join(', ') || '(config listeners only)'}${r.controlAddress ? `, control ${r.controlAddress}` : ''}\n`)
      process.on('SIGHUP', () => {
        // logrotate's postrotate signal: a new audit file at its path, and a config re-read
        // (an unchanged config changes nothing)
        if (o.audit && !r.reopenAudit()) process.stderr.write(`cordon router: could not reopen the audit log ${o.audit}; still writing to the old file\n`)
        void r.reload('SIGHUP')
      })
      await new Promise<void>((resolve) => {
        const stop = (sig: string) => {
          r.log.info({ signal: sig }, 'stopping: finishing requests in flight')
          const hard = setTimeout(() => process.exit(0), 30_000)
          hard.unref()
          void r.close().then(resolve)
        }
        process.once('SIGTERM', () => stop('SIGTERM'))
        process.once('SIGINT', () => stop('SIGINT'))
      })
    })

  router
    .command('check')
    .description('Validate a router config (file:line errors) and report which keys resolve, without starting (uses --config, --keys)')
    .action((_o: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals() as { config: string; keys: string }
      let store = null
      try {
        store = openKeyStore(o.keys, false)
      } catch (e) {
        process.stderr.write(`warning: ${(e as Error).message}\n`)
      }
      let cfg
      try {
        cfg = loadConfigFile(o.config, { keyStore: store })
      } catch (e) {
        if (e instanceof ConfigError) fail(e.message.replace(' (the previous config, if any, stays in force)', ''), 2)
        throw e
      }
      for (const r of cfg.routes) {
        process.stdout.write(`route ${r.name} (${r.family}) models: ${r.models.join(', ')}\n`)
        for (const t of r.targets) process.stdout.write(`  -> ${t.provider} ${t.baseUrl.href} ${t.model}: key ${t.key ? `ok (${fingerprint(t.key)})` : t.auth === 'none' ? 'not needed' : `MISSING: ${t.keyError ?? 'no key reference'}`}\n`)
      }
      process.stdout.write(`${o.config}: ok\n`)
    })

  router
    .command('status')
    .description("Show the running router's routes, key presence (fingerprints only) and usage (uses --control)")
    .action(async (_o: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals() as { control?: string; controlTokenFile?: string }
      if (!o.control) fail('give --control SOCKET (the running router\'s control socket)')
      const r = await controlRequest(o.control, 'GET', '/status', controlToken(o.controlTokenFile))
      process.stdout.write(r.body)
      if (r.status !== 200) process.exitCode = 1
    })

  router
    .command('reload')
    .description('Reload router.yaml and the key store now; an invalid config is rejected with file:line and the old one stays (uses --control)')
    .action(async (_o: unknown, cmd: Command) => {
      const o = cmd.optsWithGlobals() as { control?: string; controlTokenFile?: string }
      if (!o.control) fail('give --control SOCKET (the running router\'s control socket)')
      const r = await controlRequest(o.control, 'POST', '/reload', controlToken(o.controlTokenFile))
      const body = JSON.parse(r.body) as { ok: boolean; changed?: boolean; error?: string; hash?: string }
      if (!body.ok) fail(body.error ?? 'reload failed', 2)
      process.stdout.write(body.changed ? `reloaded (config ${body.hash?.slice(0, 12)})\n` : 'unchanged\n')
    })

  const keys = program.command('keys').description('Manage provider API keys in the root-only key store the router reads')
  keys
    .command('set <name>')
    .description('Store a key under NAME (read from stdin, or --from-env VAR); referenced in router.yaml as key: {store: NAME}')
    .option('--keys <file>', 'key store file', defaultKeyStorePath())
    .option('--from-env <var>', 'take the key from this environment variable instead of stdin')
    .option('--control <socket>', 'also tell a running router to reload its keys')
    .option('--control-token-file <file>', "the router control listener's token (default: $CORDON_ROUTER_TOKEN)")
    .action(async (name: string, o: { keys: string; fromEnv?: string; control?: string; controlTokenFile?: string }) => {
      let key: string
      if (o.fromEnv) {
        key = process.env[o.fromEnv] ?? ''
        if (!key) fail(`environment variable ${o.fromEnv} is empty or unset`)
      } else key = await readSecret(`key for ${name} (input hidden): `)
      try {
        setKey(o.keys, name, key)
      } catch (e) {
        fail((e as Error).message)
      }
      process.stdout.write(`stored key "${name}" (${fingerprint(key.trim())}, ${key.trim().length} chars) in ${o.keys}\n`)
      if (o.control) {
        const r = await controlRequest(o.control, 'POST', '/reload', controlToken(o.controlTokenFile))
        process.stdout.write(r.status === 200 ? 'router reloaded\n' : `router reload failed: ${r.body}\n`)
      }
    })
  keys
    .command('list')
    .description('List stored keys: name, fingerprint and length (never the key)')
    .option('--keys <file>', 'key store file', defaultKeyStorePath())
    .option('--json', 'machine-readable output')
    .action((o: { keys: string; json?: boolean }) => {
      let rows
      try {
        rows = listKeys(o.keys)
      } catch (e) {
        fail((e as Error).message)
      }
      if (o.json) process.stdout.write(JSON.stringify(rows, null, 2) + '\n')
      else if (!rows.length) process.stdout.write(`no keys in ${o.keys}; add one with \`cordon keys set NAME\`\n`)
      else for (const r of rows) process.stdout.write(`${r.name}\t${r.fingerprint}\t${r.length} chars\tupdated ${r.updated}\n`)
    })
  keys
    .command('rm <name>')
    .description('Remove a stored key')
    .option('--keys <file>', 'key store file', defaultKeyStorePath())
    .option('--control <socket>', 'also tell a running router to reload its keys')
    .option('--control-token-file <file>', "the router control listener's token (default: $CORDON_ROUTER_TOKEN)")
    .action(async (name: string, o: { keys: string; control?: string; controlTokenFile?: string }) => {
      let removed: boolean
      try {
        removed = removeKey(o.keys, name)
      } catch (e) {
        fail((e as Error).message)
      }
      if (!removed) fail(`no key named "${name}" in ${o.keys}; see \`cordon keys list\``)
      process.stdout.write(`removed key "${name}"\n`)
      if (o.control) await controlRequest(o.control, 'POST', '/reload', controlToken(o.controlTokenFile))
    })
}
