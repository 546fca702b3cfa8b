/**
 * Egress gate benchmark: the engine runs as its own process (`cordon engine`, audit on disk with
 * fdatasync), an upstream HTTP server on 127.0.0.2 stands in for the internet, and every figure
 * is compared with the same work done direct, in the same run.
 *   1. a 100 MB download through a CONNECT tunnel vs direct (throughput ratio; goal >= 0.8), with
 *      the splice relay (the default) and with `--relay node` (a second engine), and the engine's
 *      CPU time per download for each
 *   2. added latency per small HTTP request through the gate vs direct, keep-alive both ways
 *      (p50, p99; goal p50 < 0.3 ms), the targets interleaved in blocks of 100 requests
 *   3. the same with a new connection per request (each one a fresh, fdatasync'd decision)
 *   4. (root) the same from a sandbox network namespace over its veth, with the client-process lookup
 * Beside direct, two bare Node forward proxies (bench/floor-proxy.mjs, no policy, no audit) run the
 * same work: node:http on both legs, and node:http's server with undici upstream (the engine's
 * libraries: the gap between it and the gate is the engine's own cost).
 * Run: npx tsx bench/engine.ts [--mb 100] [--n 3000]
 */
import http from 'node:http'
import net from 'node:net'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { startUpstream, spawnEngine, tmpdir } from '../test/engine/helpers.js'

const arg = (k: string, d: number) => {
  const i = process.argv.indexOf(`--${k}`)
  return i > 0 ? Number(process.argv[i + 1]) : d
}
const MB = arg('mb', 100)
const N = arg('n', 3000)

function download(connectPort: number, host: string, viaConnect: string | null, bytes: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port: connectPort, host, noDelay: true })
    const t0 = performance.now()
    let got = 0
    let est = viaConnect === null
    let headDone = false
    const req = `GET /big?n=${bytes} HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n`
    s.on('connect', () => {
      if (viaConnect) s.write(`CONNECT ${viaConnect} HTTP/1.1\r\nHost: ${viaConnect}\r\n\r\n`)
      else s.write(req)
    })
    let pre = ''
    s.on('data', (c: Buffer) => {
      if (!est) {
        pre += c.toString('latin1')
        if (pre.includes('\r\n\r\n')) {
          if (!pre.startsWith('HTTP/1.1 200')) return reject(new Error(pre))
          est = true
          s.write(req)
        }
        return
      }
      if (!headDone) {
        const i = c.indexOf('\r\n\r\n')
        if (i < 0) return
        headDone = true
        got += c.length - i - 4
      } else got += c.length
    })
    s.on('close', () => {
      if (got < bytes) return reject(new Error(`short read ${got}/${bytes}`))
      resolve(performance.now() - t0)
    })
    s.on('error', reject)
  })
}

/** CPU time (user + system, ms) a process (the engine, the bare proxy) has used so far: less sensitive to other
 * load on the machine than wall-clock latency */
function processCpuMs(pid: number): number {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100 // clock ticks (USER_HZ = 100)
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!
}

type Via = { host: string; port: number } | null

/**
 * Sequential small requests, the targets in turn in blocks of 100 (direct, gate, floor, direct,
 * ...): the targets see the same stretches of the shared machine, so slow-varying noise from other
 * tenants cancels out of the differences. Returns each target's latencies (ms) and the CPU each proxy
 * process spent per request over the measured part.
 */
async function latencies(n: number, vias: Via[], upstream: { host: string; port: number }, keepAlive: boolean, pids: Array<number | null>): Promise<{ lat: number[][]; cpuMs: Array<number | null> }> {
  const agents = vias.map(() => new http.Agent({ keepAlive, maxSockets: 1 }))
  const one = (k: number) =>
    new Promise<number>((resolve, reject) => {
      const t0 = performance.now()
      const via = vias[k]
      const req = http.request(
        via
          ? { host: via.host, port: via.port, path: `http://api.example.com:${upstream.port}/small`, agent: agents[k], headers: { host: `api.example.com:${upstream.port}` } }
          : { host: upstream.host, port: upstream.port, path: '/small', agent: agents[k], headers: { host: `api.example.com:${upstream.port}` } },
        (res) => {
          res.resume()
          res.on('end', () => (res.statusCode === 200 ? resolve(performance.now() - t0) : reject(new Error(`status ${res.statusCode}`))))
        },
      )
      req.on('error', reject)
      req.end()
    })
  for (let i = 0; i < Math.min(200, n / 5); i++) for (let k = 0; k < vias.length; k++) await one(k)
  const lat = vias.map(() => [] as number[])
  const cpu0 = pids.map((p) => (p ? processCpuMs(p) : 0))
  // blocks of BLOCK requests per target, targets in turn: each stays warm within its block (single
  // interleaved requests would measure the VM's wake-up of a sleeping process); the first 2 of each
  // block are not counted
  const BLOCK = 100
  for (let i = 0; i < n; i += BLOCK) {
    for (let k = 0; k < vias.length; k++) {
      for (let j = -2; j < Math.min(BLOCK, n - i); j++) {
        const ms = await one(k)
        if (j >= 0) lat[k]!.push(ms)
      }
    }
  }
  const cpuMs = pids.map((p, k) => (p ? (processCpuMs(p) - cpu0[k]!) / n : null))
  for (const a of agents) a.destroy()
  return { lat, cpuMs }
}


