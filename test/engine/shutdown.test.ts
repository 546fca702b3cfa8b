/**
 * `cordon engine` (a real child process) stops promptly on SIGTERM / SIGINT with traffic in flight:
 * a CONNECT tunnel (splice relay, or Node's with --relay node), a SOCKS5 tunnel, a plain-HTTP
 * request whose upstream still streams, an idle keep-alive client, a request waiting for the
 * operator, a CONNECT inference.local:80 the gate serves itself, and a `logs --follow` on the
 * control socket. It exits 0 within 3 s, its clients are closed, and the audit log it leaves ends
 * with one `stop` record, holds an `end` record for each decision that carried traffic, and
 * nothing half-written. A second signal while stopping changes nothing; clients that reconnect
 * while it stops are ended too; a signal while the engine is still starting lets the start finish
 * and then stops it the same way (also as PID 1 of a PID namespace, where a signal without a
 * handler is dropped); a start that fails half-way closes what it opened.
 */
import t, { type Test } from 'tap'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { requestRaw } from '../../lib/engine/client.js'
import { startUpstream, spawnEngine, tmpdir, pendingFor, socksTunnel, waitFor, CLI, ROOT } from './helpers.js'

const up = await startUpstream('127.0.0.2') // the HTTP "internet", and the router behind inference.local
const P = up.port
t.teardown(() => up.close())

// a raw TCP echo server for the tunnels
const held = new Set<net.Socket>()
const echo = net.createServer((s) => {
  held.add(s)
  s.on('close', () => held.delete(s))
  s.on('error', () => undefined)
  s.on('data', (c) => s.write(c))
})
await new Promise<void>((r) => echo.listen(0, '127.0.0.2', () => r()))
const E = (echo.address() as net.AddressInfo).port
t.teardown(() => {
  for (const s of held) s.destroy()
  echo.close()
})

function setup() {
  const dir = tmpdir('cordon-shutdown-')
  const policy = path.join(dir, 'policy.yaml')
  fs.writeFileSync(policy, `network:\n  mode: proxy\n  unlisted: ask\n  allow:\n    - { cidr: 127.0.0.2/32, ports: [${P}, ${E}] }\n`)
  return { dir, policy, sock: path.join(dir, 'run', 'engine.sock'), audit: path.join(dir, 'audit.jsonl') }
}

function engineArgs(s: ReturnType<typeof setup>, extra: string[] = []): string[] {
  return [
    '--policy', s.policy, '--listen', '127.0.0.1:0', '--control', s.sock, '--audit', s.audit, '--no-watch',
    '--socks', '127.0.0.1:0', '--router', `127.0.0.2:${P}`, '--ask-timeout', '60',
    '--resolve', 'wait.example.com=127.0.0.2', ...extra,
  ]
}

/** Every line of the audit file parses, and the file ends with a newline: nothing half-written. */
function auditOf(t: Test, file: string): Array<Record<string, unknown>> {
  const text = fs.readFileSync(file, 'utf8')
  t.ok(text.endsWith('\n'), 'the audit log ends with a complete line')
  const lines = text.split('\n').filter(Boolean)
  const recs: Array<Record<string, unknown>> = []
  const bad: string[] = []
  for (const l of lines) {
    try {
      recs.push(JSON.parse(l))
    } catch {
      bad.push(l)
    }
  }
  t.same(bad, [], 'every audit line is a whole JSON record')
  return recs
}

/** Resolves when the socket is closed (or after ms, with false). */
function closed(s: net.Socket, ms: number): Promise<boolean> {
  if (s.destroyed) return Promise.resolve(true)
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms)
    s.once('close', () => {
      clearTimeout(timer)
      resolve(true)
    })
  })
}

