/**
 * `cordon engine` as a separate process: the audit log is complete after SIGKILL mid-stream;
 * 10,000 connections opened and dropped leave memory bounded.
 */
import t from 'tap'
import fs from 'node:fs'
import net from 'node:net'
import { startUpstream, viaProxy, spawnEngine, runCli, readAudit, askSetup, askEngineArgs as engineArgs } from './helpers.js'

const up = await startUpstream('127.0.0.2')
const P = up.port
t.teardown(() => up.close())

const setup = (unlisted = 'ask') => askSetup(P, unlisted)

t.test('the audit log holds every decision after SIGKILL mid-stream', async (t) => {
  const s = setup('deny')
  const e = await spawnEngine(engineArgs(s))
  const G = e.ready.gate.port
  for (let i = 0; i < 20; i++) await viaProxy(G, `http://${i % 2 ? 'api' : 'nope'}.example.com:${P}/n${i}`)
  // a stream in flight through CONNECT
  const sock = net.connect(G, '127.0.0.1')
  let got = 0
  await new Promise<void>((resolve) => {
    sock.on('connect', () => sock.write(`CONNECT api.example.com:${P} HTTP/1.1\r\nHost: api.example.com:${P}\r\n\r\n`))
    let est = false
    sock.on('data', (c) => {
      if (!est) {
        est = true
        sock.write(`GET /slow HTTP/1.1\r\nHost: api.example.com\r\n\r\n`)
        return
      }
      got += c.length
      if (got > 5000) resolve()
    })
  })
  e.child.kill('SIGKILL')
  await new Promise((r) => e.child.once('exit', r))
  sock.destroy()
  const recs = readAudit(s.audit).filter((r) => r.type === 'decision')
  t.equal(recs.length, 21, 'all 21 decisions are in the log')
  t.equal(recs.filter((r) => r.decision === 'deny').length, 10)
  t.ok(recs.some((r) => r.via === 'connect' && r.decision === 'allow'), 'the in-flight tunnel was logged before it opened')
})

t.test('10,000 connections opened and dropped: memory stays bounded, the gate keeps serving', async (t) => {
  const s = setup('deny')
  const e = await spawnEngine(engineArgs(s))
  t.teardown(() => e.stop())
  const G = e.ready.gate.port
  const rss = () => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${e.ready.pid}/status`, 'utf8'))![1]) / 1024
  // warm up
  for (let i = 0; i < 50; i++) await viaProxy(G, `http://api.example.com:${P}/w`)
  const before = rss()
  let opened = 0
  const batch = 250
  for (let b = 0; b < 10_000 / batch; b++) {
    await Promise.all(
      Array.from({ length: batch }, (_, i) =>
        new Promise<void>((resolve) => {
          const c = net.connect(G, '127.0.0.1', () => {
            opened++
            // a third send half a request, a third a garbage line, a third nothing
            if (i % 3 === 0) c.write('GET http://api.example.com/ HTTP/1.1\r\nHost: a')
            else if (i % 3 === 1) c.write('\x16\x03\x01garbage\r\n')
            setImmediate(() => c.destroy())
          })
          c.on('close', () => resolve())
          c.on('error', () => resolve())
        }),
      ),
    )
  }
  t.equal(opened, 10_000)
  await new Promise((r) => setTimeout(r, 1500))
  const after = rss()
  t.ok(after - before < 60, `RSS ${before.toFixed(1)} MiB -> ${after.toFixed(1)} MiB`)
  t.equal((await viaProxy(G, `http://api.example.com:${P}/alive`)).status, 200)
  const m = await runCli(['policy', 'show', '--control', s.sock])
  t.equal(m.code, 0, m.stderr)
  t.match(m.stdout, /unlisted: deny/)
})
