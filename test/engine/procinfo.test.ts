/**
 * Which process holds a client connection (lib/engine/procinfo.ts), looked up for real: the
 * clients are child processes that open TCP connections to a server in this process on command,
 * and the lookup must name the one whose descriptor is that connection's socket. The lookup
 * remembers, per client address, where the last connection was found and tries that first: these
 * tests check that this is used for a program's repeat connections, and that it never names the
 * wrong process when the next connection comes from another program, from a process that replaced
 * the remembered one, or while the remembered process still holds an older connection.
 */
import t, { type Test } from 'tap'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { spawn, type ChildProcess } from 'node:child_process'
import { findPeerProcess, stats, setKernelLookup } from '../../lib/engine/procinfo.js'
import { tmpdir, hasIproute2 } from './helpers.js'
import { addon, setAddonForTesting } from '../../lib/kernel/addon.js'

const node = fs.realpathSync(process.execPath)

/** each accepted connection's addresses, as the gate sees them, by the client's port */
interface Conn {
  remoteAddress: string
  remotePort: number
  localAddress: string
  localPort: number
}
const accepted = new Map<number, Conn>()
const sockets: net.Socket[] = []
function server(host: string): Promise<{ port: number; close: () => void }> {
  const s = net.createServer((c) => {
    accepted.set(c.remotePort!, { remoteAddress: c.remoteAddress!, remotePort: c.remotePort!, localAddress: c.localAddress!, localPort: c.localPort! })
    sockets.push(c)
    c.on('error', () => {})
  })
  return new Promise((resolve) =>
    s.listen(0, host, () =>
      resolve({
        port: (s.address() as net.AddressInfo).port,
        close: () => {
          for (const c of sockets) c.destroy()
          s.close()
        },
      }),
    ),
  )
}

/**
 * A client process: on "connect" it opens one more connection (the earlier ones stay open) and
 * prints its local port; on "close" it closes its oldest connection.
 */
interface Client {
  pid: number
  connect(): Promise<Conn>
  close(): Promise<void>
  exit(): Promise<void>
}
function client(host: string, port: number, wrap: string[] = []): Client {
  const script = `const net = require('net'); const open = []; let buf = ''
process.stdin.on('data', (d) => { buf += d; let i; while ((i = buf.indexOf('\\n')) >= 0) { const cmd = buf.slice(0, i); buf = buf.slice(i + 1)
  if (cmd === 'connect') { const c = net.connect(${port}, '${host}', () => console.log('port ' + c.localPort)); c.on('error', (e) => console.log('error ' + e.message)); open.push(c) }
  if (cmd === 'close') { open.shift().destroy(); console.log('closed') }
  if (cmd === 'pid') console.log('pid ' + process.pid)
} }); process.stdin.on('end', () => process.exit(0))`
  const cmd = [...wrap, process.execPath, '-e', script]
  const c: ChildProcess = spawn(cmd[0]!, cmd.slice(1), { stdio: ['pipe', 'pipe', 'inherit'] })
  let out = ''
  const waiters: Array<(line: string) => void> = []
  c.stdout!.on('data', (d) => {
    out += d
    let i
    while ((i = out.indexOf('\n')) >= 0) {
      const line = out.slice(0, i)
      out = out.slice(i + 1)
      waiters.shift()?.(line)
    }
  })
  const ask = (cmd: string) =>
    new Promise<string>((resolve) => {
      waiters.push(resolve)
      c.stdin!.write(cmd + '\n')
    })
  const me: Client = {
    pid: 0,
    async connect() {
      const line = await ask('connect')
      if (!line.startsWith('port ')) throw new Error(`client: ${line}`)
      const p = Number(line.slice(5))
      for (let i = 0; i < 200 && !accepted.has(p); i++) await new Promise((r) => setTimeout(r, 5))
      const s = accepted.get(p)
      if (!s) throw new Error(`the server never saw the connection from port ${p}`)
      return s
    },
    async close() {
      await ask('close')
    },
    exit: () =>
      new Promise<void>((resolve) => {
        if (c.exitCode !== null) return resolve()
        c.on('exit', () => resolve())
        c.stdin!.end()
      }),
  }
  return Object.assign(me, {
    ready: ask('pid').then((l) => {
      me.pid = Number(l.slice(4))
    }),
  })
}
async function started(c: Client): Promise<Client> {
  await (c as Client & { ready: Promise<void> }).ready
  return c
}

