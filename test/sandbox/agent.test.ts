/**
 * spawn() with the default agent policy (profiles/agent.yaml + the agent seccomp profile): each
 * escape is attempted from inside and fails, the same call succeeds (or reaches the kernel's own
 * checks) in an unconfined control child, and ordinary work beside it still succeeds.
 */
import t from 'tap'
import net from 'node:net'
import { join } from 'node:path'
import { writeFileSync, existsSync } from 'node:fs'
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { spawn } from '../../lib/sandbox/spawn.js'
import { probe } from '../../lib/kernel/probe.js'
import { tempDir, ATTACKS } from '../fixtures/kernel/run.js'

const f = probe()
const skip = f.landlockAbi === 0 ? 'Landlock is not available on this kernel' : !f.seccomp ? 'seccomp is not available' : false
const FIXTURES = fileURLToPath(new URL('../fixtures', import.meta.url))

interface Out { code: number | null; signal: string | null; stdout: string; stderr: string }
function collect(child: ReturnType<typeof spawn>): Promise<Out> {
  return new Promise((resolve, reject) => {
    let stdout = ''
    let stderr = ''
    child.stdout!.setEncoding('utf8').on('data', (d) => (stdout += d))
    child.stderr!.setEncoding('utf8').on('data', (d) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }))
  })
}
const policy = { filesystem: { read_only: [FIXTURES] } }

t.test('agent profile: every denied family fails from inside, works in a control child', { skip }, async (t) => {
  const ws = tempDir(t)
  const outside = tempDir(t, 'cordon-outside-')
  const sockPath = join(outside, 'agent.sock') // a pathname socket outside the policy (think docker.sock)
  const name = `cordon-agent-test-${process.pid}`
  const servers = [net.createServer((c) => c.end()), net.createServer((c) => c.end())]
  await new Promise<void>((r) => servers[0]!.listen({ path: sockPath }, r))
  await new Promise<void>((r) => servers[1]!.listen({ path: '\0' + name }, r))
  t.teardown(() => servers.forEach((s) => s.close()))
  const args = [ATTACKS, String(process.pid), sockPath, name]
  // control: the same attempts, unconfined
  const ctl = JSON.parse(spawnSync('python3', args, { encoding: 'utf8' }).stdout)
  const r = await collect(spawn(policy, 'python3', args, { workspace: ws, stdio: 'pipe' }))
  t.equal(r.code, 0, r.stderr)
  const inside = JSON.parse(r.stdout)
  const expect: Record<string, [string, string]> = {
    ptrace: ['ok', 'EPERM'],
    mount: ['ENOENT', 'EPERM'],
    unshare_user: ['ok', 'EPERM'],
    raw_socket: ['ok', 'EPERM'],
    packet_socket: ['ok', 'EPERM'],
    io_uring_setup: ['ok', 'EPERM'],
    bpf: ['EINVAL', 'EPERM'],
    unix_pathname_connect: ['ok', 'EPERM'],
    unix_abstract_connect: ['ok', 'EPERM'],
    kill_parent: ['ok', 'EPERM'],
    // as root the default (process.others: auto) hides every process outside the sandbox: its /proc
    // entries do not exist; otherwise Landlock's ptrace rules refuse them (helper.test checks that alone)
    parent_environ: ['ok', f.isRoot ? 'ENOENT' : 'EACCES'],
    parent_mem: ['ok', f.isRoot ? 'ENOENT' : 'EACCES'],
    parent_cmdline: ['ok', f.isRoot ? 'ENOENT' : 'ok'],
    init_listed: ['ok', f.isRoot ? 'ENOENT' : 'ok'],
  }
  for (const [k, [c, i]] of Object.entries(expect)) {
    t.equal(ctl[k], c, `control: ${k} -> ${c}`)
    t.equal(inside[k], i, `inside: ${k} -> ${i}`)
  }
  if (f.arch === 'x86_64') {
    t.not(ctl.x32_getpid, 'EPERM', `control: x32 syscall reaches the kernel (${ctl.x32_getpid})`)
    t.equal(inside.x32_getpid, 'EPERM', 'inside: a syscall with the x32 bit set is rejected')
  }
  t.equal(inside.socketpair, 'ok', 'socketpair (child-process plumbing) still works')
  t.equal(inside.getpid, 'ok')
})

t.test('agent profile: ordinary work still works inside', { skip }, async (t) => {
  const ws = tempDir(t)
  writeFileSync(join(ws, 'script.js'), `
const net = require('node:net'), cp = require('node:child_process'), fs = require('node:fs')
const out = {}
out.child = cp.execFileSync('sh', ['-c', 'echo from-child']).toString().trim()
out.spawnSync = cp.spawnSync('node', ['-e', 'process.stdout.write(String(6*7))']).stdout.toString()
fs.writeFileSync('made.txt', 'hello'); out.write = fs.readFileSync('made.txt', 'utf8')
fs.writeFileSync('/tmp/t.txt', 'tmp'); out.tmp = fs.readFileSync('/tmp/t.txt', 'utf8')
out.usr = fs.readdirSync('/usr').includes('bin')
const srv = net.createServer((c) => c.end('pong')).listen(0, '127.0.0.1', () => {
  net.connect(srv.address().port, '127.0.0.1').on('data', (d) => { out.loopback = String(d); srv.close()
    const s = net.connect(80, '1.1.1.1') // only inside the empty namespace
    s.on('error', (e) => { out.public = e.code; console.log(JSON.stringify(out)) })
    s.on('connect', () => { out.public = 'connected'; console.log(JSON.stringify(out)); s.destroy() })
  })
})
`)
  process.env.OPENAI_API_KEY = 'sk-outside-the-sandbox'
  t.teardown(() => { delete process.env.OPENAI_API_KEY })
  const r = await collect(// (env -u: the tap runner injects its loader via NODE_OPTIONS into every spawn; not ours to test)
  spawn(policy, 'env', ['-u', 'NODE_OPTIONS', 'node', 'script.js'], { workspace: ws, cwd: ws, stdio: 'pipe' }))
  t.equal(r.code, 0, r.stderr)
  const o = JSON.parse(r.stdout)
  t.equal(o.child, 'from-child', "node's child_process works inside")
  t.equal(o.spawnSync, '42')
  t.equal(o.write, 'hello', 'workspace writable')
  t.equal(o.tmp, 'tmp', 'private /tmp writable')
  t.ok(existsSync(join(ws, '.cordon', 'tmp', 't.txt')), "/tmp inside is the workspace's private tmp")
  t.equal(o.usr, true, '/usr readable')
  t.equal(o.loopback, 'pong', 'loopback TCP works (network none)')
  t.equal(o.public, 'ENETUNREACH', 'no route out of the namespace')

  const sh = await collect(spawn(policy, 'bash', ['-c', 'printf "a\\nb\\n" | tr a-z A-Z | sort -r; printenv'], { workspace: ws, stdio: 'pipe' }))
  t.equal(sh.code, 0, sh.stderr)
  t.match(sh.stdout, /^B\nA\n/, 'bash pipes')
  t.notMatch(sh.stdout, /OPENAI_API_KEY|sk-outside/, 'the launcher environment is scrubbed')
  t.match(sh.stdout, /^HOME=/m)

  const denied = await collect(spawn(policy, 'bash', ['-c', 'cat ~root/.bashrc /etc/shadow; ls /root; echo x > /etc/cordon-x'], { workspace: ws, stdio: 'pipe' }))
  t.match(denied.stderr, /\/etc\/shadow: Permission denied/)
  t.match(denied.stderr, /Permission denied/)
  t.notOk(existsSync('/etc/cordon-x'))
})