/** Read from s until `pred` holds for what arrived. */
function readUntil(s: net.Socket, pred: (got: string) => boolean, what: string, first = ''): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = first
    if (pred(got)) return resolve(got)
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}; got ${JSON.stringify(got.slice(0, 300))}`)), 10_000)
    const onData = (c: Buffer) => {
      got += c.toString('latin1')
      if (pred(got)) {
        clearTimeout(timer)
        s.off('data', onData)
        resolve(got)
      }
    }
    s.on('data', onData)
    s.resume()
  })
}

function client(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1' }, () => resolve(s))
    s.once('error', reject)
  })
}

/** Wait for the child's exit, at most ms; SIGKILL it after that. */
function exitOf(child: ChildProcess, ms: number): Promise<{ code: number | null; signal: string | null; ms: number; killed: boolean }> {
  const t0 = Date.now()
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve({ code: child.exitCode, signal: child.signalCode, ms: 0, killed: false })
    let killed = false
    const timer = setTimeout(() => {
      killed = true
      child.kill('SIGKILL')
    }, ms)
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, ms: Date.now() - t0, killed })
    })
  })
}

const SLOW_HEAD = (host: string) => `GET http://${host}/slow HTTP/1.1\r\nHost: ${host}\r\n\r\n`

for (const [relay, signals] of [
  ['splice', ['SIGTERM']],
  ['node', ['SIGTERM']],
  ['splice', ['SIGINT', 'SIGTERM']],
  ['node', ['SIGTERM', 'SIGTERM', 'SIGINT']],
] as const) {
  t.test(`--relay ${relay}: ${signals.join(' then ')} with traffic in flight`, async (t) => {
    const s = setup()
    const e = await spawnEngine(engineArgs(s, ['--relay', relay]))
    t.teardown(() => void (e.child.exitCode === null && e.child.signalCode === null && e.child.kill('SIGKILL')))
    const G = e.ready.gate.port
    const S = (e.ready as unknown as { socks: { port: number } }).socks.port
    const sockets: Record<string, net.Socket> = {}

    // 1. a CONNECT tunnel, established (an echo went through it)
    const c1 = await client(G)
    sockets.connect = c1
    c1.write(`CONNECT 127.0.0.2:${E} HTTP/1.1\r\nHost: 127.0.0.2:${E}\r\n\r\n`)
    const head1 = await readUntil(c1, (g) => g.includes('\r\n\r\n'), 'the CONNECT answer')
    t.match(head1, /^HTTP\/1\.1 200/, 'CONNECT tunnel open')
    c1.write('ping-connect')
    await readUntil(c1, (g) => g.includes('ping-connect'), 'the echo through CONNECT', head1.slice(head1.indexOf('\r\n\r\n') + 4))

    // 2. a SOCKS5 tunnel, established
    const so = await socksTunnel(S, '127.0.0.2', E)
    sockets.socks = so.s
    t.equal(so.rep, 0, 'SOCKS5 tunnel open')
    so.s.write('ping-socks')
    await readUntil(so.s, (g) => g.includes('ping-socks'), 'the echo through SOCKS5', so.after.toString('latin1'))

    // 3. plain HTTP, the upstream still streaming
    const h = await client(G)
    sockets.http = h
    h.write(SLOW_HEAD(`127.0.0.2:${P}`))
    await readUntil(h, (g) => g.length > 3000, 'some of the streamed answer')

    // 4. an idle keep-alive client (one request answered, the connection kept)
    const k = await client(G)
    sockets.keepalive = k
    k.write(`GET http://127.0.0.2:${P}/keep HTTP/1.1\r\nHost: 127.0.0.2:${P}\r\n\r\n`)
    await readUntil(k, (g) => g.includes('hello GET /keep'), 'the keep-alive answer')

    // 5. a request waiting for the operator
    const w = await client(G)
    sockets.pending = w
    w.write(`GET http://wait.example.com:${P}/ HTTP/1.1\r\nHost: wait.example.com:${P}\r\n\r\n`)
    await pendingFor(s.sock, 'wait.example.com')

    // 6. CONNECT inference.local:80, served by the gate itself, a streaming request inside
    const inf = await client(G)
    sockets.inference = inf
    inf.write('CONNECT inference.local:80 HTTP/1.1\r\nHost: inference.local:80\r\n\r\n')
    const head6 = await readUntil(inf, (g) => g.includes('\r\n\r\n'), 'the CONNECT inference.local answer')
    t.match(head6, /^HTTP\/1\.1 200/, 'CONNECT inference.local:80 open')
    inf.write('GET /slow HTTP/1.1\r\nHost: inference.local\r\n\r\n')
    await readUntil(inf, (g) => g.length > 3000, 'some of the answer served in the tunnel', head6.slice(head6.indexOf('\r\n\r\n') + 4))

    // 7. a follower of the audit log on the control socket
    const follow = await requestRaw({ socket: s.sock }, 'GET', '/v1/audit?tail=1&follow=1')
    follow.on('error', () => undefined)
    follow.resume()
    const followEnded = new Promise<void>((r) => {
      follow.once('close', () => r())
      follow.once('end', () => r())
    })

    for (const sk of Object.values(sockets)) sk.on('error', () => undefined).resume()
    const exited = exitOf(e.child, 3_000)
    for (const [i, sig] of signals.entries()) {
      if (i > 0) await new Promise((r) => setTimeout(r, i === 1 ? 0 : 30)) // later ones while it stops
      e.child.kill(sig)
    }
    const x = await exited
    t.notOk(x.killed, `exited by itself within 3 s (took ${x.ms} ms); stderr: ${e.stderr().slice(-500)}`)
    t.equal(x.signal, null, 'not killed by a signal')
    t.equal(x.code, 0, 'exit code 0')
    for (const [name, sk] of Object.entries(sockets)) t.ok(await closed(sk, 2_000), `the ${name} client's connection is closed`)
    await Promise.race([followEnded, new Promise((r) => setTimeout(r, 2_000))])
    t.ok(follow.destroyed || follow.complete, 'the audit follower was let go')
    t.notOk(fs.existsSync(s.sock), 'the control socket is removed')

    const recs = auditOf(t, s.audit)
    t.equal(recs[0]?.type, 'start', 'the audit log starts with the start record')
    t.equal(recs.filter((r) => r.type === 'stop').length, 1, 'exactly one stop record')
    t.equal(recs.at(-1)?.type, 'stop', 'and it is the last record')
    const decision = (f: (r: Record<string, unknown>) => boolean, what: string) => {
      const d = recs.find((r) => r.type === 'decision' && r.decision === 'allow' && f(r))
      t.ok(d, `a decision for ${what}`)
      return d
    }
    const ends = (d: Record<string, unknown> | undefined) => recs.filter((r) => r.type === 'end' && d && r.decision_id === d.id)
    const expect: Array<[string, Record<string, unknown> | undefined, RegExp]> = [
      ['the CONNECT tunnel', decision((r) => r.via === 'connect' && r.port === E, 'the CONNECT tunnel'), /^engine stopping$/],
      ['the SOCKS5 tunnel', decision((r) => r.via === 'socks', 'the SOCKS5 tunnel'), /^engine stopping$/],
      ['the streaming HTTP request', decision((r) => r.via === 'http' && r.path === '/slow' && r.host === '127.0.0.2', 'the streaming HTTP request'), /engine stopping/],
      ['the CONNECT inference.local', decision((r) => r.via === 'connect' && r.host === 'inference.local', 'CONNECT inference.local'), /^engine stopping$/],
      ['the request inside it', decision((r) => r.via === 'http' && r.host === 'inference.local' && r.path === '/slow', 'the request inside CONNECT inference.local'), /engine stopping/],
    ]
    for (const [what, d, err] of expect) {
      const es = ends(d)
      t.equal(es.length, 1, `one end record for ${what}`)
      t.match(String(es[0]?.error ?? ''), err, `${what} ended with "${es[0]?.error ?? ''}"`)
    }
    t.ok(ends(decision((r) => r.via === 'http' && r.path === '/keep', 'the keep-alive request')).length === 1, 'the keep-alive request has its end record')
    const pend = recs.find((r) => r.type === 'decision' && r.decision === 'pending' && r.host === 'wait.example.com')
    t.ok(pend, 'the waiting request was audited as pending')
    const settled = recs.find((r) => r.type === 'decision' && r.decision === 'deny' && r.host === 'wait.example.com')
    t.equal(settled?.reason, 'engine stopping', 'the waiting request was refused before the stop record, and the record says why')
  })
}

