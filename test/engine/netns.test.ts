/**
 * A sandbox network namespace wired to the gate (lib/sandbox/netns.ts), with real namespaces:
 * a client using the proxy reaches allowed hosts; a client that ignores the proxy has no route;
 * host services bound to 0.0.0.0 are not reachable through the veth.
 */
import t from 'tap'
import fs from 'node:fs'
import http from 'node:http'
import path from 'node:path'
import { execFileSync, execFile } from 'node:child_process'
import { Engine } from '../../lib/engine/engine.js'
import { prepareNetns, ensureGateAddress, GATE_ADDRESS, SANDBOX_TCP_HASH_BUCKETS, SLOT_DIR } from '../../lib/sandbox/netns.js'
import { startUpstream, tmpdir, readAudit, hasIproute2 } from './helpers.js'

const root = process.getuid?.() === 0
const ipOk = hasIproute2()
if (!root || !ipOk) {
  t.skip(`needs root and iproute2 to create network namespaces (root: ${root}, ip: ${ipOk})`)
} else {
  const up = await startUpstream('127.0.0.2')
  const dir = tmpdir()
  const registry = path.join(dir, 'registry')
  const policyFile = path.join(dir, 'policy.yaml')
  fs.writeFileSync(policyFile, `network:\n  mode: proxy\n  allow:\n    - api.example.com:${up.port}\n    - { cidr: 127.0.0.2/32, ports: [${up.port}] }\n`)
  ensureGateAddress()
  const audit = path.join(dir, 'audit.jsonl')
  const engine = new Engine({
    policyFile,
    listen: { host: GATE_ADDRESS, port: 0 },
    audit,
    hosts: { 'api.example.com': ['127.0.0.2'] },
    netnsRegistry: registry,
    watch: false,
  })
  const gate = await engine.start()
  // a host service on the wildcard address: the sandbox must not reach it through the veth
  const hostSvc = http.createServer((_q, s) => s.end('host service'))
  await new Promise<void>((r) => hostSvc.listen(0, '0.0.0.0', () => r()))
  const hostPort = (hostSvc.address() as { port: number }).port
  const id = `t${process.pid}`
  let childEhash: string | null = null
  try {
    childEhash = fs.readFileSync('/proc/sys/net/ipv4/tcp_child_ehash_entries', 'utf8').trim()
  } catch {
    /* older kernel */
  }
  const ns = prepareNetns({ id, gatePort: gate.port, registryDir: registry })
  t.teardown(async () => {
    ns.cleanup()
    hostSvc.close()
    await engine.stop()
    await up.close()
  })

  // async: the engine runs in this process and must keep serving while the client waits
  const inNs = (script: string, env: Record<string, string> = {}) =>
    new Promise<{ status: number; stdout: string; stderr: string }>((resolve) => {
      execFile('ip', ['netns', 'exec', ns.name, process.execPath, '-e', script], { env: { PATH: process.env.PATH!, ...env }, encoding: 'utf8', timeout: 20_000 }, (err, stdout, stderr) =>
        resolve({ status: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
      )
    })

  // a tiny client that honours HTTP_PROXY the way agents do (absolute-URI through the proxy)
  const viaEnvProxy = `
const http = require('http'); const u = new URL(process.env.HTTP_PROXY);
const r = http.request({ host: u.hostname, port: u.port, path: process.argv[1] || process.env.TARGET, headers: { host: 'x' } }, (res) => {
  let b = ''; res.on('data', (c) => b += c); res.on('end', () => { console.log(JSON.stringify({ status: res.statusCode, body: b })) })
}); r.on('error', (e) => console.log(JSON.stringify({ error: e.code }))); r.end()`
  const direct = (host: string, port: number) => `
const net = require('net'); const s = net.connect({ host: '${host}', port: ${port}, timeout: 3000 });
s.on('connect', () => { console.log(JSON.stringify({ connected: true })); s.destroy() });
s.on('timeout', () => { console.log(JSON.stringify({ error: 'TIMEOUT' })); s.destroy() });
s.on('error', (e) => console.log(JSON.stringify({ error: e.code })))`

  t.test('the namespace exists and is registered', async (t) => {
    t.ok(fs.existsSync(ns.netnsPath))
    t.equal(fs.readFileSync(path.join(registry, ns.sandboxAddress), 'utf8').trim(), id)
    t.equal(ns.proxyEnv.HTTPS_PROXY, `http://${GATE_ADDRESS}:${gate.port}`)
    t.equal(ns.proxyEnv.no_proxy, 'localhost,127.0.0.1,::1')
    const routes = execFileSync('ip', ['-n', ns.name, 'route', 'show'], { encoding: 'utf8' })
    t.notMatch(routes, /default/, 'no default route')
  })

  t.test("the namespace has a TCP connection hash of its own, and the host's setting is put back", { skip: childEhash === null && 'no net.ipv4.tcp_child_ehash_entries (Linux < 6.1)' }, async (t) => {
    // a negative tcp_ehash_entries means "shares the host's" (see the kernel's ip-sysctl docs)
    const own = Number(execFileSync('ip', ['netns', 'exec', ns.name, 'sysctl', '-n', 'net.ipv4.tcp_ehash_entries'], { encoding: 'utf8' }).trim())
    if (childEhash === '0') t.equal(own, SANDBOX_TCP_HASH_BUCKETS, `its own hash of ${SANDBOX_TCP_HASH_BUCKETS} buckets`)
    else t.ok(own > 0, `its own hash (${own} buckets, the size the host chose)`)
    t.equal(fs.readFileSync('/proc/sys/net/ipv4/tcp_child_ehash_entries', 'utf8').trim(), childEhash, 'tcp_child_ehash_entries is back to what it was')
  })

  t.test('a client using the proxy reaches an allowed host; the audit names the sandbox', async (t) => {
    const r = await inNs(viaEnvProxy, { ...ns.proxyEnv, TARGET: `http://api.example.com:${up.port}/from-sandbox` })
    t.equal(r.status, 0, r.stderr)
    t.same(JSON.parse(r.stdout), { status: 200, body: 'hello GET /from-sandbox' })
    const denied = await inNs(viaEnvProxy, { ...ns.proxyEnv, TARGET: 'http://elsewhere.example.com/' })
    t.equal(JSON.parse(denied.stdout).status, 403)
    const recs = readAudit(audit).filter((x) => x.type === 'decision')
    t.ok(recs.length >= 2 && recs.every((x) => x.sandbox === id), 'decisions carry the sandbox id')
  })

  t.test("the audit names the sandbox's process that asked (found in its own namespace)", async (t) => {
    const who = `
const http = require('http'); const u = new URL(process.env.HTTP_PROXY);
http.request({ host: u.hostname, port: u.port, path: 'http://api.example.com:${up.port}/who' }, (res) => { res.resume(); res.on('end', () => console.log(JSON.stringify({ pid: process.pid, status: res.statusCode }))) }).end()`
    const r = await inNs(who, ns.proxyEnv)
    t.equal(r.status, 0, r.stderr)
    const c = JSON.parse(r.stdout) as { pid: number; status: number }
    t.equal(c.status, 200)
    const rec = readAudit(audit).find((x) => x.type === 'decision' && x.path === '/who')
    t.ok(rec, 'the decision is audited')
    t.equal(rec?.pid, c.pid, "the pid of the client inside the sandbox's namespace")
    t.equal(rec?.binary, fs.realpathSync(process.execPath))
    t.equal(rec?.sandbox, id)
  })

  t.test('a client that ignores the proxy has no route', async (t) => {
    const pub = JSON.parse((await inNs(direct('203.0.113.1', 80))).stdout)
    t.equal(pub.error, 'ENETUNREACH', 'no route to an outside address')
    const up2 = JSON.parse((await inNs(direct('127.0.0.2', up.port))).stdout)
    t.not(up2.connected, true, "the host's loopback services are not the sandbox's loopback")
    // the gate itself is reachable directly (that is its purpose)
    const g = JSON.parse((await inNs(direct(GATE_ADDRESS, gate.port))).stdout)
    t.equal(g.connected, true)
  })

  t.test('host services on 0.0.0.0 are not reachable through the veth', { skip: ns.firewall ? false : ns.firewallNote ?? 'no firewall' }, async (t) => {
    const viaHostSide = JSON.parse((await inNs(direct(ns.hostAddress, hostPort))).stdout)
    t.not(viaHostSide.connected, true, `host side address ${ns.hostAddress}: ${JSON.stringify(viaHostSide)}`)
    const viaGateAddr = JSON.parse((await inNs(direct(GATE_ADDRESS, hostPort))).stdout)
    t.not(viaGateAddr.connected, true, `gate address, other port: ${JSON.stringify(viaGateAddr)}`)
  })

  t.test('cleanup removes the namespace, the veth and the registration', async (t) => {
    const other = prepareNetns({ id: `${id}b`, gatePort: gate.port, registryDir: registry })
    t.not(other.sandboxAddress, ns.sandboxAddress, 'each sandbox gets its own /30')
    other.cleanup()
    t.notOk(fs.existsSync(other.netnsPath))
    t.notOk(fs.existsSync(path.join(registry, other.sandboxAddress)))
    t.notMatch(execFileSync('iptables', ['-S'], { encoding: 'utf8' }), new RegExp(`cordon-${id}b`))
  })

  t.test('slots are host-wide: a sandbox registered elsewhere gets another slot, and the first keeps its veth', async (t) => {
    // another engine's registry (a second cordon on the host, or a test beside this one)
    const elsewhere = path.join(dir, 'registry-elsewhere')
    const other = prepareNetns({ id: `${id}c`, gatePort: gate.port, registryDir: elsewhere })
    t.teardown(() => other.cleanup())
    t.not(other.sandboxAddress, ns.sandboxAddress, 'another /30')
    t.equal(fs.readFileSync(path.join(elsewhere, other.sandboxAddress), 'utf8').trim(), `${id}c`, 'registered in its own registry')
    t.notOk(fs.existsSync(path.join(registry, other.sandboxAddress)), 'and not in this one')
    const n = (Number(ns.sandboxAddress.split('.')[3]) - 2) / 4
    t.equal(fs.readFileSync(path.join(SLOT_DIR, String(n)), 'utf8').trim(), ns.name, `slot ${n} is claimed for the first sandbox`)
    const links = execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' })
    t.match(links, new RegExp(`cdn${n}h@`), "the first sandbox's veth is still there")
    const r = await inNs(viaEnvProxy, { ...ns.proxyEnv, TARGET: `http://api.example.com:${up.port}/still` })
    t.same(JSON.parse(r.stdout), { status: 200, body: 'hello GET /still' }, 'and it still reaches the gate')
    other.cleanup()
    t.notOk(fs.existsSync(path.join(SLOT_DIR, String((Number(other.sandboxAddress.split('.')[3]) - 2) / 4))), 'cleanup releases the slot')
  })
}