/**
 * 4. What a sandboxed agent sees: the client in a sandbox network namespace (lib/sandbox/netns.ts,
 * the veth wiring of `cordon run` as root), through an engine on the gate address that looks up the
 * client's pid and binary once per connection (--identify sandboxes, the default), against the same
 * client process run on the host calling the upstream directly. Both are separate processes, batches
 * alternated. Needs root and iproute2; says so and skips otherwise.
 */
async function sandboxSection(): Promise<void> {
  const title = '4. from a sandbox network namespace (veth; the engine names the client process once per connection)'
  if (process.getuid?.() !== 0) return void console.log(`\n${title}: skipped (needs root to create the namespace)`)
  const { prepareNetns, ensureGateAddress, GATE_ADDRESS } = await import('../lib/sandbox/netns.js')
  try {
    ensureGateAddress()
  } catch (err) {
    return void console.log(`\n${title}: skipped (${(err as Error).message})`)
  }
  const registry = path.join(dir, 'registry')
  const sock = path.join(dir, 'engine-ns.sock')
  const en = await spawnEngine(['--policy', policy, '--listen', `${GATE_ADDRESS}:0`, '--control', sock, '--audit', path.join(dir, 'state', 'audit-ns.jsonl'), '--resolve', 'api.example.com=127.0.0.2', '--netns-registry', registry], {}, [], process.env.BENCH_SOURCE !== 'lib')
  const ns = prepareNetns({ id: `bench${process.pid % 100000}`, gatePort: en.ready.gate.port, registryDir: registry })
  // sequential requests (20 warm-up), keep-alive or a new connection each; prints the latencies (ms)
  const client = `const http = require('http'); const [mode, n, target, proxy] = process.argv.slice(1);
const agent = new http.Agent({ keepAlive: mode === 'ka', maxSockets: 1 }); const t = new URL(target); const p = proxy ? new URL(proxy) : null;
const one = () => new Promise((res, rej) => { const t0 = performance.now();
  const r = http.request({ host: p ? p.hostname : t.hostname, port: p ? p.port : t.port, path: p ? target : t.pathname, agent, headers: { host: 'api.example.com:' + t.port } },
    (x) => { x.resume(); x.on('end', () => (x.statusCode === 200 ? res(performance.now() - t0) : rej(new Error('status ' + x.statusCode)))) });
  r.on('error', rej); r.end() });
(async () => { for (let i = 0; i < 20; i++) await one(); const out = []; for (let i = 0; i < Number(n); i++) out.push(await one()); console.log(JSON.stringify(out)) })().catch((e) => { console.error(e.message); process.exit(1) })`
  const run = (cmd: string[], args: string[]) =>
    new Promise<number[]>((resolve, reject) => {
      const c = spawn(cmd[0]!, [...cmd.slice(1), process.execPath, '-e', client, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
      let out = ''
      let err = ''
      c.stdout!.on('data', (d) => (out += d))
      c.stderr!.on('data', (d) => (err += d))
      c.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`client exited ${code}: ${err}`))))
    })
  const lookups = () =>
    new Promise<string>((resolve) => {
      http.get({ socketPath: sock, path: '/metrics' }, (r) => {
        let b = ''
        r.on('data', (c) => (b += c))
        r.on('end', () => resolve(b.split('\n').filter((l) => l.startsWith('cordon_engine_peer_lookups_total')).map((l) => l.replace(/^.*result="(\w+)"\} /, '$1 ')).join(', ') || 'none'))
      })
    })
  try {
    const direct = `http://127.0.0.2:${up.port}/small`
    const viaGate = `http://api.example.com:${up.port}/small`
    console.log(`\n${title}`)
    for (const [label, mode, n] of [['keep-alive', 'ka', 300], ['new connection each', 'new', 100]] as const) {
      const d: number[] = []
      const g: number[] = []
      for (let round = 0; round < 4; round++) {
        d.push(...(await run(['env'], [mode, String(n), direct])))
        g.push(...(await run(['ip', 'netns', 'exec', ns.name], [mode, String(n), viaGate, ns.proxyEnv.HTTP_PROXY!])))
      }
      console.log(`   ${label.padEnd(20)} host direct p50 ${pct(d, 50).toFixed(3)} ms p99 ${pct(d, 99).toFixed(3)} ms; sandbox through the gate p50 ${pct(g, 50).toFixed(3)} ms p99 ${pct(g, 99).toFixed(3)} ms; added p50 ${(pct(g, 50) - pct(d, 50)).toFixed(3)} ms p99 ${(pct(g, 99) - pct(d, 99)).toFixed(3)} ms`)
    }
    console.log(`   client lookups: ${await lookups()} (the veth hop and the lookup are in these figures; sections 2-3 have neither)`)
  } finally {
    ns.cleanup()
    await en.stop()
  }
}

