/**
 * network: { mode: proxy, namespace: current } — the mode a Kubernetes pod uses: no namespace of
 * cordon's own (the pod's is confined by NetworkPolicy), and Landlock (ABI >= 4) limits TCP
 * connect() to the gate's and network.connect ports. Attack from inside: connect to any other
 * port is refused by the kernel; beside it the allowed port answers.
 */
import t from 'tap'
import net from 'node:net'
import { spawn } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { loadPolicy, compilePlan, explainPlan } from '../../lib/policy/index.js'
import { probe } from '../../lib/kernel/index.js'

const root = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..')
const cli = [join(root, 'node_modules', 'tsx', 'dist', 'cli.mjs'), join(root, 'lib', 'cli', 'main.ts')]

function server(): Promise<net.Server & { port: number }> {
  return new Promise((resolve) => {
    const s = net.createServer((c) => c.end('hello\n'))
    s.listen(0, '127.0.0.1', () => resolve(Object.assign(s, { port: (s.address() as net.AddressInfo).port })))
  })
}

const dir = mkdtempSync(join(tmpdir(), 'cordon-podnet-'))
const allowed = await server()
const other = await server()
t.teardown(() => { allowed.close(); other.close() })
const policyFile = join(dir, 'policy.yaml')
writeFileSync(policyFile, `version: 1\nnetwork:\n  mode: proxy\n  namespace: current\n  connect: [${allowed.port}]\n`)

t.test('the compiled plan stays in the current namespace and handles TCP connect', async (t) => {
  const policy = loadPolicy(policyFile, { workspace: dir })
  const features = { ...probe(), landlockAbi: 7 }
  const plan = compilePlan(policy, features, { env: {}, gatePorts: [3128] })
  t.same(plan.network, { mode: 'host' }, 'no namespace of its own')
  t.ok(plan.landlock!.handledNet !== 0, 'TCP connect and bind are handled by Landlock')
  t.same(plan.landlock!.ports.map((p) => p.port).sort((a, b) => a - b), [3128, allowed.port].sort((a, b) => a - b), 'only the gate and network.connect ports')
  t.match(explainPlan(plan, policy), /namespace: current/, 'explain says so')
  const old = compilePlan(policy, { ...features, landlockAbi: 3 }, { env: {} })
  t.ok(old.lost.some((l) => /TCP|port/i.test(l)), 'below ABI 4 the port limit is reported lost')
})

const abi = probe().landlockAbi
t.test('from inside: only the allowed port connects', { skip: abi < 4 ? `Landlock ABI ${abi} has no TCP port rules (needs 4)` : false }, async (t) => {
  const script = `
    const net = require('net')
    const tryPort = (p) => new Promise((r) => { const c = net.connect(p, '127.0.0.1'); c.on('data', (d) => { r(p + ':' + String(d).trim()); c.destroy() }); c.on('error', (e) => r(p + ':' + e.code)) })
    Promise.all([tryPort(${allowed.port}), tryPort(${other.port})]).then((r) => console.log(r.join(' ')))`
  const out = await new Promise<string>((resolve) => {
    // tap's processinfo hook rides NODE_OPTIONS into every child it sees spawned (it patches
    // child_process); keep it out of the CLI so the confined node does not try to load it
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'NODE_OPTIONS' && !k.startsWith('_TAPJS')))
    const c = spawn(process.execPath, [...cli, 'run', '--policy', policyFile, '--workspace', dir, '--', 'env', '-u', 'NODE_OPTIONS', process.execPath, '-e', script], { cwd: dir, env })
    let o = ''
    c.stdout.on('data', (d) => (o += d))
    c.stderr.on('data', (d) => (o += d))
    c.on('close', () => resolve(o))
  })
  t.match(out, new RegExp(`${allowed.port}:hello`), 'the allowed port answers (legitimate work)')
  t.match(out, new RegExp(`${other.port}:EACCES`), 'any other port is refused by Landlock')
})
