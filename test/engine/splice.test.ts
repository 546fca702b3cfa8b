/**
 * Tunnels through the splice relay (native/relay.cc, the default) and through Node's relay
 * (`relay: 'node'`), the same checks for both: every byte arrives in order both ways at once,
 * bytes sent before the CONNECT answer are kept, half-closes pass through, the audit counts what
 * really moved, a reset upstream and an idle tunnel end with the reason recorded, stop() ends held
 * tunnels, and no descriptor is left behind. Real sockets on loopback; the upstream is a raw TCP
 * server on 127.0.0.2 that the test scripts per connection.
 */
import t from 'tap'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import crypto from 'node:crypto'
import { spawnSync } from 'node:child_process'
import { Engine, clientSendBuffer, LOCAL_CLIENT_SEND_BUFFER } from '../../lib/engine/engine.js'
import { tmpdir, waitFor, readAudit, ROOT } from './helpers.js'

type Script = (s: net.Socket) => void
let script: Script = (s) => s.destroy()
const upstream = net.createServer({ allowHalfOpen: true }, (s) => script(s))
await new Promise<void>((r) => upstream.listen(0, '127.0.0.2', () => r()))
const UP = (upstream.address() as net.AddressInfo).port
t.teardown(() => upstream.close())

const dir = tmpdir('cordon-splice-')
const policyFile = path.join(dir, 'policy.yaml')
fs.writeFileSync(policyFile, `network:\n  mode: proxy\n  unlisted: deny\n  allow:\n    - { cidr: 127.0.0.2/32, ports: [${UP}] }\n`)

async function startEngine(relay: 'splice' | 'node', tunnelIdleMs?: number) {
  const audit = path.join(dir, `audit-${relay}-${Math.random().toString(36).slice(2)}.jsonl`)
  const engine = new Engine({ policyFile, listen: { host: '127.0.0.1', port: 0 }, audit, relay, tunnelIdleMs, watch: false })
  const gate = await engine.start()
  return { engine, gate, audit }
}

/** CONNECT through the gate; resolves with the socket once the 200 line has been read (and any bytes after it). */
function tunnel(port: number, opts: { early?: Buffer } = {}): Promise<{ s: net.Socket; after: Buffer }> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true })
    let buf = Buffer.alloc(0)
    const onData = (c: Buffer) => {
      buf = Buffer.concat([buf, c])
      const i = buf.indexOf('\r\n\r\n')
      if (i < 0) return
      s.off('data', onData)
      s.pause()
      const head = buf.subarray(0, i).toString('latin1')
      if (!head.startsWith('HTTP/1.1 200')) return reject(new Error(head))
      resolve({ s, after: buf.subarray(i + 4) })
    }
    s.on('data', onData)
    s.on('error', reject)
    s.on('connect', () => s.write(Buffer.concat([Buffer.from(`CONNECT 127.0.0.2:${UP} HTTP/1.1\r\nHost: 127.0.0.2:${UP}\r\n\r\n`), opts.early ?? Buffer.alloc(0)])))
  })
}

/** Everything a socket sends until its end, with what was already read. */
function readAll(s: net.Socket, first = Buffer.alloc(0)): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts = [first]
    s.on('data', (c: Buffer) => parts.push(c))
    s.on('end', () => resolve(Buffer.concat(parts)))
    s.on('error', reject)
    s.resume()
  })
}

const sha = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex')
const endRecords = (audit: string) => readAudit(audit).filter((r) => r.type === 'end')
const openFds = () => fs.readdirSync('/proc/self/fd').length