const up = await startUpstream('127.0.0.2')
const dir = tmpdir('cordon-bench-engine-')
const policy = path.join(dir, 'policy.yaml')
fs.writeFileSync(policy, `network:\n  mode: proxy\n  allow:\n    - api.example.com:${up.port}\n    - { cidr: 127.0.0.2/32, ports: [${up.port}] }\n`)
// the audit log lives apart from the policy, as `cordon up` lays them out (state/engine/audit.jsonl):
// the engine watches the policy's directory, and an audit log inside it wakes that watch on every
// append (measured: +25-60 us p50 per request)
const audit = path.join(dir, 'state', 'audit.jsonl')
const e = await spawnEngine(['--policy', policy, '--listen', '127.0.0.1:0', '--control', path.join(dir, 'engine.sock'), '--audit', audit, '--resolve', `api.example.com=127.0.0.2`], {}, [], process.env.BENCH_SOURCE !== 'lib')
const gate = e.ready.gate
const startFloor = async (...args: string[]) => {
  const proc = spawn(process.execPath, [path.join(import.meta.dirname, 'floor-proxy.mjs'), '127.0.0.2', ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
  return { proc, via: { host: '127.0.0.1', port: await new Promise<number>((resolve) => proc.stdout!.once('data', (d) => resolve(JSON.parse(String(d)).port))) } }
}
const { proc: floorProc, via: floor } = await startFloor()
// the same bare proxy with the engine's upstream client (undici): the engine's own cost is the gap
const { proc: floorUProc, via: floorU } = await startFloor('undici')
try {
  console.log(`cordon egress gate benchmark (engine pid ${e.ready.pid}, audit fdatasync on, ${new Date().toISOString()})`)
  // 1. throughput
  const bytes = MB * 1024 * 1024
  // alternate direct and tunnel runs; the ratio of each adjacent pair, then the median, is less
  // sensitive to other load on the machine than best-of-N of each side
  const direct: number[] = []
  const tunnel: number[] = []
  const floorT: number[] = []
  const ratios: number[] = []
  const floorRatios: number[] = []
  const nodeT: number[] = []
  const nodeRatios: number[] = []
  const cpu = { splice: 0, node: 0 }
  // the same engine with `--relay node`: what the splice relay saves
  const en = await spawnEngine(['--policy', policy, '--listen', '127.0.0.1:0', '--control', path.join(dir, 'engine-node.sock'), '--relay', 'node', '--audit', path.join(dir, 'audit-node.jsonl'), '--resolve', `api.example.com=127.0.0.2`], {}, [], process.env.BENCH_SOURCE !== 'lib')
  const RUNS = arg('runs', 15) // a download takes ~0.1 s: many pairs make the median steadier on a noisy VM
  for (let i = 0; i < RUNS; i++) {
    const d = await download(up.port, '127.0.0.2', null, bytes)
    let c0 = processCpuMs(e.ready.pid)
    const tt = await download(gate.port, gate.host, `api.example.com:${up.port}`, bytes)
    cpu.splice += processCpuMs(e.ready.pid) - c0
    c0 = processCpuMs(en.ready.pid)
    const nt = await download(en.ready.gate.port, en.ready.gate.host, `api.example.com:${up.port}`, bytes)
    cpu.node += processCpuMs(en.ready.pid) - c0
    const ft = await download(floor.port, floor.host, `127.0.0.2:${up.port}`, bytes)
    direct.push(d)
    tunnel.push(tt)
    nodeT.push(nt)
    floorT.push(ft)
    ratios.push(d / tt)
    nodeRatios.push(d / nt)
    floorRatios.push(d / ft)
  }
  await en.stop()
  const mbps = (ms: number) => (MB / (ms / 1000)).toFixed(0)
  console.log(`\n1. ${MB} MB download, ${RUNS} alternating runs each (load average ${os.loadavg()[0]!.toFixed(1)} on ${os.cpus().length} CPUs)`)
  console.log(`   direct            median ${mbps(pct(direct, 50))} MB/s  best ${mbps(Math.min(...direct))} MB/s`)
  console.log(`   CONNECT tunnel    median ${mbps(pct(tunnel, 50))} MB/s  best ${mbps(Math.min(...tunnel))} MB/s  (splice relay, the default; engine CPU ${(cpu.splice / RUNS).toFixed(0)} ms per download)`)
  console.log(`   --relay node      median ${mbps(pct(nodeT, 50))} MB/s  best ${mbps(Math.min(...nodeT))} MB/s  (engine CPU ${(cpu.node / RUNS).toFixed(0)} ms per download)`)
  console.log(`   bare Node proxy   median ${mbps(pct(floorT, 50))} MB/s  best ${mbps(Math.min(...floorT))} MB/s`)
  console.log(`   ratio             median of pairs ${pct(ratios, 50).toFixed(2)}, best/best ${(Math.min(...direct) / Math.min(...tunnel)).toFixed(2)}  (goal >= 0.8; --relay node ${pct(nodeRatios, 50).toFixed(2)}; bare Node proxy ${pct(floorRatios, 50).toFixed(2)})`)

  // 2. small requests, keep-alive; 3. a new connection per request (every request a new decision,
  // fdatasync'd before it takes effect). Direct, gate and bare proxy requests interleaved.
  for (const [title, keepAlive, n] of [
    [`2. small HTTP request, keep-alive, ${N} sequential requests each, interleaved direct / gate / bare proxies in blocks of 100`, true, N],
    [`3. small HTTP request, new connection each, ${Math.min(N, 1000)} requests each, interleaved (each a durable audit record)`, false, Math.min(N, 1000)],
  ] as const) {
    const { lat, cpuMs } = await latencies(n, [null, gate, floor, floorU], up, keepAlive, [null, e.ready.pid, floorProc.pid!, floorUProc.pid!])
    const [d, g, fl, fu] = lat as [number[], number[], number[], number[]]
    const added = (xs: number[], p: number) => (pct(xs, p) - pct(d, p)).toFixed(3)
    console.log(`\n${title}`)
    console.log(`   direct            p50 ${pct(d, 50).toFixed(3)} ms  p99 ${pct(d, 99).toFixed(3)} ms`)
    console.log(`   through the gate  p50 ${pct(g, 50).toFixed(3)} ms  p99 ${pct(g, 99).toFixed(3)} ms`)
    console.log(`   bare Node proxy   p50 ${pct(fl, 50).toFixed(3)} ms  p99 ${pct(fl, 99).toFixed(3)} ms  (node:http both legs)`)
    console.log(`   bare undici proxy p50 ${pct(fu, 50).toFixed(3)} ms  p99 ${pct(fu, 99).toFixed(3)} ms  (node:http server, undici upstream: the engine's libraries)`)
    console.log(`   added             p50 ${added(g, 50)} ms  p99 ${added(g, 99)} ms${keepAlive ? '  (goal p50 < 0.3 ms)' : ''}; bare Node proxy adds p50 ${added(fl, 50)} ms  p99 ${added(fl, 99)} ms; bare undici proxy p50 ${added(fu, 50)} ms  p99 ${added(fu, 99)} ms`)
    console.log(`   CPU per request   engine ${cpuMs[1]!.toFixed(3)} ms (user+system, includes its audit writes); bare Node proxy ${cpuMs[2]!.toFixed(3)} ms; bare undici proxy ${cpuMs[3]!.toFixed(3)} ms`)
  }
  await sandboxSection()
} finally {
  floorProc.kill('SIGTERM')
  floorUProc.kill('SIGTERM')
  await e.stop()
  await up.close()
  fs.rmSync(dir, { recursive: true, force: true })
}
