/** The addon's shims: argument checks, errno mapping, probe facts. Nothing here confines the runner. */
import t from 'tap'
import { readFileSync, openSync, closeSync, readlinkSync } from 'node:fs'
import net from 'node:net'
import { spawn, execFileSync } from 'node:child_process'
import { addon, helperPath } from '../../lib/kernel/addon.js'
import { probe, doctor } from '../../lib/kernel/probe.js'

const a = addon()

t.test('exports exactly the documented shims and the relay', async (t) => {
  t.same(Object.keys(a).sort(), [
    'closeFd', 'execve', 'getNoNewPrivs', 'landlockAbi', 'landlockAddPathRule', 'landlockAddPortRule',
    'landlockCreateRuleset', 'landlockRestrictSelf', 'relayAdd', 'relayClose', 'relayStart', 'seccompGetMode',
    'seccompSetFilter', 'setNoNewPrivs', 'setrlimit', 'sockDiagInode',
  ])
})

const own = readlinkSync('/proc/thread-self/ns/net')
let unshareOk = false
try {
  execFileSync('unshare', ['-n', 'true'], { stdio: 'ignore' })
  unshareOk = true
} catch {
  /* no permission to create namespaces, or no unshare(1) */
}

t.test('sockDiagInode finds a TCP socket by its addresses, in this namespace or at a namespace path', async (t) => {
  const srv = net.createServer()
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r))
  const port = (srv.address() as net.AddressInfo).port
  const accepted = new Promise<net.Socket>((r) => srv.once('connection', r))
  const c = net.connect(port, '127.0.0.1')
  await new Promise((r) => c.once('connect', r))
  const s = await accepted
  t.teardown(() => {
    c.destroy()
    s.destroy()
    srv.close()
  })
  const lo = Uint8Array.of(127, 0, 0, 1)
  // the inode each side's descriptor links to, as /proc shows it
  const inodeOf = (sock: net.Socket) => {
    const fd = (sock as unknown as { _handle: { fd: number } })._handle.fd
    return Number(/socket:\[(\d+)\]/.exec(readlinkSync(`/proc/self/fd/${fd}`))![1])
  }
  t.equal(a.sockDiagInode('', 4, lo, c.localPort!, lo, port), inodeOf(c), "the client's socket")
  t.equal(a.sockDiagInode('', 4, lo, port, lo, c.localPort!), inodeOf(s), "the server's side of it")
  t.equal(a.sockDiagInode('/proc/self/ns/net', 4, lo, c.localPort!, lo, port), inodeOf(c), 'through a namespace path (setns there and back)')
  const mapped = Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1)
  t.equal(a.sockDiagInode('', 6, mapped, c.localPort!, mapped, port), inodeOf(c), 'an IPv4 socket asked for as ::ffff:127.0.0.1')
  t.equal(a.sockDiagInode('', 4, lo, c.localPort!, lo, port === 65535 ? 1 : port + 1), 0, 'no such socket: 0')

  t.throws(() => (a.sockDiagInode as (...x: unknown[]) => number)('', 5, lo, 1, lo, 2), TypeError, 'family must be 4 or 6')
  t.throws(() => a.sockDiagInode('', 4, new Uint8Array(16), 1, lo, 2), TypeError, 'a family 4 address is 4 bytes')
  t.throws(() => a.sockDiagInode('', 6, lo, 1, lo, 2), TypeError, 'a family 6 address is 16 bytes')
  t.throws(() => a.sockDiagInode('', 4, lo, 70000, lo, 2), TypeError, 'ports are 0..65535')
  t.throws(() => a.sockDiagInode('a\0b', 4, lo, 1, lo, 2), TypeError, 'a NUL in the path')
  const e = t.throws(() => a.sockDiagInode('/nonexistent/ns/net', 4, lo, 1, lo, 2)) as NodeJS.ErrnoException
  t.equal(e.code, 'ENOENT', 'a namespace path that does not exist')
  t.equal(e.syscall, 'open')
  t.equal(e.path, '/nonexistent/ns/net')
  const f = t.throws(() => a.sockDiagInode('/proc/self/status', 4, lo, 1, lo, 2)) as NodeJS.ErrnoException
  t.equal(f.code, 'EINVAL', 'a file that is not a network namespace: setns refuses it')
  t.equal(f.syscall, 'setns')
  t.equal(readlinkSync('/proc/thread-self/ns/net'), own, 'and the thread stayed in its own namespace')
})

