/**
 * A tunnel's decision is on stable storage before anything moves: the engine connects to the
 * allowed destination while the decision's fdatasync runs (so the fdatasync costs the tunnel
 * nothing behind a real handshake), but the client gets its 200 (or SOCKS5 success) and the
 * destination gets the client's first byte only once the fdatasync has returned. A denial's answer
 * waits for it too. The fdatasync is held back by the test (the engine's audit commit wrapped in a
 * gate it opens), so the order is observed, not timed. Real sockets on loopback.
 */
import t, { type Test } from 'tap'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { Engine } from '../../lib/engine/engine.js'
import { tmpdir, waitFor, readAudit, socksTunnel } from './helpers.js'

const accepted: net.Socket[] = []
const received: Buffer[] = []
const upstream = net.createServer((s) => {
  accepted.push(s)
  s.on('data', (c: Buffer) => received.push(c))
})
await new Promise<void>((r) => upstream.listen(0, '127.0.0.2', () => r()))
const UP = (upstream.address() as net.AddressInfo).port
t.teardown(() => upstream.close())
// an allowed port where nothing listens: a connect there is refused
const closed = net.createServer()
await new Promise<void>((r) => closed.listen(0, '127.0.0.2', () => r()))
const DEAD = (closed.address() as net.AddressInfo).port
await new Promise<void>((r) => closed.close(() => r()))

const dir = tmpdir('cordon-durable-')
const policyFile = path.join(dir, 'policy.yaml')
fs.writeFileSync(policyFile, `network:\n  mode: proxy\n  unlisted: deny\n  allow:\n    - { cidr: 127.0.0.2/32, ports: [${UP}, ${DEAD}] }\n  deny:\n    - { cidr: 127.0.0.3/32 }\n`)

/** An engine whose decision commits resolve only when the test says so. */
async function gatedEngine(relay: 'splice' | 'node') {
  const audit = path.join(dir, `audit-${relay}-${Math.random().toString(36).slice(2)}.jsonl`)
  const engine = new Engine({ policyFile, listen: { host: '127.0.0.1', port: 0 }, socks: { host: '127.0.0.1', port: 0 }, audit, relay, watch: false })
  const gate = await engine.start()
  const held: Array<() => void> = []
  const commit = engine.audit.commit.bind(engine.audit)
  engine.audit.commit = (rec) => {
    const synced = commit(rec)
    if (rec.type !== 'decision') return synced
    return new Promise<void>((resolve) => held.push(() => void synced.then(resolve)))
  }
  const release = () => held.splice(0).forEach((f) => f())
  return { engine, gate, audit, held, release }
}

function connect(port: number, request: string): { s: net.Socket; got: () => string } {
  const s = net.connect({ port, host: '127.0.0.1' })
  let got = ''
  s.on('data', (c: Buffer) => (got += c.toString('latin1')))
  s.on('error', () => undefined)
  s.on('connect', () => s.write(request))
  return { s, got: () => got }
}

const settle = () => new Promise((r) => setTimeout(r, 150))

