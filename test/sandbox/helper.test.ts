/**
 * cordon-exec, the applier, driven with hand-made plans: it fails closed (exit 125, a message
 * naming the step) and each plan element is really in force in the executed program.
 */
import t from 'tap'
import { writeFileSync, readFileSync, mkdirSync, statSync, existsSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import net from 'node:net'
import { REPO, handPlan } from '../fixtures/kernel/handplan.js'
import { runUnder, runUnderAsync, tempDir, ATTACKS } from '../fixtures/kernel/run.js'
import { helperPath } from '../../lib/kernel/addon.js'
import { probe } from '../../lib/kernel/probe.js'

const f = probe()
const abi = f.landlockAbi
const noLL = abi === 0 ? 'Landlock is not available on this kernel' : false

t.test('fails closed with exit 125 and a message naming the step', async (t) => {
  const ws = tempDir(t)
  const plan = handPlan({ abi: Math.max(abi, 1), workspace: ws, network: { mode: 'host' } })
  plan.landlock!.paths.push({ path: join(ws, 'missing-dir'), access: 1, optional: false, origin: 'test' })
  const r = runUnder(plan, ['/bin/echo', 'SHOULD-NOT-RUN'])
  t.equal(r.status, 125)
  t.equal(r.stdout, '', 'the program never ran')
  t.match(r.stderr, `cordon: landlock: ${join(ws, 'missing-dir')}: No such file or directory`)

  const bad = runUnder(null, [helperPath(), '--bogus', '--', '/bin/true'])
  t.equal(bad.status, 125)
  t.match(bad.stderr, /cordon: arguments: --bogus/)
  const noProg = runUnder(null, [helperPath(), '--drop-caps'])
  t.equal(noProg.status, 125)
  t.match(noProg.stderr, /missing `-- PROGRAM/)
  const hex = runUnder(null, [helperPath(), '--seccomp', 'zz', '--', '/bin/true'])
  t.equal(hex.status, 125)
  const netns = runUnder(null, [helperPath(), '--netns-path', join(ws, 'nope'), '--', '/bin/echo', 'x'])
  t.equal(netns.status, 125)
  t.match(netns.stderr, /cordon: netns: .*nope: No such file/)
  t.equal(netns.stdout, '')
})

t.test('exit 127 when the program does not exist, 126 when it cannot be executed', async (t) => {
  const r = runUnder(null, [helperPath(), '--', 'cordon-no-such-program'])
  t.equal(r.status, 127)
  t.match(r.stderr, /cordon: exec: cordon-no-such-program: No such file/)
  const ws = tempDir(t)
  writeFileSync(join(ws, 'noexec'), '#!/bin/sh\n', { mode: 0o644 })
  t.equal(runUnder(null, [helperPath(), '--', join(ws, 'noexec')]).status, 126)
})

t.test('Landlock: reads and writes only where the plan grants', { skip: noLL }, async (t) => {
  const ws = tempDir(t)
  const outside = tempDir(t, 'cordon-outside-')
  writeFileSync(join(outside, 'secret'), 'TOP SECRET')
  const plan = handPlan({ abi, workspace: ws, network: { mode: 'host' } })
  const r = runUnder(plan, ['/bin/sh', '-c', `cat ${outside}/secret; echo rc=$?; echo hi > ${outside}/new; echo wrc=$?; echo ok > ${ws}/in && cat ${ws}/in; head -c 5 /usr/share/dict/words 2>/dev/null; ls /usr >/dev/null && echo usr-ok`])
  t.equal(r.status, 0)
  t.notMatch(r.stdout, /TOP SECRET/)
  t.match(r.stdout, /rc=1/)
  t.match(r.stderr, /secret: Permission denied/)
  t.match(r.stdout, /wrc=[12]/)
  t.notOk(existsSync(join(outside, 'new')), 'nothing written outside')
  t.match(r.stdout, /^ok$/m, 'workspace writable')
  t.match(r.stdout, /usr-ok/)
  // optional rule on a missing path is skipped, not fatal
  plan.landlock!.paths.push({ path: join(ws, 'not-there'), access: 1, optional: true, origin: 'test' })
  t.equal(runUnder(plan, ['/bin/true']).status, 0)
})

t.test('network none: a fresh namespace with only loopback', { skip: !f.networkNamespaces && 'no network namespaces' }, async (t) => {
  const ws = tempDir(t)
  const plan = handPlan({ abi: Math.max(abi, 1), workspace: ws, network: { mode: 'none' } })
  const py = [
    'import socket,errno,json',
    'out={}',
    's=socket.socket(); s.settimeout(3)',
    'try:\n  s.connect(("1.1.1.1",80)); out["public"]="ok"\nexcept OSError as e: out["public"]=errno.errorcode.get(e.errno,str(e))',
    'srv=socket.socket(); srv.bind(("127.0.0.1",0)); srv.listen(1)',
    'c=socket.create_connection(srv.getsockname()); a,_=srv.accept(); c.sendall(b"ping"); out["loopback"]=a.recv(4).decode()',
    'out["ifaces"]=sorted(n for _,n in socket.if_nameindex())',
    'print(json.dumps(out))',
  ].join('\n')
  // Only ever attempted inside the empty namespace: no packet can leave this host.
  const r = runUnder(plan, ['python3', '-c', py])
  t.equal(r.status, 0, r.stderr)
  const out = JSON.parse(r.stdout)
  t.equal(out.public, 'ENETUNREACH', 'no route to a public address')
  t.equal(out.loopback, 'ping', 'loopback TCP works')
  t.same(out.ifaces, ['lo'])
})

t.test('private /tmp, rlimits, mkdirs, capabilities dropped', async (t) => {
  // not under /tmp: the private /tmp would hide a workspace there
  const ws = tempDir(t, 'cordon-k-', '/var/tmp')
  const ptmp = join(ws, 'ptmp')
  mkdirSync(ptmp)
  const plan = handPlan({ abi: Math.max(abi, 1), workspace: ws, network: { mode: 'host' }, privateTmp: ptmp })
  plan.landlock!.paths.push({ path: '/tmp', access: plan.landlock!.paths.at(-1)!.access, optional: false, origin: 'test' })
  plan.rlimits.push({ resource: 'nofile', soft: 77, hard: 88 })
  plan.mkdirs.push(join(ws, 'home', 'deep'))
  const hostMarker = `/tmp/cordon-host-marker-${process.pid}`
  writeFileSync(hostMarker, 'x')
  t.teardown(() => rmSync(hostMarker, { force: true }))
  const r = runUnder(plan, ['/bin/sh', '-c', `ls /tmp; echo inside > /tmp/made-inside; ulimit -n; ulimit -Hn; grep -E '^Cap(Eff|Prm|Bnd|Amb)' /proc/self/status`])
  t.equal(r.status, 0, r.stderr)
  t.notMatch(r.stdout, /cordon-host-marker/, "the host's /tmp is not visible")
  t.equal(readFileSync(join(ptmp, 'made-inside'), 'utf8'), 'inside\n', '/tmp is the private directory')
  t.match(r.stdout, /^77\n88$/m)
  t.match(r.stdout, /CapEff:\s+0+\n/)
  t.match(r.stdout, /CapBnd:\s+0+\n/)
  t.equal(statSync(join(ws, 'home', 'deep')).mode & 0o777, 0o700)
})

t.test('Landlock scoping and ptrace rules: parent signals, abstract sockets, /proc of outside processes', { skip: abi < 6 && `Landlock ABI ${abi} < 6 has no scoping` }, async (t) => {
  const ws = tempDir(t)
  const name = `cordon-test-${process.pid}-${Date.now()}`
  const sockPath = join(ws, 'outside.sock')
  const servers = [net.createServer((c) => c.end()), net.createServer((c) => c.end())]
  await new Promise<void>((r) => servers[0]!.listen({ path: '\0' + name }, r))
  await new Promise<void>((r) => servers[1]!.listen({ path: sockPath }, r))
  t.teardown(() => servers.forEach((s) => s.close()))
  // Landlock only (no seccomp, host network) so these results are Landlock's alone.
  const plan = handPlan({ abi, workspace: join(ws), network: { mode: 'host' } })
  const cmd = ['python3', ATTACKS, String(process.pid), sockPath, name]
  const control = JSON.parse((await runUnderAsync(null, cmd)).stdout)
  const inside = JSON.parse((await runUnderAsync(plan, cmd)).stdout)
  t.equal(control.kill_parent, 'ok')
  t.equal(inside.kill_parent, 'EPERM', 'signal to a process outside the domain denied')
  t.equal(control.unix_abstract_connect, 'ok')
  t.equal(inside.unix_abstract_connect, 'EPERM', 'abstract unix socket outside the domain denied')
  t.equal(control.parent_environ, 'ok')
  t.equal(inside.parent_environ, 'EACCES', '/proc/<parent>/environ unreadable')
  t.equal(control.parent_mem, 'ok')
  t.equal(inside.parent_mem, 'EACCES', '/proc/<parent>/mem unreadable')
  t.equal(inside.socketpair, 'ok', 'socketpair still works')
  t.equal(inside.getpid, 'ok')
})

const hasSetpriv = runUnder(null, ['setpriv', '--version']).status === 0
t.test('not root: user namespace + network namespace + private /tmp', {
  skip: !f.isRoot ? 'needs root to switch to an unprivileged uid for the test' : !hasSetpriv ? 'setpriv (util-linux) is not installed' : !f.userNamespaces ? 'user namespaces are disabled' : false,
}, async (t) => {
  const ws = tempDir(t, 'cordon-nr-', '/var/tmp')
  const ptmp = join(ws, 'tmp')
  mkdirSync(ptmp)
  const { chmodSync } = await import('node:fs')
  chmodSync(ws, 0o777)
  chmodSync(ptmp, 0o777)
  const plan = handPlan({ abi: Math.max(abi, 1), workspace: ws, network: { mode: 'none' }, privateTmp: ptmp })
  const py = 'import socket,os,json; open("/tmp/nr","w").write("x"); print(json.dumps({"uid": os.getuid(), "ifaces": sorted(n for _,n in socket.if_nameindex()), "tmp": os.listdir("/tmp")}))'
  const r = runUnder(null, ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', helperPath(), ...(await import('../../lib/sandbox/argv.js')).helperArgv(plan), '--', 'python3', '-c', py], { env: plan.env })
  t.equal(r.status, 0, r.stderr)
  const o = JSON.parse(r.stdout)
  t.equal(o.uid, 65534, 'same uid inside (mapped 1:1)')
  t.same(o.ifaces, ['lo'], 'only loopback')
  // a checkout under /tmp is a rule path the helper keeps visible (a mount point in the private /tmp)
  const kept = REPO.startsWith('/tmp/') ? REPO.split('/')[2]! : null
  t.same(o.tmp.filter((n: string) => n !== kept), ['nr'], '/tmp is the private directory')
  t.ok(existsSync(join(ptmp, 'nr')))
})