for (const relay of ['splice', 'node'] as const) {
  t.test(`${relay} relay`, async (t) => {
    const { engine, gate, audit } = await startEngine(relay)
    t.teardown(() => engine.stop())

    t.test('8 MiB each way at once arrive whole and in order; the audit counts them', async (t) => {
      const toUp = crypto.randomBytes(8 << 20)
      const toClient = crypto.randomBytes(8 << 20)
      let upGot: Promise<Buffer> = Promise.resolve(Buffer.alloc(0))
      script = (s) => {
        upGot = readAll(s)
        s.end(toClient)
      }
      const { s, after } = await tunnel(gate.port)
      const clientGot = readAll(s, after)
      s.end(toUp)
      const [c, u] = await Promise.all([clientGot, upGot]) // the upstream was connected before the 200
      t.equal(sha(c), sha(toClient), 'the client received every upstream byte in order')
      t.equal(sha(u), sha(toUp), 'the upstream received every client byte in order')
      await waitFor(() => endRecords(audit).length >= 1, 5_000, 'end record')
      const end = endRecords(audit).at(-1)!
      t.equal(end.bytes_in, toClient.length, 'bytes_in is what the upstream sent')
      t.equal(end.bytes_out, toUp.length, 'bytes_out is what the client sent')
      t.notOk(end.error, 'a clean end has no error')
    })

    t.test('the upstream finishes first (its FIN before the client is done uploading): the upload still arrives whole', async (t) => {
      const toUp = crypto.randomBytes(4 << 20)
      let upGot: Promise<Buffer> = Promise.resolve(Buffer.alloc(0))
      script = (s) => {
        upGot = readAll(s)
        s.end('short answer') // and half-closes at once
      }
      const { s, after } = await tunnel(gate.port)
      const answer = await readAll(s, after) // the client sees the upstream's end first
      t.equal(answer.toString(), 'short answer')
      s.end(toUp) // then uploads
      t.equal(sha(await upGot), sha(toUp), 'every byte of the late upload reached the upstream')
    })

    t.test('the same with a slow upstream: the client closes while the tail of its upload is still queued for the upstream', async (t) => {
      // the upstream answers and half-closes at once, then reads 256 KiB every 5 ms: when the client
      // has sent everything and closed, the gate still holds the tail of the upload in its queue
      const toUp = crypto.randomBytes((24 << 20) + 1000) // more than the kernel's socket buffers on both legs hold (~10 MiB here)
      let upGot: Promise<Buffer> = Promise.resolve(Buffer.alloc(0))
      script = (s) => {
        s.end('short answer')
        upGot = new Promise((resolve) => {
          const parts: Buffer[] = []
          s.pause()
          const tick = setInterval(() => {
            let c: Buffer | null
            let n = 0
            while (n < 262144 && (c = s.read() as Buffer | null) !== null) {
              parts.push(c)
              n += c.length
            }
          }, 5)
          s.on('end', () => {
            clearInterval(tick)
            resolve(Buffer.concat(parts))
          })
          s.on('close', () => {
            clearInterval(tick)
            resolve(Buffer.concat(parts))
          })
        })
      }
      const { s, after } = await tunnel(gate.port)
      const answer = await readAll(s, after)
      t.equal(answer.toString(), 'short answer')
      await new Promise<void>((r) => s.end(toUp, () => r()))
      s.destroy() // the client is done: it has the answer, and its upload is out of its hands
      const got = await upGot
      t.equal(got.length, toUp.length, 'the upstream read the whole upload')
      t.equal(sha(got), sha(toUp), 'byte for byte')
    })

    t.test('bytes sent right behind the CONNECT request (before its answer) reach the upstream first', async (t) => {
      let got: Promise<Buffer> = Promise.resolve(Buffer.alloc(0))
      script = (s) => {
        got = readAll(s)
        s.on('end', () => s.end('bye'))
      }
      const { s, after } = await tunnel(gate.port, { early: Buffer.from('EARLY|') })
      const reply = readAll(s, after)
      s.end('LATE')
      t.equal((await reply).toString(), 'bye')
      t.equal((await got).toString(), 'EARLY|LATE', 'early bytes first, then the rest, nothing lost')
    })

    t.test('a half-close passes through: the client ends its side and still reads the answer', async (t) => {
      script = (s) => {
        const parts: Buffer[] = []
        s.on('data', (c: Buffer) => parts.push(c))
        s.on('end', () => setTimeout(() => s.end(`got ${Buffer.concat(parts).length} bytes`), 50))
      }
      const { s, after } = await tunnel(gate.port)
      const reply = readAll(s, after)
      s.end(Buffer.alloc(100_000, 7))
      t.equal((await reply).toString(), 'got 100000 bytes')
    })

    t.test('an upstream that resets ends the tunnel; the audit says why', async (t) => {
      script = (s) => {
        s.write('partial')
        setTimeout(() => s.resetAndDestroy(), 50)
      }
      const before = endRecords(audit).length
      const { s, after } = await tunnel(gate.port)
      let got = after.toString()
      // the client keeps its own side open (allowHalfOpen): the end of the gate's side is what counts
      const closed = new Promise<void>((r) => {
        s.on('end', () => r())
        s.on('close', () => r())
      })
      s.on('error', () => undefined)
      s.on('data', (c: Buffer) => (got += c.toString()))
      s.resume()
      await closed
      t.equal(got, 'partial', 'the client got what the upstream sent before its reset, then the connection closed')
      // end records of earlier tunnels may still be on their way: look at the ones after `before`
      await waitFor(() => endRecords(audit).slice(before).some((r) => r.error), 5_000, 'an end record with an error')
      const errors = endRecords(audit).slice(before).map((r) => r.error).filter(Boolean)
      t.match(String(errors[0]), /ECONNRESET|upstream error/, `error recorded: ${errors[0]}`)
    })

    t.test('many tunnels open and close without leaking descriptors', async (t) => {
      script = (s) => {
        s.on('data', (c) => s.write(c))
        s.on('end', () => s.end())
      }
      const base = openFds()
      let echoed = 0
      for (let round = 0; round < 5; round++) {
        await Promise.all(
          Array.from({ length: 40 }, async (_, i) => {
            const { s, after } = await tunnel(gate.port)
            const echo = readAll(s, after)
            s.end(`ping ${i}`)
            if ((await echo).toString() === `ping ${i}`) echoed++
          }),
        )
      }
      t.equal(echoed, 200, 'all 200 tunnels (5 rounds of 40 at once) echoed their own bytes')
      await waitFor(() => openFds() <= base + 2, 5_000, `descriptors back near ${base} (now ${openFds()})`)
      t.ok(openFds() <= base + 2, `descriptors after 200 tunnels: ${openFds()} (before: ${base})`)
    })
  })
}

