/**
 * SOCKS5 and half-closes, through `cordon engine --socks` (a real child process) with either relay:
 * a client that sends its request and then shuts down its write side (socket.end()) still receives
 * the whole answer, whether its FIN comes after the SOCKS reply or together with the request (before
 * the tunnel starts); a client that half-closes during the greeting or the request is closed by the
 * engine, not left open until the handshake timer. The upstream is a raw TCP server on 127.0.0.2
 * that reads until EOF, then answers 1 MiB and closes.
 */
import t from 'tap'
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

    t.test('the audit counts the tunnels', async (t) => {
      await waitFor(() => readAudit(audit).filter((r) => r.type === 'end').length >= 2, 5_000, 'two end records')
      const ends = readAudit(audit).filter((r) => r.type === 'end')
      t.ok(ends.every((r) => r.bytes_in === 10 + ANSWER.length && !r.error), 'each tunnel ended cleanly with the whole answer counted')
    })
  })
}