for (const relay of ['splice', 'node'] as const) {
  t.test(`--relay ${relay}: clients that reconnect at once while it stops (CONNECTs, requests for the operator)`, async (t) => {
    // an agent whose connection was cut retries at once: connections accepted while the engine
    // stops must be ended too, and a tunnel one of them opens must not outlive the stop
    const s = setup()
    const e = await spawnEngine(engineArgs(s, ['--relay', relay]))
    t.teardown(() => void (e.child.exitCode === null && e.child.signalCode === null && e.child.kill('SIGKILL')))
    const G = e.ready.gate.port
    let storming = true
    let opened = 0
    let tunnels = 0
    const storm = (i: number) => {
      if (!storming) return
      const c = net.connect({ port: G, host: '127.0.0.1' })
      opened++
      c.on('connect', () =>
        c.write(i % 2 ? `CONNECT 127.0.0.2:${E} HTTP/1.1\r\nHost: 127.0.0.2:${E}\r\n\r\n` : `GET http://wait.example.com:${P}/ HTTP/1.1\r\nHost: wait.example.com:${P}\r\n\r\n`),
      )
      c.on('data', (d) => {
        if (/^HTTP\/1\.1 200/.test(d.toString('latin1'))) tunnels++
      })
      c.on('error', () => undefined)
      c.on('close', () => setImmediate(() => storm(i)))
    }
    for (let i = 0; i < 40; i++) storm(i)
    await waitFor(() => tunnels >= 10, 10_000, 'tunnels through the gate')
    await pendingFor(s.sock, 'wait.example.com')
    // and SOCKS5 tunnels: an engine that closes its listeners one after the other keeps the gate
    // listening while it waits for these to close
    const S = (e.ready as unknown as { socks: { port: number } }).socks.port
    for (let i = 0; i < 10; i++) (await socksTunnel(S, '127.0.0.2', E)).s.on('error', () => undefined).resume()
    const exited = exitOf(e.child, 3_000)
    e.child.kill('SIGTERM')
    const x = await exited
    storming = false
    t.notOk(x.killed, `exited by itself within 3 s (took ${x.ms} ms, ${opened} connections opened); stderr: ${e.stderr().slice(-500)}`)
    t.equal(x.code, 0, 'exit code 0')
    const recs = auditOf(t, s.audit)
    t.equal(recs.at(-1)?.type, 'stop', 'the stop record is the last')
    const allowed = recs.filter((r) => r.type === 'decision' && r.decision === 'allow' && r.via === 'connect').map((r) => r.id)
    const ended = new Set(recs.filter((r) => r.type === 'end').map((r) => r.decision_id))
    t.same(allowed.filter((id) => !ended.has(id)), [], `every allowed CONNECT (${allowed.length}) has its end record`)
  })
}

