/**
 * A message from an allowlisted sender reaches an agent confined by `cordon run`, which answers
 * through the agent client; the reply reaches the fake channel. From inside the sandbox the
 * gateway's credentials cannot be read (file, environment, /proc) and the channel server cannot
 * be reached.
 *
 * The engine's wiring (the sandbox's own network namespace whose only way out is the egress gate,
 * which maps gateway.local) is not in place yet, so this test builds the equivalent by hand: a
 * network namespace joined to the host by a veth pair, the gateway's agent endpoint listening on
 * the host end, no other route, and the agent run with `network: host` inside that namespace.
 */
import t from 'tap'
import { spawn, execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { FakeTelegram } from './fakes/telegram.js'
import { ROOT, spawnGateway, tmpdir, waitOutput } from './helpers.js'

const TOKEN = '123456:SANDBOX-secret-telegram-token-XYZ'
const HOOK = 'webhook-secret-in-gateway-env-QWERTY'

const sh = (...a: string[]) => execFileSync('ip', a, { stdio: 'pipe' }).toString()
let why = ''
if (process.getuid?.() !== 0) why = 'needs root to create a network namespace and veth pair'
else if (!existsSync(path.join(ROOT, 'lib/cli/run.ts'))) why = 'cordon run (lib/cli/run.ts) is not built yet'
else {
  try {
    sh('netns', 'list')
  } catch {
    why = 'the ip tool cannot manage network namespaces here'
  }
}

t.test('confined agent answers through the gateway; secrets and channel servers out of reach', { skip: why || false }, async (t) => {
  const id = `${process.pid % 10000}${Math.floor(Math.random() * 90 + 10)}`
  const ns = `cgw${id}`
  const [va, vb] = [`vga${id}`, `vgb${id}`]
  const oct = 1 + (process.pid % 250)
  const hostAddr = `10.213.${oct}.1`
  sh('netns', 'add', ns)
  t.teardown(() => {
    try { sh('link', 'del', va) } catch { /* gone with the namespace */ }
    try { sh('netns', 'del', ns) } catch { /* already gone */ }
  })
  sh('link', 'add', va, 'type', 'veth', 'peer', 'name', vb)
  sh('link', 'set', vb, 'netns', ns)
  sh('addr', 'add', `${hostAddr}/30`, 'dev', va)
  sh('link', 'set', va, 'up')
  sh('-n', ns, 'addr', 'add', `10.213.${oct}.2/30`, 'dev', vb)
  sh('-n', ns, 'link', 'set', vb, 'up')
  sh('-n', ns, 'link', 'set', 'lo', 'up')

  const tg = await FakeTelegram.start(TOKEN)
  t.teardown(() => tg.close())
  const dir = tmpdir(t)
  // outside /tmp (which the sandbox sees privately), so Landlock is what stands in the way
  const secretDir = mkdtempSync('/var/tmp/cordon-gw-secret-')
  t.teardown(() => rmSync(secretDir, { recursive: true, force: true }))
  const tokenFile = path.join(secretDir, 'telegram.token')
  writeFileSync(tokenFile, TOKEN + '\n', { mode: 0o600 })
  const cfg = path.join(dir, 'gateway.yaml')
  writeFileSync(
    cfg,
    `channels:\n  - name: tg\n    type: telegram\n    token: { file: ${tokenFile} }\n    api_root: ${tg.apiRoot}\n    poll_timeout_s: 1\n    allow: [1001]\n` +
      `  - name: hook\n    type: webhook\n    secret: { env: HOOK_SECRET }\npublic_listen: 127.0.0.1:0\n`,
  )
  const gw = spawnGateway(['--config', cfg, '--agent-listen', `${hostAddr}:0`, '--control', path.join(dir, 'ctl.sock'), '--state', path.join(dir, 'state')], { HOOK_SECRET: HOOK })
  t.teardown(() => gw.kill('SIGKILL'))
  const agentUrl = (await waitOutput(gw, /agent endpoint (http:\/\/\S+),/, 60000))[1]!

  const ws = path.join(dir, 'ws')
  mkdirSync(ws)
  const policy = path.join(dir, 'agent-policy.yaml')
  writeFileSync(
    policy,
    [
      'version: 1',
      'network: host   # the namespace this runs in is the wiring; see the file header',
      'filesystem:',
      `  read_only: [${ROOT}]`,
      `  executable: [${ROOT}/node_modules/@esbuild]`,
      'process:',
      '  env:',
      '    set:',
      `      CORDON_GATEWAY_URL: "${agentUrl}"`,
      `      PROBE_TOKEN_FILE: "${tokenFile}"`,
      `      PROBE_CONFIG: "${cfg}"`,
      `      PROBE_GATEWAY_PID: "${gw.pid}"`,
      `      PROBE_FAKE: "${tg.apiRoot.replace('http://', '')}"`,
      `      PROBE_HOST_ADDR: "${hostAddr}"`,
      '',
    ].join('\n'),
  )
  const agent = spawn('ip', ['netns', 'exec', ns, process.execPath, '--import', 'tsx', path.join(ROOT, 'lib/cli/main.ts'), 'run', '--policy', policy, '--workspace', ws, '--', process.execPath, '--import', 'tsx', path.join(ROOT, 'test/gateway/fixtures/sandboxed-agent.ts')], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  agent.stdout.on('data', (d) => (out += d))
  agent.stderr.on('data', (d) => (out += d))
  t.teardown(() => agent.kill('SIGKILL'))
  const probes = JSON.parse((await waitOutput({ output: () => out, get exitCode() { return agent.exitCode } }, /PROBES (.*)\n/, 90000))[1]!) as Record<string, string>

  // the attack from inside fails ...
  t.match(probes.tokenFile, /^ERR EACCES/, `token file unreadable: ${probes.tokenFile}`)
  t.match(probes.gatewayConfig, /^ERR (EACCES|ENOENT)/, 'gateway.yaml unreadable')
  t.match(probes.gatewayEnviron, /^ERR (EACCES|EPERM|ENOENT)/, `/proc/<gateway>/environ unreadable: ${probes.gatewayEnviron.slice(0, 80)}`)
  t.match(probes.gatewayMem, /^ERR (EACCES|EPERM|ENOENT)/, '/proc/<gateway>/mem unreadable')
  for (const [k, v] of Object.entries(probes)) {
    t.notOk(v.includes(TOKEN), `${k}: bot token not visible`)
    t.notOk(v.includes(HOOK), `${k}: webhook secret not visible`)
  }
  t.match(probes.fakeDirect, /^ERR/, `channel server at ${tg.apiRoot} unreachable: ${probes.fakeDirect}`)
  t.match(probes.fakeViaHostAddr, /^ERR/, `channel server via the host address unreachable: ${probes.fakeViaHostAddr}`)
  t.match(probes.internet, /^ERR/, `no route out: ${probes.internet}`)

  // ... and the legitimate work beside it succeeds
  tg.message({ from: 1001, text: 'are you in a box?' })
  const [sent] = await tg.waitSent(1, 30000)
  t.equal(sent!.text, 'confined echo: are you in a box?')
  await waitOutput({ output: () => out, get exitCode() { return agent.exitCode } }, /ANSWERED /, 20000).catch(() => null)
  t.equal(tg.sent.length, 1)
})