t.test('splice relay: an idle tunnel is closed after tunnelIdleMs and the audit says so', async (t) => {
  const { engine, gate, audit } = await startEngine('splice', 1_200)
  t.teardown(() => engine.stop())
  script = () => undefined // accepts and says nothing
  const { s } = await tunnel(gate.port)
  const t0 = Date.now()
  await new Promise<void>((r) => s.on('end', () => r()).on('close', () => r()).resume())
  const ms = Date.now() - t0
  t.ok(ms >= 1_000 && ms < 5_000, `closed after ${ms} ms (idle limit 1.2 s, checked every second)`)
  await waitFor(() => endRecords(audit).length >= 1, 5_000, 'end record')
  t.equal(endRecords(audit).at(-1)!.error, 'idle timeout')
})

t.test('splice relay: the gauge counts held tunnels; stop() ends them and records their end', async (t) => {
  const { engine, gate, audit } = await startEngine('splice')
  script = (s) => s.write('hello')
  const { s, after } = await tunnel(gate.port)
  const got = readAll(s, after)
  await waitFor(async () => /cordon_engine_tunnels_relayed 1/.test(await engine.metrics.metrics()), 5_000, 'gauge at 1')
  t.pass('cordon_engine_tunnels_relayed is 1 while the tunnel is open')
  await engine.stop()
  t.equal((await got).toString(), 'hello', 'the client saw the bytes, then the end')
  const end = endRecords(audit).at(-1)
  t.equal(end?.error, 'engine stopping', 'the end record was written before the audit closed')
})