const who = (s: Conn, elsewhere = false) => findPeerProcess(s.remoteAddress, s.remotePort, s.localAddress, s.localPort, elsewhere)
const counts = () => ({ ...stats })

const root = process.getuid?.() === 0
const ipOk = hasIproute2()
/**
 * Each case runs twice: with the kernel's exact socket lookup (NETLINK_SOCK_DIAG, the default where
 * it works) and with the /proc/PID/net tables it falls back to. `used` checks which one answered.
 */
for (const mode of ['kernel lookup', 'tables'] as const) {
  const used = (t: Test, before: typeof stats) =>
    mode === 'kernel lookup'
      ? t.ok(stats.kernel > before.kernel && stats.tables === before.tables, `answered by the kernel's lookup (${stats.kernel - before.kernel}), no table read`)
      : t.ok(stats.tables > before.tables && stats.kernel === before.kernel, `answered by table reads (${stats.tables - before.tables}), no kernel lookup`)
  t.test(`${mode}: in the engine's own namespace, repeat connections use the hint, and it never names the wrong process`, async (t) => {
    setKernelLookup(mode === 'kernel lookup')
    const srv = await server('127.0.0.1')
    t.teardown(srv.close)
    const a = await started(client('127.0.0.1', srv.port))
    const b = await started(client('127.0.0.1', srv.port))
    t.teardown(async () => {
      await a.exit()
      await b.exit()
    })

    t.same(who(await a.connect()), { pid: a.pid, binary: node }, "A's first connection")
    const c0 = counts()
    for (let i = 0; i < 5; i++) t.same(who(await a.connect()), { pid: a.pid, binary: node }, `A's connection ${i + 2}, A's earlier ones still open`)
    t.equal(stats.hinted - c0.hinted, 5, 'each of the five repeats was answered from the hint')
    t.equal(stats.walked - c0.walked, 0, 'and none walked /proc')
    used(t, c0)

    // the hint names A, whose descriptors are all still open sockets: B's connection must be B's
    t.same(who(await b.connect()), { pid: b.pid, binary: node }, 'B, while the hint pointed at A')
    t.same(who(await a.connect()), { pid: a.pid, binary: node }, 'A again after B')
    // A closes its oldest connection and opens another: the new socket may take the freed descriptor
    await a.close()
    t.same(who(await a.connect()), { pid: a.pid, binary: node }, 'A, on a reused descriptor number')

    // the remembered process exits: the next one from the same address is found by a walk
    await a.exit()
    const c = await started(client('127.0.0.1', srv.port))
    t.teardown(() => c.exit())
    const c1 = counts()
    t.same(who(await c.connect()), { pid: c.pid, binary: node }, 'C, after the remembered process A exited')
    t.ok(stats.walked - c1.walked >= 1, 'found by walking /proc')
    used(t, c1)
  })

  t.test(`${mode}: a connection no process holds any more is not named`, async (t) => {
    setKernelLookup(mode === 'kernel lookup')
    const srv = await server('127.0.0.1')
    t.teardown(srv.close)
    const a = await started(client('127.0.0.1', srv.port))
    const s = await a.connect()
    t.same(who(s), { pid: a.pid, binary: node })
    const s2 = await a.connect()
    await a.exit() // both of A's sockets are closed (the table may still list them, with no inode)
    await new Promise((r) => setTimeout(r, 50))
    t.equal(who(s2), null, 'no owner: neither the hint nor the walk invents one')
  })

  t.test(`${mode}: in a sandbox network namespace (veth wiring)`, { skip: !(root && ipOk) && `needs root and iproute2 to create a namespace (root: ${root}, ip: ${ipOk})` }, async (t) => {
    setKernelLookup(mode === 'kernel lookup')
    const { prepareNetns, ensureGateAddress, GATE_ADDRESS } = await import('../../lib/sandbox/netns.js')
    ensureGateAddress()
    const srv = await server(GATE_ADDRESS)
    t.teardown(srv.close)
    const ns = prepareNetns({ id: `pi${process.pid % 100000}`, gatePort: srv.port, registryDir: path.join(tmpdir(), 'registry') })
    t.teardown(() => ns.cleanup())
    const inNs = ['ip', 'netns', 'exec', ns.name]
    const a = await started(client(GATE_ADDRESS, srv.port, inNs))
    const s = await a.connect()
    t.equal(s.remoteAddress, ns.sandboxAddress, 'the connection comes from the sandbox address')
    t.same(who(s, true), { pid: a.pid, binary: node }, "A, found in the sandbox's namespace")
    const c0 = counts()
    for (let i = 0; i < 3; i++) t.same(who(await a.connect(), true), { pid: a.pid, binary: node }, `A's connection ${i + 2}`)
    t.equal(stats.hinted - c0.hinted, 3, 'the repeats asked only the remembered namespace')
    used(t, c0)

    // another process of the same sandbox, then the remembered one gone
    const b = await started(client(GATE_ADDRESS, srv.port, inNs))
    t.same(who(await b.connect(), true), { pid: b.pid, binary: node }, 'B, in the same namespace')
    await a.exit()
    await b.exit()
    const c = await started(client(GATE_ADDRESS, srv.port, inNs))
    t.teardown(() => c.exit())
    t.same(who(await c.connect(), true), { pid: c.pid, binary: node }, 'C, after A and B exited')

    // the same client port and gate port in the engine's own namespace must not be confused with the
    // sandbox's: a host process's socket to the server is not the sandbox's
    const h = await started(client(GATE_ADDRESS, srv.port))
    t.teardown(() => h.exit())
    t.same(who(await h.connect()), { pid: h.pid, binary: node }, 'a host process beside it is named as itself')
    t.same(who(await c.connect(), true), { pid: c.pid, binary: node }, 'and the sandbox process after it as itself')
  })
}

