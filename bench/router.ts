/**
 * Router benchmark (npm run bench:router = `npx tsx bench/router.ts`).
 *
 * Measured in one run, each server in its own process: the fake provider (test/router/fake-provider.ts),
 * the cordon router in front of it (audit on; pinned to one CPU with taskset for the c=200 runs),
 * and @portkey-ai/gateway in front of the same fake provider. The load generator (this process,
 * undici keep-alive pool) measures:
 *   - latency p50/p99 direct vs through the router vs through portkey, at 1 and 200 concurrent
 *     clients, and the added latency (proxy minus direct) and its ratio to portkey's;
 *   - requests per second at 200 concurrent clients (non-streamed), and CPU per request of each
 *     proxy, also against a bare Node proxy ("floor": node:http + undici, no logic), the least any
 *     Node proxy costs on this machine;
 *   - streaming time to first byte direct vs router.
 * Goals (issue 4): added p50 < 0.5 ms, added p99 < 2 ms, >= 5,000 non-streamed req/s on one core.
 * The box is shared: the load average is printed, and numbers from a loaded machine are noisy.
 *
 * Env: BENCH_N1 (requests at concurrency 1, default 2000), BENCH_N200 (default 30000).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs'
import { tmpdir, loadavg, cpus } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { performance } from 'node:perf_hooks'
import { createRequire } from 'node:module'
import { Pool } from 'undici'

const here = dirname(fileURLToPath(import.meta.url))
const KEY = 'sk-bench-0123456789abcdef0123456789abcdef'
const role = process.argv[2]

if (role === 'fake') {
  const { FakeProvider } = await import('../test/router/fake-provider.js')
  const f = await FakeProvider.start({ expectKey: KEY, record: false })
  process.stdout.write(JSON.stringify({ port: f.port }) + '\n')
} else if (role === 'router') {
  // the compiled package (dist/, what `cordon router` runs), not tsx's transpilation of lib/
  const dist = process.env.BENCH_SOURCE === 'lib' ? '../lib' : (process.env.BENCH_DIST ?? '../dist')
  const { PrivacyRouter } = (await import(`${dist}/router/index.js`)) as typeof import('../lib/router/index.js')
  const { setKey } = (await import(`${dist}/router/keys.js`)) as typeof import('../lib/router/keys.js')
  const dir = process.argv[4]!
  const keys = join(dir, 'keys.json')
  setKey(keys, 'openai', KEY)
  const cfg = join(dir, 'router.yaml')
  writeFileSync(
    cfg,
    `prices:\n  up-model: { input: 0.15, output: 0.6 }\ndefaults:\n  limits: { rpm: 100000000, tpm: 1000000000 }\nroutes:\n  - name: bench\n    models: [m]\n    targets:\n      - { provider: openai, base_url: "http://127.0.0.1:${process.argv[3]}/v1", model: up-model, key: { store: openai } }\n`,
  )
  const r = await PrivacyRouter.start({ config: cfg, listen: ['127.0.0.1:0'], keys, audit: join(dir, 'audit.jsonl'), state: join(dir, 'state'), logLevel: 'warn', watch: false })
  const a = r.addresses()[0]!
  process.once('SIGINT', () => process.exit(0)) // a clean exit, so --cpu-prof can write its profile
  process.stdout.write(JSON.stringify({ port: Number(a.slice(a.lastIndexOf(':') + 1)) }) + '\n')
} else if (role === 'floor') {
  // the least any Node proxy does: read the body, forward it with undici, send the answer back
  const http = await import('node:http')
  const up = new Pool(`http://127.0.0.1:${process.argv[3]}`, { connections: 1024 })
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      up.request({ method: 'POST', path: req.url!, headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` }, body: Buffer.concat(chunks) }).then(
        (r) => {
          const out: Buffer[] = []
          r.body.on('data', (c: Buffer) => out.push(c))
          r.body.on('end', () => {
            const b = Buffer.concat(out)
            res.writeHead(r.statusCode, { 'content-type': 'application/json', 'content-length': b.length })
            res.end(b)
          })
        },
        () => {
          res.writeHead(502)
          res.end()
        },
      )
    })
  })
  process.once('SIGINT', () => process.exit(0))
  server.listen(0, '127.0.0.1', () => process.stdout.write(JSON.stringify({ port: (server.address() as { port: number }).port }) + '\n'))
} else {
  await main()
}

function startChild(cmd: string, args: string[], ready: (line: string) => number | null): Promise<{ child: ChildProcess; port: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let buf = ''
    const onData = (d: Buffer) => {
      buf += d.toString()
      for (const line of buf.split('\n')) {
        const p = ready(line)
        if (p) {
          child.stdout!.off('data', onData)
          child.stdout!.resume()
          resolve({ child, port: p })
          return
        }
      }
    }
    child.stdout!.on('data', onData)
    child.stderr!.on('data', (d) => process.stderr.write(`[${args.find((a) => !a.startsWith('-')) ?? cmd}] ${d}`))
    child.on('exit', (c) => reject(new Error(`${cmd} ${args.join(' ')} exited (${c}) before it was ready`)))
  })
}

/** utime + stime of a process in seconds, from /proc (load-independent cost per request). */
function cpuSeconds(pid: number | undefined): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const parts = f.slice(f.lastIndexOf(')') + 2).split(' ')
    return (Number(parts[11]) + Number(parts[12])) / 100 // USER_HZ is 100 on Linux
  } catch {
    return NaN
  }
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!
}