/** Spawn the engine CLI without waiting for its ready line. */
function spawnRaw(args: string[]): { child: ChildProcess; out: () => string; err: () => string } {
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'engine', ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout!.on('data', (c) => (out += c))
  child.stderr!.on('data', (c) => (err += c))
  return { child, out: () => out, err: () => err }
}

t.test('a SIGTERM while the engine is still starting: the start completes, then it stops cleanly', async (t) => {
  const s = setup()
  // the policy is a FIFO: the engine's start blocks reading it until the test writes it, so the
  // signal is sure to arrive mid-start
  const text = fs.readFileSync(s.policy)
  fs.rmSync(s.policy)
  execFileSync('mkfifo', [s.policy])
  const unix = path.join(s.dir, 'gate.sock')
  const r = spawnRaw(engineArgs(s, ['--listen-unix', unix]))
  t.teardown(() => void (r.child.exitCode === null && r.child.signalCode === null && r.child.kill('SIGKILL')))
  await waitFor(() => fs.existsSync(s.audit), 30_000, 'the engine to open its audit log (the Engine exists)')
  await new Promise((res) => setTimeout(res, 200)) // now blocked opening the FIFO
  r.child.kill('SIGTERM')
  await new Promise((res) => setTimeout(res, 100))
  t.equal(r.child.exitCode, null, 'still running (blocked in its start)')
  const exited = exitOf(r.child, 10_000)
  fs.writeFileSync(s.policy, text) // unblocks the start
  const x = await exited
  t.notOk(x.killed, `exited by itself (${x.ms} ms after the policy was written); stderr: ${r.err().slice(-500)}`)
  t.equal(x.signal, null, 'not killed by the signal mid-start')
  t.equal(x.code, 0, 'exit code 0')
  const recs = auditOf(t, s.audit)
  t.same(recs.map((x) => x.type), ['start', 'stop'], 'the audit log holds the start and the stop record')
  t.notOk(fs.existsSync(s.sock), 'no control socket left behind')
  t.notOk(fs.existsSync(unix), 'no gate unix socket left behind')
})

