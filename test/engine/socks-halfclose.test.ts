/**
 * SOCKS5 and half-closes, through `cordon engine --socks` (a real child process) with either relay:
 * a client that sends its request and then shuts down its write side (socket.end()) still receives
 * the whole answer, whether its FIN comes after the SOCKS reply or together with the request (before
 * the tunnel starts); a client that half-closes during the greeting or the request is closed by the
 * engine, not left open until the handshake timer. The upstream is a raw TCP server on 127.0.0.2
 * that reads until EOF, then answers 1 MiB and closes.
 */
import t, { type Test } from 'tap'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import crypto from 'node:crypto'
import { spawnEngine, tmpdir, socksTunnel, readAudit, waitFor } from './helpers.js'

const ANSWER = crypto.randomBytes(1 << 20)
const sha = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex')

// reads until the client's EOF, then answers with how much it got and 1 MiB, and closes
const got: number[] = []
const upstream = net.createServer({ allowHalfOpen: true }, (s) => {
  let n = 0
  s.on('data', (c: Buffer) => (n += c.length))
  s.on('end', () => {
    got.push(n)
    s.write(`${String(n).padStart(10, '0')}`)
    s.end(ANSWER)
  })
  s.on('error', () => undefined)
})
await new Promise<void>((r) => upstream.listen(0, '127.0.0.2', () => r()))
const UP = (upstream.address() as net.AddressInfo).port
t.teardown(() => upstream.close())

const dir = tmpdir('cordon-socks-halfclose-')
const policy = path.join(dir, 'policy.yaml')
fs.writeFileSync(policy, `network:\n  mode: proxy\n  unlisted: deny\n  allow:\n    - { cidr: 127.0.0.2/32, ports: [${UP}] }\n`)

/** Everything the socket receives until the engine's end (with what was already read). */
function readAll(s: net.Socket, first: Buffer = Buffer.alloc(0)): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [first]
    s.on('data', (c: Buffer) => parts.push(c))
    s.on('end', () => resolve(Buffer.concat(parts)))
    s.on('error', reject)
    s.resume()
  })
}

/** The SOCKS5 greeting, request (CONNECT 127.0.0.2:UP by IPv4 address) and payload in one write, then FIN. */
function pipelined(port: number, payload: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true })
    s.on('connect', () => {
      s.end(Buffer.concat([Buffer.from([5, 1, 0]), Buffer.from([5, 1, 0, 1, 127, 0, 0, 2, UP >> 8, UP & 255]), payload]))
    })
    readAll(s).then(resolve, reject)
  })
}

