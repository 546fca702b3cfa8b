/**
 * The non-root network path: inside a fresh network namespace (loopback only) the relay carries
 * proxy connections to the gate's unix socket; nothing else is reachable.
 */
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { execFile, execFileSync } from 'node:child_process'
import { Engine } from '../../lib/engine/engine.js'
import { startUpstream, tmpdir, readAudit, ROOT } from './helpers.js'

let unshareOk = false
try {
  execFileSync('unshare', ['-n', 'true'], { stdio: 'ignore' })
  unshareOk = true
} catch {
  /* no unshare or no permission for network namespaces */
}
if (!unshareOk) {
  t.skip('cannot create a network namespace here (unshare -n failed)')
} else {
  const up = await startUpstream('127.0.0.2')
  const dir = tmpdir()
  const policyFile = path.join(dir, 'policy.yaml')
  fs.writeFileSync(policyFile, `network:\n  mode: proxy\n  allow:\n    - api.example.com:${up.port}\n    - { cidr: 127.0.0.2/32, ports: [${up.port}] }\n`)
  const gateSock = path.join(dir, 'gate.sock')
  const audit = path.join(dir, 'audit.jsonl')
  const engine = new Engine({
    policyFile,
    listen: { host: '127.0.0.1', port: 0 },
    listenUnix: gateSock,
    audit,
    hosts: { 'api.example.com': ['127.0.0.2'] },
    sandboxId: 'relay-sandbox',
    watch: false,
  })
  await engine.start()
  t.teardown(async () => {
    await engine.stop()
    await up.close()
  })

  t.test('relay inside a loopback-only namespace reaches the gate; direct paths fail', async (t) => {
    const out = await new Promise<string>((resolve, reject) =>
      execFile(
        'unshare',
        ['-n', 'sh', '-c', `ip link set lo up && exec "${process.execPath}" --import tsx test/engine/fixtures/in-ns-relay.ts "${gateSock}" ${up.port}`],
        { cwd: ROOT, timeout: 60_000 },
        (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)),
      ),
    )
    const r = JSON.parse(out.trim().split('\n').at(-1)!)
    t.same(r.allowed, { status: 200, body: 'hello GET /via-relay' })
    t.equal(r.denied.status, 403)
    t.match(r.denied.body, /elsewhere\.example\.com:80 denied/)
    t.equal(r.directPublic, 'ENETUNREACH', 'no route out of the namespace')
    t.not(r.directUpstream, 'connected', "the host's loopback is not the namespace's")
    const recs = readAudit(audit).filter((x) => x.type === 'decision')
    t.ok(recs.some((x) => x.decision === 'allow' && x.sandbox === 'relay-sandbox'))
  })
}
