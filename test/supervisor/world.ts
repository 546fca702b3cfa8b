/**
 * A whole cordon system on loopback for end-to-end tests and bench/up.ts: the fake provider
 * (test/router), a fake Telegram (test/gateway/fakes), an "internet" upstream server, and a
 * cordon.yaml running the real engine, router, gateway and the reference agent.
 */
import { mkdtempSync, mkdirSync, writeFileSync, chmodSync } from 'node:fs'
import http from 'node:http'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FakeProvider } from '../router/fake-provider.js'
import { FakeTelegram } from '../gateway/fakes/telegram.js'
import { nextPort, ROOT } from './helpers.js'

export const PROVIDER_KEY = 'sk-e2e-real-key-0123456789abcdef'
export const TG_TOKEN = '123456:TEST-telegram-token-abcdef'

export interface World {
  dir: string
  file: string
  runtime: string
  state: string
  logs: string
  provider: FakeProvider
  tg: FakeTelegram
  upstream: { port: number; hits: number; close(): Promise<void> }
  ports: { engine: number; router: number; gateway: number }
  close(): Promise<void>
}

export async function startWorld(opts: { confineServices?: boolean; confineAgent?: boolean } = {}): Promise<World> {
  // not under /tmp: the sandboxes get a private /tmp, and files there are awkward to grant
  mkdirSync('/var/tmp', { recursive: true })
  const dir = mkdtempSync('/var/tmp/cordon-e2e-')
  const confineAgent = opts.confineAgent ?? true
  const provider = await FakeProvider.start({ expectKey: PROVIDER_KEY, answer: 'hello from the fake model', name: 'fake' })
  const tg = await FakeTelegram.start(TG_TOKEN)
  const up = { hits: 0, port: 0, close: async () => {} }
  const server = http.createServer((req, res) => {
    up.hits++
    res.writeHead(200, { 'content-type': 'text/plain' })
    res.end('upstream says hi')
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  up.port = (server.address() as AddressInfo).port
  up.close = () => new Promise((r) => server.close(() => r()))

  const ports = { engine: nextPort(), router: nextPort(), gateway: nextPort() }
  const keyFile = join(dir, 'openai.key')
  writeFileSync(keyFile, PROVIDER_KEY + '\n')
  chmodSync(keyFile, 0o600)
  const tokenFile = join(dir, 'tg.token')
  writeFileSync(tokenFile, TG_TOKEN + '\n')
  chmodSync(tokenFile, 0o600)

  writeFileSync(
    join(dir, 'router.yaml'),
    `version: 1
routes:
  - name: openai
    default: true
    models: [gpt-4o-mini]
    targets:
      - provider: openai
        base_url: ${provider.baseUrl}
        model: gpt-4o-mini
        key: { file: ${keyFile} }
`,
  )
  writeFileSync(
    join(dir, 'gateway.yaml'),
    `channels:
  - name: tg
    type: telegram
    token: { file: ${tokenFile} }
    api_root: ${tg.apiRoot}
    poll_timeout_s: 1
    allow: [1001]
`,
  )
  // the agent's policy: proxy mode, unlisted hosts wait for the operator. The engine never lets
  // a name lead to loopback unless a rule names that range, so the stand-in "internet" host
  // (upstream.test -> 127.0.0.1) needs the cidr rule; the name itself stays unlisted (asks).
  mkdirSync(join(dir, 'workspace'), { recursive: true, mode: 0o700 })
  writeFileSync(
    join(dir, 'agent.yaml'),
    `version: 1
filesystem:
  workspace: ${join(dir, 'workspace')}
  # the reference agent and its dependencies (this checkout), read-only
  read_only: [${ROOT}]
network:
  mode: proxy
  unlisted: ask
  allow:
    - { cidr: 127.0.0.1/32, ports: [${up.port}] }
`,
  )
  const svc = (extra: Record<string, unknown> = {}) => ({ confine: opts.confineServices ?? false, health_interval: 0.5, health_failures: 3, start_timeout: 60, ...extra })
  const cfg = {
    version: 1,
    // under /run like the real /run/cordon (the sandbox has a private /tmp, so sockets under /tmp
    // would be invisible to it anyway and an attack on them would prove nothing)
    runtime_dir: `/run/cordon-test-${dir.split('-').pop()}`,
    state_dir: join(dir, 'state'),
    log_dir: join(dir, 'logs'),
    policy: join(dir, 'agent.yaml'),
    // confined agent: the gate listens on the link-local gate address the namespace routes to
    engine: svc({ listen: `${confineAgent ? '169.254.77.1' : '127.0.0.1'}:${ports.engine}`, args: ['--resolve', `upstream.test=127.0.0.1`] }),
    router: svc({ listen: `127.0.0.1:${ports.router}`, config: join(dir, 'router.yaml') }),
    gateway: svc({ agent_listen: `127.0.0.1:${ports.gateway}`, config: join(dir, 'gateway.yaml') }),
    agent: {
      confine: confineAgent,
      workspace: join(dir, 'workspace'),
      env: confineAgent ? {} : { HTTP_PROXY: `http://127.0.0.1:${ports.engine}`, http_proxy: `http://127.0.0.1:${ports.engine}`, NO_PROXY: '', no_proxy: '' },
      max_restarts: 10,
    },
  }
  const file = join(dir, 'cordon.yaml')
  writeFileSync(file, JSON.stringify(cfg, null, 2))
  return {
    dir,
    file,
    runtime: cfg.runtime_dir as string,
    state: cfg.state_dir,
    logs: cfg.log_dir,
    provider,
    tg,
    upstream: up,
    ports,
    close: async () => {
      await Promise.all([provider.close?.(), tg.close(), up.close()])
    },
  }
}