/**
 * The kernel's lookup says "no such socket" also on a kernel without inet_diag, and it can fail
 * (no addon, a seccomp filter refusing setns). Neither may cost an answer: the tables are read.
 */
t.test('a kernel lookup that finds nothing, or fails, falls back to the tables', async (t) => {
  const srv = await server('127.0.0.1')
  t.teardown(srv.close)
  const a = await started(client('127.0.0.1', srv.port))
  t.teardown(() => a.exit())
  const real = addon()
  t.teardown(() => {
    setAddonForTesting(null)
    setKernelLookup(true)
  })
  for (const [what, fake] of [
    ['answers 0 for everything (no inet_diag)', () => 0],
    ['throws EPERM (setns refused)', () => Object.assign(new Error('EPERM: Operation not permitted, setns'), { code: 'EPERM' }) as never],
  ] as const) {
    setAddonForTesting({
      ...real,
      sockDiagInode: () => {
        const r = fake()
        if (r instanceof Error) throw r
        return r
      },
    })
    setKernelLookup(true)
    const c0 = counts()
    t.same(who(await a.connect()), { pid: a.pid, binary: node }, `found when the kernel lookup ${what}`)
    t.ok(stats.tables > c0.tables, 'by reading the tables')
  }
  // and with the real one back, the next lookup uses it again
  setAddonForTesting(null)
  setKernelLookup(true)
  const c1 = counts()
  t.same(who(await a.connect()), { pid: a.pid, binary: node }, 'found with the real kernel lookup')
  t.ok(stats.kernel > c1.kernel && stats.tables === c1.tables, 'by the kernel lookup alone')
})