interface Result {
  p50: number
  p99: number
  rps: number
  errors: number
}

async function load(port: number, headers: Record<string, string>, conc: number, n: number, stream = false): Promise<Result & { ttfb50?: number; ttfb99?: number }> {
  const pool = new Pool(`http://127.0.0.1:${port}`, { connections: conc, keepAliveTimeout: 60_000 })
  const body = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'Say hello in one short sentence.' }], ...(stream ? { stream: true } : {}) })
  const lat: number[] = []
  const ttfb: number[] = []
  let errors = 0
  let next = 0
  const t0 = performance.now()
  await Promise.all(
    Array.from({ length: conc }, async () => {
      while (next < n) {
        next++
        const s = performance.now()
        try {
          const r = await pool.request({ method: 'POST', path: '/v1/chat/completions', headers: { 'content-type': 'application/json', ...headers }, body })
          if (stream) {
            let first = true
            for await (const _c of r.body) {
              if (first) {
                ttfb.push(performance.now() - s)
                first = false
              }
            }
          } else await r.body.dump()
          if (r.statusCode !== 200) errors++
        } catch {
          errors++
        }
        lat.push(performance.now() - s)
      }
    }),
  )
  const el = (performance.now() - t0) / 1000
  await pool.close()
  lat.sort((a, b) => a - b)
  ttfb.sort((a, b) => a - b)
  return { p50: pct(lat, 50), p99: pct(lat, 99), rps: n / el, errors, ...(stream ? { ttfb50: pct(ttfb, 50), ttfb99: pct(ttfb, 99) } : {}) }
}

