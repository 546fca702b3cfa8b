/**
 * `cordon run` with `network: proxy` run by an unprivileged user (uid 65534), end to end through
 * the real CLI and a real `cordon engine` serving its gate on a unix socket: the sandbox gets a
 * user + network namespace of its own with only loopback, where a relay carries connections to
 * the gate. From the attacker's side: a denied host gets the gate's 403, a client that ignores the
 * proxy reaches nothing (the host's loopback services are not in its namespace, and there is no
 * route at all), the launcher's key is not in the environment; beside that the legitimate work
 * (an allowed destination, inference.local to the router) goes through the gate and is audited.
 */
import t from 'tap'
import http from 'node:http'
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { mkdtempSync, writeFileSync, readFileSync, existsSync, chmodSync, chownSync, mkdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..')
const cli = [join(root, 'node_modules', 'tsx', 'dist', 'cli.mjs'), join(root, 'lib', 'cli', 'main.ts')]
const NOBODY = 65534

function listen(handler: http.RequestListener): Promise<http.Server & { port: number }> {
  return new Promise((resolve) => {
    const s = http.createServer(handler)
    s.listen(0, '127.0.0.1', () => resolve(Object.assign(s, { port: (s.address() as { port: number }).port })))
  })
}

/** Why this machine cannot run the test as uid 65534, or null. */
function cannot(): string | null {
  if (process.getuid?.() !== 0) return 'the test switches to uid 65534 and needs root to do that'
  const as = (cmd: string[]) => spawnSync('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', ...cmd], { stdio: 'ignore' }).status === 0
  if (!as(['true'])) return 'setpriv (util-linux) cannot switch to uid 65534'
  if (!as(['test', '-r', join(root, 'package.json')])) return `the checkout ${root} is not readable by uid 65534`
  if (!as(['unshare', '--user', '--map-root-user', '--net', 'true'])) return 'unprivileged user namespaces are disabled on this kernel'
  return null
}