/** The pid of a child of `ppid` (from /proc), or 0. */
function childOf(ppid: number): number {
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8')
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === ppid) return Number(d)
    } catch {
      /* gone */
    }
  }
  return 0
}

t.test('as PID 1 of its PID namespace (a container whose entrypoint is node, deploy/Containerfile): a SIGTERM mid-start is not dropped', { skip: process.getuid?.() !== 0 && 'needs root (unshare --pid)' }, async (t) => {
  // the kernel delivers to a namespace's init only the signals it has a handler for: a SIGTERM
  // that arrives before the engine installs its handler is dropped, and the engine then runs
  // until it is killed with SIGKILL
  const s = setup()
  const text = fs.readFileSync(s.policy)
  fs.rmSync(s.policy)
  execFileSync('mkfifo', [s.policy])
  const child = spawn('unshare', ['--pid', '--fork', '--kill-child', process.execPath, '--import', 'tsx', CLI, 'engine', ...engineArgs(s)], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout!.on('data', (c) => (out += c))
  child.stderr!.on('data', (c) => (err += c))
  t.teardown(() => void (child.exitCode === null && child.signalCode === null && child.kill('SIGKILL')))
  await waitFor(() => fs.existsSync(s.audit), 30_000, 'the engine to open its audit log (the Engine exists)')
  const pid = childOf(child.pid!)
  t.match(fs.readFileSync(`/proc/${pid}/status`, 'utf8'), /^NSpid:\s+\d+\s+1$/m, `the engine (pid ${pid}) is PID 1 of its namespace`)
  await new Promise((res) => setTimeout(res, 200)) // blocked opening the FIFO
  process.kill(pid, 'SIGTERM')
  await new Promise((res) => setTimeout(res, 100))
  const exited = exitOf(child, 10_000)
  fs.writeFileSync(s.policy, text) // unblocks the start
  const x = await exited
  t.notOk(x.killed, `exited by itself (${x.ms} ms after the policy was written), not at the 10 s SIGKILL; stderr: ${err.slice(-500)}`)
  t.equal(x.code, 0, 'exit code 0')
  t.equal(out, '', 'no ready line: it was asked to stop before it was ready')
  t.same(auditOf(t, s.audit).map((x) => x.type), ['start', 'stop'], 'the audit log holds the start and the stop record')
})

t.test('a start that fails half-way (the SOCKS port is taken) closes what it opened', async (t) => {
  const s = setup()
  const taken = net.createServer()
  await new Promise<void>((r) => taken.listen(0, '127.0.0.1', () => r()))
  t.teardown(() => taken.close())
  const port = (taken.address() as net.AddressInfo).port
  const args = engineArgs(s).map((a, i, all) => (all[i - 1] === '--socks' ? `127.0.0.1:${port}` : a))
  const r = spawnRaw(args)
  t.teardown(() => void (r.child.exitCode === null && r.child.signalCode === null && r.child.kill('SIGKILL')))
  const x = await exitOf(r.child, 30_000)
  t.equal(x.code, 1, 'exit code 1')
  t.match(r.err(), /cannot start the engine: .*EADDRINUSE/, 'says why')
  t.equal(r.out(), '', 'no ready line')
  const recs = auditOf(t, s.audit)
  t.same(recs.map((x) => x.type), ['start', 'stop'], 'the audit log is closed with a stop record')
})