t.test('splice relay: the socket toward a client on this host has a fixed send buffer, not one autotuned to megabytes', async (t) => {
  const { engine, gate } = await startEngine('splice')
  t.teardown(() => engine.stop())
  script = (s) => s.write(crypto.randomBytes(4 << 20)) // then keeps the connection open
  const { s, after } = await tunnel(gate.port)
  t.teardown(() => s.destroy())
  let got = after.length
  s.on('data', (c: Buffer) => (got += c.length)).resume()
  await waitFor(() => got >= 4 << 20, 10_000, 'the 4 MiB')
  // the engine's end of the client connection, as the kernel reports it: skmem tb is sk_sndbuf
  const r = spawnSync('ss', ['-tmnH', 'state', 'established', `( sport = :${gate.port} and dport = :${s.localPort} )`], { encoding: 'utf8' })
  t.equal(r.status, 0, `ss ran: ${r.stderr}`)
  const tb = /tb(\d+)/.exec(r.stdout)
  t.ok(tb, `ss shows the engine's socket toward the client: ${r.stdout.trim()}`)
  t.equal(Number(tb?.[1]), 2 * LOCAL_CLIENT_SEND_BUFFER, 'SO_SNDBUF is the fixed size (the kernel doubles what was asked)')
})

t.test('which clients get the fixed send buffer: loopback and registered sandboxes; anything else keeps autotuning', async (t) => {
  t.equal(clientSendBuffer('127.0.0.1', false), LOCAL_CLIENT_SEND_BUFFER, 'IPv4 loopback')
  t.equal(clientSendBuffer('::ffff:127.0.0.5', false), LOCAL_CLIENT_SEND_BUFFER, 'IPv4 loopback, v4-mapped')
  t.equal(clientSendBuffer('::1', false), LOCAL_CLIENT_SEND_BUFFER, 'IPv6 loopback')
  t.equal(clientSendBuffer('10.200.3.2', true), LOCAL_CLIENT_SEND_BUFFER, 'a registered sandbox namespace (veth on this host)')
  t.equal(clientSendBuffer('10.200.3.2', false), 0, 'an unregistered private address may be another machine')
  t.equal(clientSendBuffer('203.0.113.9', false), 0, 'a public address')
  t.equal(clientSendBuffer('unix', false), 0, 'a unix-socket client (no TCP buffer to size)')
})

t.test('a process that used the splice relay exits by itself once its tunnels are gone', async (t) => {
  // the relay thread holds the event loop only while it holds tunnels, like an open socket
  const child = path.join(dir, 'exit-child.mts')
  fs.writeFileSync(
    child,
    `import net from 'node:net'
import fs from 'node:fs'
import { Engine } from ${JSON.stringify(path.join(ROOT, 'lib/engine/engine.ts'))}
const up = net.createServer((s) => s.end('x'))
await new Promise((r) => up.listen(0, '127.0.0.2', r))
const port = up.address().port
fs.writeFileSync(${JSON.stringify(path.join(dir, 'exit-policy.yaml'))}, \`network:\\n  mode: proxy\\n  allow:\\n    - { cidr: 127.0.0.2/32, ports: [\${port}] }\\n\`)
const e = new Engine({ policyFile: ${JSON.stringify(path.join(dir, 'exit-policy.yaml'))}, listen: { host: '127.0.0.1', port: 0 }, audit: null, watch: false })
const gate = await e.start()
const s = net.connect(gate.port, '127.0.0.1', () => s.write(\`CONNECT 127.0.0.2:\${port} HTTP/1.1\\r\\n\\r\\n\`))
let got = ''
s.on('data', (c) => (got += c))
s.on('close', async () => {
  console.log(JSON.stringify(got.split('\\r\\n\\r\\n')[1]))
  await e.stop()
  up.close()
})
`,
  )
  const r = spawnSync(process.execPath, ['--import', 'tsx', child], { cwd: ROOT, encoding: 'utf8', timeout: 20_000 })
  t.equal(r.signal, null, `exited on its own (not killed at the 20 s timeout); stderr: ${r.stderr.slice(0, 500)}`)
  t.equal(r.status, 0)
  t.equal(r.stdout.trim(), '"x"', 'the tunnel carried the upstream byte')
})