const why = cannot()
if (why) {
  t.skip(`cordon run as a non-root user: ${why}`)
} else {
  const dir = mkdtempSync(join(tmpdir(), 'cordon-proxy-nonroot-'))
  chmodSync(dir, 0o755)
  const ws = join(dir, 'ws')
  mkdirSync(ws)
  chownSync(ws, NOBODY, NOBODY)
  const upstream = await listen((q, s) => s.end(`upstream ok ${q.url}\n`))
  const hostOnly = await listen((_q, s) => s.end('host-only service\n'))
  const router = await listen((q, s) => s.end(`router saw ${q.method} ${q.url} auth=${q.headers.authorization ?? '-'}\n`))
  const policy = join(dir, 'policy.yaml')
  writeFileSync(policy, `version: 1\nnetwork:\n  mode: proxy\n  unlisted: deny\n  allow:\n    - { cidr: 127.0.0.1/32, ports: [${upstream.port}] }\n`, { mode: 0o644 })
  const gateSock = join(dir, 'gate.sock')
  const audit = join(dir, 'audit.jsonl')
  const engine: ChildProcess = spawn(process.execPath, [...cli, 'engine', '--policy', policy, '--listen', '127.0.0.1:0',
    '--listen-unix', gateSock, '--control', join(dir, 'ctl', 'engine.sock'), '--router', `127.0.0.1:${router.port}`, '--audit', audit],
    { stdio: ['ignore', 'ignore', 'inherit'] })
  t.teardown(() => {
    engine.kill('SIGTERM')
    upstream.close(); hostOnly.close(); router.close()
  })
  for (let i = 0; i < 300 && !existsSync(gateSock); i++) await new Promise((r) => setTimeout(r, 100))

  const script = [
    'id -u',
    'echo "---"',
    `curl -sS -m 10 --noproxy "" -x "$HTTP_PROXY" http://127.0.0.1:${upstream.port}/allowed`,
    'echo "---"',
    'curl -sS -m 10 http://inference.local/v1/models -H "Authorization: Bearer sk-agent"',
    'echo "---"',
    'curl -sS -m 10 -o /dev/null -w "%{http_code}\\n" http://denied.example/ ; curl -sS -m 10 http://denied.example/',
    'echo "---"',
    `curl -sS -m 5 --noproxy "*" http://127.0.0.1:${hostOnly.port}/ 2>&1 || echo "direct-loopback-failed"`,
    'echo "---"',
    'tail -n +2 /proc/net/route | wc -l',
    'echo "---"',
    'printenv OPENAI_API_KEY || echo "no-key"',
  ].join('; ')
  const r = await new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
    const c = spawn(process.execPath, [...cli, 'run', '--policy', policy, '--gate-socket', gateSock, '--gate-port', '3128', '--', 'bash', '-c', script], {
      cwd: ws,
      uid: NOBODY,
      gid: NOBODY,
      env: { PATH: process.env.PATH, HOME: ws, OPENAI_API_KEY: 'sk-launcher-secret' },
    })
    let out = '', err = ''
    c.stdout.on('data', (d) => (out += d))
    c.stderr.on('data', (d) => (err += d))
    c.on('close', (code) => resolve({ code, out, err }))
  })
  const parts = r.out.split('---\n')
  t.equal(r.code, 0, `cordon run exited 0 (stderr: ${r.err.slice(0, 800)})`)
  t.equal(parts.length, 7, 'seven sections of output')
  t.equal(parts[0]?.trim(), String(NOBODY), 'the command runs as the user who ran cordon run (its uid mapped to itself)')
  t.match(parts[1], /upstream ok \/allowed/, 'an allowed destination is reached through the relay and the gate')
  t.match(parts[2], /router saw GET \/v1\/models auth=Bearer sk-agent/, 'inference.local leads to the router')
  t.match(parts[3], /^403\n/, 'a denied host gets HTTP 403 from the gate')
  t.match(parts[3], /denied\.example.*denied/s, 'the 403 says which host was denied and why')
  t.match(parts[4], /direct-loopback-failed/, 'the host loopback service is out of reach without the gate')
  t.notMatch(parts[4], /host-only service/, 'the host-only service never answered')
  t.equal(parts[5]?.trim(), '0', 'the sandbox namespace has no route at all: a client that ignores the proxy reaches nothing')
  t.match(parts[6], /no-key/, 'the launcher key is not in the sandbox environment')
  const decisions = readFileSync(audit, 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((l) => l.type === 'decision')
  t.ok(decisions.some((d) => d.host === 'denied.example' && d.decision === 'deny'), 'the denial is in the audit trail')
  t.ok(decisions.some((d) => d.host === '127.0.0.1' && d.port === upstream.port && d.decision === 'allow'), 'the allowed request is in the audit trail')

  t.test('without --gate-socket a non-root proxy run is refused with what to do', async (t) => {
    const c = spawnSync(process.execPath, [...cli, 'run', '--policy', policy, '--', 'true'], { cwd: ws, uid: NOBODY, gid: NOBODY, env: { PATH: process.env.PATH, HOME: ws }, encoding: 'utf8' })
    t.equal(c.status, 125, 'exit 125: cordon refused to start it')
    t.match(c.stderr, /--listen-unix PATH.*--gate-socket PATH/s, 'the message names the engine option and the run option')
  })

  t.test('a gate socket that does not exist is refused before anything runs', async (t) => {
    const c = spawnSync(process.execPath, [...cli, 'run', '--policy', policy, '--gate-socket', join(dir, 'nope.sock'), '--', 'touch', join(ws, 'ran')], { cwd: ws, uid: NOBODY, gid: NOBODY, env: { PATH: process.env.PATH, HOME: ws }, encoding: 'utf8' })
    t.equal(c.status, 125)
    t.match(c.stderr, /nope\.sock: ENOENT/)
    t.notOk(existsSync(join(ws, 'ran')), 'the command never ran')
  })
}