for (const relay of ['splice', 'node'] as const) {
  t.test(`${relay} relay`, async (t) => {
    const { engine, gate, audit, held, release } = await gatedEngine(relay)
    t.teardown(() => engine.stop())
    /** A SOCKS5 CONNECT whose decision is held: no reply may come before release(); returns the reply code. */
    const heldSocks = async (t: Test, port: number, whileHeld = async () => {}) => {
      let done = false
      const p = socksTunnel(engine.socksAddress()!.port, '127.0.0.2', port).then((r) => {
        done = true
        return r
      })
      await waitFor(() => held.length === 1, 5_000, 'the SOCKS5 decision waiting for its fdatasync')
      await whileHeld()
      await settle()
      t.notOk(done, 'no SOCKS5 reply before the fdatasync')
      release()
      const { s, rep } = await p
      s.destroy()
      return rep
    }

    t.test('CONNECT: the upstream handshake overlaps the fdatasync; the 200 and the first byte wait for it', async (t) => {
      accepted.length = 0
      received.length = 0
      const c = connect(gate.port, `CONNECT 127.0.0.2:${UP} HTTP/1.1\r\nHost: 127.0.0.2:${UP}\r\n\r\nEARLY-BYTES`)
      t.teardown(() => c.s.destroy())
      await waitFor(() => held.length === 1, 5_000, 'the decision waiting for its fdatasync')
      const rec = readAudit(audit).find((r) => r.type === 'decision' && r.decision === 'allow')
      t.ok(rec, 'the decision is already written to the log (it survives a kill of the engine)')
      await waitFor(() => accepted.length === 1, 5_000, 'the upstream connection')
      t.pass('the engine connected to the destination while the fdatasync was outstanding')
      await settle()
      t.equal(c.got(), '', 'the client has no answer yet')
      t.equal(Buffer.concat(received).length, 0, 'the destination has no byte of the client yet')
      release()
      await waitFor(() => c.got().startsWith('HTTP/1.1 200'), 5_000, 'the 200')
      await waitFor(() => Buffer.concat(received).toString() === 'EARLY-BYTES', 5_000, 'the early bytes upstream')
      t.pass('after the fdatasync: the 200 reached the client and the bytes sent behind the CONNECT reached the destination')
    })

    t.test('SOCKS5: the success reply waits for the fdatasync too', async (t) => {
      accepted.length = 0
      const rep = await heldSocks(t, UP, () => waitFor(() => accepted.length === 1, 5_000, 'the upstream connection'))
      t.equal(rep, 0, 'then success')
    })

    t.test('a denied CONNECT gets its 403 only once the denial is on stable storage, and nothing is connected', async (t) => {
      accepted.length = 0
      const c = connect(gate.port, `CONNECT 127.0.0.3:${UP} HTTP/1.1\r\nHost: 127.0.0.3:${UP}\r\n\r\n`)
      t.teardown(() => c.s.destroy())
      await waitFor(() => held.length === 1, 5_000, 'the denial waiting for its fdatasync')
      await settle()
      t.equal(c.got(), '', 'no answer yet')
      release()
      await waitFor(() => c.got().startsWith('HTTP/1.1 403'), 5_000, 'the 403')
      t.equal(accepted.length, 0, 'no connection to the denied destination')
    })

    t.test('a connect that fails gets its 502 (SOCKS5: refused) only once the decision is on stable storage', async (t) => {
      const c = connect(gate.port, `CONNECT 127.0.0.2:${DEAD} HTTP/1.1\r\nHost: 127.0.0.2:${DEAD}\r\n\r\n`)
      t.teardown(() => c.s.destroy())
      await waitFor(() => held.length === 1, 5_000, 'the decision waiting for its fdatasync')
      const id = readAudit(audit).filter((r) => r.type === 'decision').at(-1)!.id
      await waitFor(() => readAudit(audit).some((r) => r.type === 'end' && r.decision_id === id && /ECONNREFUSED/.test(String(r.error))), 5_000, 'the refused connect in the end record')
      t.pass('the connect was tried, and refused, while the fdatasync was outstanding')
      await settle()
      t.equal(c.got(), '', 'no answer to the client yet')
      t.notOk(c.s.destroyed, 'and the client is not cut off either')
      release()
      await waitFor(() => c.got().startsWith('HTTP/1.1 502'), 5_000, 'the 502')
      t.match(c.got(), /failed: ECONNREFUSED/, 'which says why')

      t.equal(await heldSocks(t, DEAD), 5, 'then SOCKS5 "connection refused"')
    })

    t.test('a client that leaves while the fdatasync runs: the upstream leg is closed, the end recorded', async (t) => {
      accepted.length = 0
      const c = connect(gate.port, `CONNECT 127.0.0.2:${UP} HTTP/1.1\r\nHost: 127.0.0.2:${UP}\r\n\r\n`)
      await waitFor(() => held.length === 1 && accepted.length === 1, 5_000, 'decision held, upstream connected')
      const upClosed = new Promise<void>((r) => accepted[0]!.once('close', () => r()))
      c.s.destroy()
      await settle()
      release()
      await upClosed
      t.pass('the upstream connection was closed')
      const id = readAudit(audit).filter((r) => r.type === 'decision').at(-1)!.id
      await waitFor(() => readAudit(audit).some((r) => r.type === 'end' && r.decision_id === id), 5_000, 'end record')
      const end = readAudit(audit).find((r) => r.type === 'end' && r.decision_id === id)!
      t.same([end.bytes_in, end.bytes_out], [0, 0], 'its end record is written, and nothing moved')
    })
  })
}