async function main(): Promise<void> {
  const N1 = Number(process.env.BENCH_N1 ?? 2000)
  const N200 = Number(process.env.BENCH_N200 ?? 30000)
  const dir = mkdtempSync(join(tmpdir(), 'cordon-bench-router-'))
  const self = fileURLToPath(import.meta.url)
  const tsxArgs = ['--import', 'tsx', self]
  const hasTaskset = spawnSync('taskset', ['-c', '0', 'true']).status === 0
  const ncpu = cpus().length
  const children: ChildProcess[] = []
  const portOf = (l: string) => {
    try {
      return (JSON.parse(l) as { port: number }).port
    } catch {
      return null
    }
  }
  try {
    const fake = await startChild(process.execPath, [...tsxArgs, 'fake'], portOf)
    children.push(fake.child)
    // latency runs unpinned (a pinned process cannot move off a CPU another tenant is using);
    // the c=200 throughput runs pin the proxy, all its threads, to one CPU
    const pin = (pid: number | undefined, on: boolean) => {
      if (!hasTaskset || ncpu < 2 || !pid) return
      spawnSync('taskset', ['-a', '-p', '-c', on ? String(ncpu - 1) : `0-${ncpu - 1}`, String(pid)], { stdio: 'ignore' })
    }
    const router = await startChild(process.execPath, [...tsxArgs, 'router', String(fake.port), dir], portOf)
    children.push(router.child)
    const floor = await startChild(process.execPath, [...tsxArgs, 'floor', String(fake.port)], portOf)
    children.push(floor.child)
    const require = createRequire(import.meta.url)
    const pkMain = join(dirname(require.resolve('@portkey-ai/gateway/package.json')), 'build/start-server.js')
    const pkPort = 20000 + Math.floor(Math.random() * 20000)
    let portkey: { child: ChildProcess; port: number } | null = null
    try {
      // portkey's Node server takes --port only (it binds every interface; we call it on 127.0.0.1)
      portkey = await startChild(process.execPath, [pkMain, `--port=${pkPort}`, '--headless'], (l) => (l.includes('Ready for connections') ? pkPort : null))
      children.push(portkey.child)
    } catch (e) {
      process.stderr.write(`portkey did not start: ${(e as Error).message}\n`)
    }

    const direct = { port: fake.port, headers: { authorization: `Bearer ${KEY}` } }
    const viaRouter = { port: router.port, headers: { authorization: 'Bearer dummy' } }
    const viaFloor = { port: floor.port, headers: {} }
    const viaPortkey = portkey ? { port: portkey.port, headers: { authorization: `Bearer ${KEY}`, 'x-portkey-provider': 'openai', 'x-portkey-custom-host': `http://127.0.0.1:${fake.port}/v1` } } : null

    console.log(`cordon router benchmark — node ${process.version}, ${ncpu} CPUs, proxies ${hasTaskset && ncpu > 1 ? `pinned to CPU ${ncpu - 1} for the c=200 runs` : 'not pinned'}, load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}`)
    // warm-up (JIT, connection pools)
    for (const s of [direct, viaFloor, viaRouter, viaPortkey]) if (s) await load(s.port, s.headers, 50, 3000)

    const rows: Array<[string, string, Result]> = []
    const cpu = new Map<string, number>()
    for (const [conc, n] of [
      [1, N1],
      [200, N200],
    ] as const) {
      for (const [name, s] of [
        ['direct', direct],
        ['floor', viaFloor],
        ['router', viaRouter],
        ['portkey', viaPortkey],
      ] as const) {
        if (!s) continue
        const proc = name === 'router' ? router.child : name === 'portkey' ? portkey?.child : name === 'floor' ? floor.child : null
        pin(proc?.pid, conc === 200)
        const c0 = cpuSeconds(proc?.pid)
        const f0 = cpuSeconds(fake.child.pid)
        const r = await load(s.port, s.headers, conc, n)
        const cpuUs = ((cpuSeconds(proc?.pid) - c0) / n) * 1e6
        const fakeUs = ((cpuSeconds(fake.child.pid) - f0) / n) * 1e6
        pin(proc?.pid, false)
        rows.push([name, `c=${conc}`, r])
        if (conc === 200) cpu.set(name, name === 'direct' ? fakeUs : cpuUs)
        console.log(`${name.padEnd(8)} c=${String(conc).padEnd(4)} n=${String(n).padEnd(6)} p50 ${r.p50.toFixed(3)} ms  p99 ${r.p99.toFixed(3)} ms  ${r.rps.toFixed(0)} req/s  errors ${r.errors}${proc ? `  ${name} CPU ${cpuUs.toFixed(0)} us/req` : `  provider CPU ${fakeUs.toFixed(0)} us/req`}`)
      }
    }
    const get = (name: string, c: string) => rows.find((r) => r[0] === name && r[1] === c)?.[2]
    console.log('\nadded latency (proxy - direct), same run:')
    const goals: string[] = []
    for (const c of ['c=1', 'c=200']) {
      const d = get('direct', c)!
      const r = get('router', c)!
      const p = get('portkey', c)
      const a50 = r.p50 - d.p50
      const a99 = r.p99 - d.p99
      let line = `  ${c.padEnd(6)} router  +${a50.toFixed(3)} ms p50  +${a99.toFixed(3)} ms p99`
      if (p) {
        const pa50 = p.p50 - d.p50
        const pa99 = p.p99 - d.p99
        line += `   | portkey +${pa50.toFixed(3)} ms p50  +${pa99.toFixed(3)} ms p99   | portkey/router added p50 ${(pa50 / Math.max(a50, 0.001)).toFixed(1)}x, p99 ${(pa99 / Math.max(a99, 0.001)).toFixed(1)}x`
      }
      console.log(line)
      if (c === 'c=1') goals.push(`added p50 ${a50.toFixed(3)} ms (goal < 0.5): ${a50 < 0.5 ? 'MET' : 'NOT MET'}`, `added p99 ${a99.toFixed(3)} ms (goal < 2): ${a99 < 2 ? 'MET' : 'NOT MET'}`)
    }
    const r200 = get('router', 'c=200')!
    const p200 = get('portkey', 'c=200')
    const d200 = get('direct', 'c=200')!
    console.log(`\nthroughput at c=200: direct ${d200.rps.toFixed(0)} req/s, router ${r200.rps.toFixed(0)} req/s (${(r200.rps / d200.rps).toFixed(2)}x direct)${p200 ? `, portkey ${p200.rps.toFixed(0)} req/s (router/portkey ${(r200.rps / p200.rps).toFixed(2)}x)` : ''}`)
    const rCpu = cpu.get('router')!
    const capacity = 1e6 / rCpu
    console.log(`CPU per request at c=200 (utime+stime from /proc): router ${rCpu.toFixed(0)} us => ${capacity.toFixed(0)} req/s per core; a bare Node proxy (floor) ${cpu.get('floor')!.toFixed(0)} us (router/floor ${(rCpu / cpu.get('floor')!).toFixed(2)}x)${cpu.has('portkey') ? `; portkey ${cpu.get('portkey')!.toFixed(0)} us (${(cpu.get('portkey')! / rCpu).toFixed(1)}x the router's)` : ''}; the fake provider ${cpu.get('direct')!.toFixed(0)} us`)
    goals.push(`router ${r200.rps.toFixed(0)} req/s measured at c=200, ${capacity.toFixed(0)} req/s per core from its CPU cost (goal >= 5000): ${Math.max(r200.rps, capacity) >= 5000 ? 'MET' : 'NOT MET'}${r200.rps < 5000 ? ` (measured throughput is bounded by the load generator and fake provider sharing ${ncpu} CPUs, load average ${loadavg()[0]!.toFixed(1)})` : ''}`)

    const sd = await load(direct.port, direct.headers, 1, Math.min(500, N1), true)
    const sr = await load(viaRouter.port, viaRouter.headers, 1, Math.min(500, N1), true)
    console.log(`\nstreaming time to first byte, c=1: direct p50 ${sd.ttfb50!.toFixed(3)} ms p99 ${sd.ttfb99!.toFixed(3)} ms; router p50 ${sr.ttfb50!.toFixed(3)} ms p99 ${sr.ttfb99!.toFixed(3)} ms (added p50 ${(sr.ttfb50! - sd.ttfb50!).toFixed(3)} ms)`)
    console.log(`\ngoals:\n  ${goals.join('\n  ')}`)
    console.log(`load average at the end: ${loadavg().map((x) => x.toFixed(2)).join(' ')}`)
  } finally {
    for (const c of children) c.kill('SIGKILL')
    rmSync(dir, { recursive: true, force: true })
  }
}
