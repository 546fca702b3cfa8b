/**
 * `cordon run` with `network: proxy`, end to end through the real CLI and a real `cordon engine`
 * process: inside the sandbox the only way out is the egress gate. From the attacker's side:
 * a denied host gets the gate's 403, a client that ignores the proxy has no route (not to the
 * internet, not to the host's loopback services), the environment holds no key; beside it the
 * legitimate work (an allowed destination through the gate, inference.local to the router) works.
 */
import t from 'tap'
import http from 'node:http'
import { spawn, execFileSync, type ChildProcess } from 'node:child_process'
import { mkdtempSync, writeFileSync, readFileSync, existsSync, realpathSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..')
const cli = [join(root, 'node_modules', 'tsx', 'dist', 'cli.mjs'), join(root, 'lib', 'cli', 'main.ts')]

let ipOk = false
try { execFileSync('ip', ['-V'], { stdio: 'ignore' }); ipOk = true } catch { /* absent */ }
const isRoot = process.getuid?.() === 0

function listen(handler: http.RequestListener): Promise<http.Server & { port: number }> {
  return new Promise((resolve) => {
    const s = http.createServer(handler)
    s.listen(0, '127.0.0.1', () => resolve(Object.assign(s, { port: (s.address() as { port: number }).port })))
  })
}

function runCli(args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [...cli, ...args], { cwd, env })
    let out = '', err = ''
    c.stdout.on('data', (d) => (out += d))
    c.stderr.on('data', (d) => (err += d))
    c.on('close', (code) => resolve({ code, out, err }))
  })
}

async function waitFor(file: string, ms = 30_000): Promise<void> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (existsSync(file)) return
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`${file} did not appear`)
}

if (!isRoot || !ipOk) {
  t.skip(`needs root and iproute2 (root: ${isRoot}, ip: ${ipOk}): proxy mode creates a network namespace and a veth`)
} else {
  const dir = mkdtempSync(join(tmpdir(), 'cordon-proxy-run-'))
  const ws = join(dir, 'ws')
  execFileSync('mkdir', ['-p', ws])
  const upstream = await listen((q, s) => s.end(`upstream ok ${q.url}\n`))
  const hostOnly = await listen((_q, s) => s.end('host-only service\n'))
  const router = await listen((q, s) => s.end(`router saw ${q.method} ${q.url} auth=${q.headers.authorization ?? '-'}\n`))
  const policy = join(dir, 'policy.yaml')
  writeFileSync(policy, [
    'version: 1',
    'network:',
    '  mode: proxy',
    '  unlisted: deny',
    '  allow:',
    `    - { cidr: 127.0.0.1/32, ports: [${upstream.port}] }`,
    '',
  ].join('\n'))
  const gatePort = 20000 + (process.pid % 20000)
  const sock = join(dir, 'engine.sock')
  const audit = join(dir, 'audit.jsonl')
  // the gate listens on the link-local gate address, which the first netns user puts on lo
  const { ensureGateAddress } = await import('../../lib/sandbox/netns.js')
  ensureGateAddress()
  const engine: ChildProcess = spawn(process.execPath, [...cli, 'engine', '--policy', policy,
    '--listen', `169.254.77.1:${gatePort}`, '--control', sock, '--router', `127.0.0.1:${router.port}`,
    '--audit', audit], { stdio: ['ignore', 'ignore', 'inherit'] })
  t.teardown(() => {
    engine.kill('SIGTERM')
    upstream.close(); hostOnly.close(); router.close()
  })
  await waitFor(sock)

  const script = [
    `curl -sS -m 10 --noproxy "" -x "$HTTP_PROXY" http://127.0.0.1:${upstream.port}/allowed`,
    'echo "---"',
    'curl -sS -m 10 http://inference.local/v1/models -H "Authorization: Bearer sk-agent"',
    'echo "---"',
    'curl -sS -m 10 -o /dev/null -w "%{http_code}\\n" http://denied.example/ ; curl -sS -m 10 http://denied.example/',
    'echo "---"',
    `curl -sS -m 5 --noproxy "*" http://127.0.0.1:${hostOnly.port}/ 2>&1 || echo "direct-loopback-failed"`,
    'echo "---"',
    'curl -sS -m 5 --noproxy "*" http://1.1.1.1/ 2>&1 || echo "direct-internet-failed"',
    'echo "---"',
    'printenv OPENAI_API_KEY || echo "no-key"',
  ].join('; ')
  const r = await runCli(['run', '--policy', policy, '--gate-port', String(gatePort), '--', 'bash', '-c', script], ws,
    { ...process.env, OPENAI_API_KEY: 'sk-launcher-secret' })
  const parts = r.out.split('---\n')
  t.equal(parts.length, 6, `six sections of output (stderr: ${r.err})`)
  t.match(parts[0], /upstream ok \/allowed/, 'an allowed destination is reached through the gate')
  t.match(parts[1], /router saw GET \/v1\/models/, 'inference.local leads to the router')
  t.match(parts[2], /^403\n/, 'a denied host gets HTTP 403 from the gate')
  t.match(parts[2], /denied\.example.*denied/s, 'the 403 says which host was denied and why')
  t.match(parts[3], /direct-loopback-failed/, 'the host loopback service is out of reach without the gate')
  t.notMatch(parts[3], /host-only service/, 'the host-only service never answered')
  t.match(parts[4], /direct-internet-failed/, 'a client that ignores the proxy has no route out')
  t.match(parts[5], /no-key/, 'the launcher key is not in the sandbox environment')
  const lines = readFileSync(audit, 'utf8').trim().split('\n').map((l) => JSON.parse(l))
  const decisions = lines.filter((l) => l.type === 'decision')
  t.ok(decisions.some((d) => d.host === 'denied.example' && d.decision === 'deny'), 'the denial is in the audit trail')
  t.ok(decisions.some((d) => d.host === 'inference.local' && d.decision === 'allow'), 'the inference call is in the audit trail')
  // the sandbox is a registered namespace: every decision names the binary that asked (--identify sandboxes)
  const curl = realpathSync(execFileSync('bash', ['-c', 'command -v curl'], { encoding: 'utf8' }).trim())
  for (const d of decisions) t.equal(d.binary, curl, `the ${d.decision} of ${d.host} names ${curl} (pid ${d.pid})`)
  const leftover = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
  t.notMatch(leftover, new RegExp(`cordon-run-`), 'cordon run removed its network namespace')
}