t.test('sockDiagInode in another network namespace asks there and comes back', { skip: !unshareOk && 'cannot create a network namespace here (unshare -n failed)' }, async (t) => {
  // a process in a namespace of its own, with a listener and a connection on its loopback
  const script = `const net = require('net'); const s = net.createServer().listen(0, '127.0.0.1', () => { const c = net.connect(s.address().port, '127.0.0.1', () => console.log(JSON.stringify({ port: s.address().port, client: c.localPort }))) })`
  const child = spawn('unshare', ['-n', 'sh', '-c', `ip link set lo up 2>/dev/null || true; exec ${JSON.stringify(process.execPath)} -e ${JSON.stringify(script)}`], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => child.kill())
  const info = JSON.parse(await new Promise<string>((r) => child.stdout!.once('data', (d) => r(String(d))))) as { port: number; client: number }
  const lo = Uint8Array.of(127, 0, 0, 1)
  const ns = `/proc/${child.pid}/ns/net`
  t.not(readlinkSync(ns), own, 'the child is in another namespace')
  const ino = a.sockDiagInode(ns, 4, lo, info.client, lo, info.port)
  t.ok(ino > 0, `its connection's socket is found there (inode ${ino})`)
  t.equal(a.sockDiagInode('', 4, lo, info.client, lo, info.port), 0, 'and not in ours')
  t.equal(readlinkSync('/proc/thread-self/ns/net'), own, 'the thread is back in its own namespace')
  const mine = net.createServer()
  await new Promise<void>((r) => mine.listen(0, '127.0.0.1', r))
  t.teardown(() => mine.close())
  t.ok(await new Promise((r) => net.connect((mine.address() as net.AddressInfo).port, '127.0.0.1', function (this: net.Socket) { this.destroy(); r(true) }).on('error', () => r(false))), 'and sockets it opens afterwards are in ours')
})

t.test('the relay checks its arguments and refuses what is not a stream socket', async (t) => {
  t.throws(() => (a.relayAdd as (...x: unknown[]) => void)(0, 3, 4, null, null, 0), TypeError, 'id 0 is refused')
  t.throws(() => (a.relayAdd as (...x: unknown[]) => void)(1, 3, 4, 'text', null, 0), TypeError, 'toA must be bytes')
  t.throws(() => (a.relayAdd as (...x: unknown[]) => void)(1, 3, 4, null, null, 0, -1), TypeError, 'a negative send buffer is refused')
  t.throws(() => a.relayAdd(1, 3, 4, null, null, 0, 65 * 1024 * 1024), TypeError, 'a send buffer over 64 MiB is refused')
  t.throws(() => (a.relayClose as (...x: unknown[]) => void)(1), TypeError, 'a close needs a reason')
  // lib/kernel/relay.ts starts it once per process; a second start is a programming error
  a.relayStart(() => undefined)
  t.throws(() => a.relayStart(() => undefined), TypeError, 'started once per environment')
  const fd = openSync('/proc/self/status', 'r')
  const e = t.throws(() => a.relayAdd(1, fd, fd, null, null, 0)) as NodeJS.ErrnoException
  closeSync(fd)
  t.equal(e.code, 'ENOTSOCK', 'a file descriptor that is not a stream socket is refused with ENOTSOCK')
  t.equal(e.syscall, 'relayAdd')
})

t.test('errors carry code, errno and syscall', async (t) => {
  const e1 = t.throws(() => a.landlockAddPathRule(9999, '/usr', 1)) as NodeJS.ErrnoException
  t.equal(e1.code, 'EBADF')
  t.equal(e1.errno, -9)
  t.equal(e1.syscall, 'landlock_add_rule')
  const e2 = t.throws(() => a.landlockAddPathRule(9999, '/no/such/path/for/cordon', 1)) as NodeJS.ErrnoException
  t.equal(e2.code, 'ENOENT')
  t.equal(e2.syscall, 'open')
  t.equal(e2.path, '/no/such/path/for/cordon')
  const e3 = t.throws(() => a.closeFd(99999)) as NodeJS.ErrnoException
  t.equal(e3.code, 'EBADF')
  const e4 = t.throws(() => a.execve('/no/such/exe', ['x'], [])) as NodeJS.ErrnoException
  t.equal(e4.code, 'ENOENT')
  t.equal(e4.syscall, 'execve')
  t.throws(() => a.seccompSetFilter(new Uint8Array(7), 0), TypeError, 'filter length is checked')
  t.throws(() => (a.landlockCreateRuleset as (...x: unknown[]) => number)(-1, 0, 0), TypeError)
  t.throws(() => (a.landlockAddPortRule as (...x: unknown[]) => void)(3, 70000, 1), TypeError)
})

t.test('probe() matches the kernel', async (t) => {
  const f = probe()
  t.equal(f.landlockAbi, a.landlockAbi())
  t.equal(f.arch, process.arch === 'arm64' ? 'aarch64' : 'x86_64')
  t.equal(f.isRoot, process.geteuid!() === 0)
  t.equal(a.getNoNewPrivs(), /NoNewPrivs:\s*1/.test(readFileSync('/proc/self/status', 'utf8')))
  t.equal(a.seccompGetMode(), Number(/Seccomp:\s*(\d)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]))
  if (f.landlockAbi > 0) {
    const fd = a.landlockCreateRuleset(1, 0, 0)
    t.ok(fd > 2, 'a ruleset fd')
    a.landlockAddPathRule(fd, '/usr', 1)
    a.closeFd(fd)
  }
  const d = doctor()
  t.equal(d.helper, helperPath())
  t.equal(d.landlock.abi, f.landlockAbi)
  t.equal(d.landlock.tsync, f.landlockAbi >= 8)
})