for (const relay of ['splice', 'node'] as const) {
  t.test(`--relay ${relay}`, async (t) => {
    const audit = path.join(dir, `audit-${relay}.jsonl`)
    const e = await spawnEngine(['--policy', policy, '--listen', '127.0.0.1:0', '--socks', '127.0.0.1:0', '--control', 'none', '--audit', audit, '--no-watch', '--relay', relay])
    t.teardown(() => e.stop())
    const S = (e.ready as unknown as { socks: { port: number } }).socks.port

    t.test('the client ends its write side after the request: the whole answer still arrives', async (t) => {
      const { s, rep, after } = await socksTunnel(S, '127.0.0.2', UP, { allowHalfOpen: true })
      t.equal(rep, 0, 'SOCKS5 CONNECT succeeded')
      const answer = readAll(s, after)
      s.end(Buffer.alloc(5000, 1)) // the request, then FIN
      const a = await answer
      t.equal(a.subarray(0, 10).toString(), '0000005000', 'the upstream saw the whole request and then EOF')
      t.equal(a.length, 10 + ANSWER.length, 'every byte of the answer arrived')
      t.equal(sha(a.subarray(10)), sha(ANSWER), 'in order')
    })

    t.test('greeting, request, payload and FIN all at once (the FIN before the tunnel starts): the whole answer arrives', async (t) => {
      const a = await pipelined(S, Buffer.from('early payload'))
      t.equal(a.subarray(0, 2).toString('hex'), '0500', 'the method choice')
      t.equal(a[3], 0, 'SOCKS5 CONNECT succeeded')
      const body = a.subarray(2 + 10)
      t.equal(body.subarray(0, 10).toString(), String('early payload'.length).padStart(10, '0'), 'the upstream got the payload, then EOF')
      t.equal(body.length, 10 + ANSWER.length, 'every byte of the answer arrived')
      t.equal(sha(body.subarray(10)), sha(ANSWER), 'in order')
    })

    for (const [what, bytes] of [
      ['half a greeting', Buffer.from([5, 2, 0])],
      ['a greeting and half a request', Buffer.from([5, 1, 0, 5, 1, 0, 3, 20, 0x61, 0x62])],
    ] as const) {
      t.test(`a client that sends ${what} and then FIN is closed by the engine`, async (t) => {
        const s = net.connect({ port: S, host: '127.0.0.1', allowHalfOpen: true })
        s.on('error', () => undefined)
        const t0 = Date.now()
        const end = new Promise<number>((resolve) => {
          s.on('end', () => resolve(Date.now() - t0))
          setTimeout(() => resolve(-1), 5_000)
        })
        const closed = new Promise<void>((resolve) => s.on('close', () => resolve()))
        s.on('connect', () => s.end(bytes))
        s.resume()
        const ms = await end
        t.ok(ms >= 0 && ms < 2_000, `the engine ended its side (after ${ms} ms; the handshake timer is 15 s)`)
        await closed
        t.pass('and the connection is closed')
      })
    }

    // a refused client that never closes its side must not hold a descriptor of the engine: after the
    // refusal the engine reads and drops what the client still sends, and closes the connection whole
    // after a grace of 2 s, so the client's writes are then reset (refusals do not involve the relay:
    // checked once)
    const refusedStaysOpen = async (t: Test, port: number, hello: Buffer, what: string) => {
      const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true })
      let answer = Buffer.alloc(0)
      let ended = 0
      const t0 = Date.now()
      const reset = new Promise<string>((resolve) => {
        s.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message))
        setTimeout(() => resolve('no error after 8 s: the engine still holds the connection'), 8_000)
      })
      s.on('data', (c: Buffer) => (answer = Buffer.concat([answer, c])))
      s.on('end', () => {
        ended = Date.now() - t0
        // the engine has answered and ended its side; this client keeps its own open and writes on
        const tick = setInterval(() => (s.destroyed ? clearInterval(tick) : s.write('still here')), 200)
      })
      s.on('connect', () => s.write(hello))
      const code = await reset
      const ms = Date.now() - t0
      t.ok(ended > 0, `${what}: the engine answered and ended its side (after ${ended} ms)`)
      t.match(code, /^(ECONNRESET|EPIPE)$/, `${what}: then it closed the connection whole (${code} after ${ms} ms)`)
      t.ok(ms < 6_000, 'within the grace, not never')
      s.destroy()
      return answer
    }

    if (relay === 'splice') {
      t.test('a refused SOCKS5 client that keeps its side open is let go', async (t) => {
        // CONNECT to 127.0.0.3:UP, which no rule allows
        const a = await refusedStaysOpen(t, S, Buffer.from([5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 3, UP >> 8, UP & 255]), 'SOCKS5 deny')
        t.equal(a.subarray(2, 4).toString('hex'), '0502', 'the SOCKS5 reply says "not allowed by ruleset"')
      })

      t.test('a refused CONNECT client that keeps its side open, and sent bytes behind its request, reads the whole 403 and is let go', async (t) => {
        // a TLS client often sends its first bytes right behind the CONNECT: unread, they would make a
        // close reset the connection before the client read the answer
        const a = await refusedStaysOpen(t, e.ready.gate.port, Buffer.from(`CONNECT 127.0.0.3:${UP} HTTP/1.1\r\nHost: 127.0.0.3:${UP}\r\n\r\n\x16\x03\x01 early bytes`), 'CONNECT deny')
        const text = a.toString('latin1')
        t.match(text, /^HTTP\/1\.1 403 /, 'the 403')
        const len = Number(/content-length: (\d+)/i.exec(text)?.[1])
        t.equal(Buffer.byteLength(text.slice(text.indexOf('\r\n\r\n') + 4), 'latin1'), len, 'its whole body, which says why')
      })
    }

    t.test('the audit counts the tunnels', async (t) => {
      await waitFor(() => readAudit(audit).filter((r) => r.type === 'end').length >= 2, 5_000, 'two end records')
      const ends = readAudit(audit).filter((r) => r.type === 'end')
      t.ok(ends.every((r) => r.bytes_in === 10 + ANSWER.length && !r.error), 'each tunnel ended cleanly with the whole answer counted')
    })
  })
}
