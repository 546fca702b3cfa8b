/**
 * End to end on real containers: the rendered k3s manifests run with `podman kube play` (runc,
 * rootful) from the image deploy/scripts/build-image.sh builds, and the flows are driven through
 * the four containers:
 *   webhook message -> gateway -> agent in the sandbox (under `cordon run`) -> inference.local ->
 *   router (adds the real key) -> fake provider -> reply -> gateway -> the fake channel;
 *   egress through the engine: one request allowed, one denied;
 *   from inside the sandbox: no secret in its environment or files, Landlock and seccomp in force,
 *   no direct route to the fake provider.
 * Translations podman needs are printed (lib/podman.ts). NOT exercised: see NOT_EXERCISED.
 * Needs root and podman (deploy/scripts/host-setup.sh) and the image (build-image.sh);
 * `npm run test:deploy` (test/deploy/run.sh) does all of it. Not named *.test.ts: a plain
 * `npm test` does not run it (it needs root, podman and a 2-minute image build).
 */
import t from 'tap'
import http from 'node:http'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, writeFileSync, readFileSync, rmSync, mkdirSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { stringify } from 'yaml'
import { render, podSpecOf, ROOT, type Obj } from './lib/k8s.js'
import { adaptForPodman, podman, run, infraPid, podIp, inNetns } from './lib/podman.js'
import { evaluate, type NetworkPolicy, type Endpoint } from './lib/netpol.js'
import { FakeProvider } from '../router/fake-provider.js'
import { AtomicWriterDir } from './lib/atomic-writer.js'
import { createHmac } from 'node:crypto'

// The webhook channel's signature (docs/agent-endpoint.md): sha256=HMAC-SHA256("<ts>.<body>").
const signWebhook = (secret: string, ts: number, body: string) => 'sha256=' + createHmac('sha256', secret).update(`${ts}.${body}`).digest('hex')

const NOT_EXERCISED = [
  'K3s itself (no Kubernetes API server, kubelet, kube-proxy or CoreDNS here)',
  'NetworkPolicy enforcement by a CNI (podman enforces none; the policies are checked by evaluation in manifests.test.ts, and only the sandbox egress allow-list is emulated here with iptables)',
  'the seccomp installer DaemonSet (podman runs no DaemonSets; the profile is placed where podman reads it)',
  'Service ClusterIP DNAT by kube-proxy (emulated per pod), PVC provisioning by local-path (podman named volumes)',
  'Secret volumes (podman 4.3 crashes on them; mounted as ConfigMap volumes of the same pod)',
  'the kubelet performing ConfigMap updates (the test performs the kubelet\'s ..data swap itself on the engine\'s podman volume; the router\'s reload is covered by reload.test.ts)',
  'readiness gating of traffic (podman runs probes only on demand here: no systemd timers); the probe commands are run and asserted',
  'the linux/arm64 image (built and run only for this machine\'s architecture)',
]
for (const n of NOT_EXERCISED) t.comment(`NOT exercised: ${n}`)

const NET = 'cordon-e2e'
const SUBNET = '10.233.77.0/24'
const GW = '10.233.77.1'
const KEEP = process.env.CORDON_E2E_KEEP === '1'
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

if (process.getuid?.() !== 0) {
  t.fail('the deploy e2e test needs root (rootful podman); run it as root: npm run test:deploy')
  process.exit(1)
}
try {
  podman('version', '--format', '{{.Client.Version}}')
} catch {
  t.fail('podman is not installed: run deploy/scripts/host-setup.sh')
  process.exit(1)
}
const objs = render(path.join(ROOT, 'deploy/overlays/k3s'))
const image = podSpecOf(objs.find((o) => o.kind === 'Deployment')!)!.containers[0].image as string
try {
  podman('image', 'exists', image)
} catch {
  t.fail(`image ${image} is missing: run deploy/scripts/build-image.sh (npm run test:deploy does)`)
  process.exit(1)
}

// ---- secrets and fakes (test values; the point is to find where they do and do not appear) ----
const SECRETS = {
  providerKey: 'sk-e2e-REALKEY-' + Math.random().toString(36).slice(2, 14),
  webhookSecret: 'whsec-e2e-' + Math.random().toString(36).slice(2, 14),
  engineToken: 'engine-token-e2e-' + Math.random().toString(36).slice(2, 14),
  gatewayToken: 'gateway-token-e2e-' + Math.random().toString(36).slice(2, 14),
}
const tmp = mkdtempSync(path.join(os.tmpdir(), 'cordon-e2e-'))
const pods: string[] = []
// podman keeps ConfigMap volumes (named after the ConfigMap) and PVCs as named volumes: the
// test's secrets would stay on disk in them, so all are removed with the pods.
const volumes = ['cordon-engine-state', 'cordon-gateway-state', 'cordon-e2e-agent', 'cordon-engine-policy', 'cordon-gateway-config', 'cordon-router-config', 'cordon-sandbox-policy', 'cordon-seccomp-profiles', 'engine-secret-control-token', 'gateway-secret-channels', 'gateway-secret-control-token', 'router-secret-keys', 'router-secret-keys-in']

function cleanup(): void {
  for (const p of ['cordon-sandbox-pod-0', 'cordon-gateway-pod-0', 'cordon-engine-pod-0', 'cordon-router-pod-0']) {
    try { podman('pod', 'rm', '-f', '-t', '0', p) } catch { /* absent */ }
  }
  for (const v of volumes) {
    try { podman('volume', 'rm', '-f', v) } catch { /* absent */ }
  }
  try { podman('network', 'rm', '-f', NET) } catch { /* absent */ }
}

t.before(async () => {
  cleanup()
})
t.teardown(() => {
  if (KEEP) {
    t.comment(`CORDON_E2E_KEEP=1: pods, network ${NET} and ${tmp} left in place`)
    return
  }
  cleanup()
  rmSync(tmp, { recursive: true, force: true })
})

t.test('deploy e2e: the rendered manifests on podman', async (t) => {
  podman('network', 'create', '--subnet', SUBNET, '--gateway', GW, NET)

  // fake provider, fake channel (reply_url), fake internet host: all on the host, reached through
  // the bridge at GW (podman creates the bridge with the first container, so they listen on all
  // addresses, on random ports)
  const provider = await FakeProvider.start({ host: '0.0.0.0', expectKey: SECRETS.providerKey, answer: 'e2e answer forty-two' })
  t.teardown(() => provider.close())
  const replies: any[] = []
  const channel = http.createServer((req, res) => {
    let b = ''
    req.on('data', (c) => (b += c))
    req.on('end', () => {
      try { replies.push(JSON.parse(b)) } catch { replies.push(b) }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}')
    })
  })
  await new Promise<void>((r) => channel.listen(0, '0.0.0.0', r))
  t.teardown(() => new Promise((r) => channel.close(r)))
  const channelPort = (channel.address() as any).port
  const internet = http.createServer((req, res) => res.writeHead(200, { 'content-type': 'text/plain' }).end(`hello from ${req.headers.host}\n`))
  await new Promise<void>((r) => internet.listen(0, '0.0.0.0', r))
  t.teardown(() => new Promise((r) => internet.close(r)))
  const internetPort = (internet.address() as any).port
  const providerPort = Number(new URL(provider.baseUrl).port)

  // ---- test configuration of the rendered objects -------------------------------------------
  const cm = (name: string) => objs.find((o) => o.kind === 'ConfigMap' && o.metadata.name === name)!
  const dep = (name: string) => objs.find((o) => o.kind === 'Deployment' && o.metadata.name === name)!
  cm('cordon-router-config').data['router.yaml'] = stringify({
    version: 1,
    routes: [{ name: 'e2e', default: true, models: ['gpt-e2e', 'gpt-4o-mini'], targets: [{ provider: 'openai', base_url: `http://${GW}:${providerPort}/v1`, model: 'gpt-e2e-upstream', key: { file: '/run/cordon/keys/openai' } }] }],
  })
  cm('cordon-engine-policy').data['policy.yaml'] = stringify({
    version: 1,
    network: { mode: 'proxy', allow: [`allowed.test:${internetPort}`, { cidr: `${GW}/32`, ports: [internetPort] }], deny: ['denied.test'], unlisted: 'deny' },
  })
  cm('cordon-gateway-config').data['gateway.yaml'] = stringify({
    version: 1,
    public_listen: '0.0.0.0:8443',
    control_http: { listen: '0.0.0.0:9092', token: { file: '/var/run/secrets/cordon/control/gateway-token' } },
    channels: [{ name: 'hook', type: 'webhook', secret: { file: '/var/run/secrets/cordon/gateway/webhook-secret' }, reply_url: `http://${GW}:${channelPort}/reply`, allow: ['e2e-user'], pairing: false }],
  })
  const sandboxPolicy = cm('cordon-sandbox-policy')
  sandboxPolicy.data['agent.yaml'] = sandboxPolicy.data['agent.yaml'].replace('read_only: [/opt/cordon]', 'read_only: [/opt/cordon, /opt/agent]')
  objs.push({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'cordon-e2e-agent', namespace: 'cordon' }, data: { 'agent.mjs': readFileSync(path.join(ROOT, 'test/deploy/fixtures/agent.mjs'), 'utf8') } })
  const sb = podSpecOf(dep('cordon-sandbox'))!
  sb.volumes.push({ name: 'agent', configMap: { name: 'cordon-e2e-agent' } })
  sb.containers[0].volumeMounts.push({ name: 'agent', mountPath: '/opt/agent', readOnly: true })
  const referenceArgs = [...sb.containers[0].args] // the shipped agent (examples/agent), used last
  sb.containers[0].args = [...sb.containers[0].args.slice(0, sb.containers[0].args.indexOf('--') + 1), 'node', '/opt/agent/agent.mjs']
  podSpecOf(dep('cordon-engine'))!.containers[0].args.push(`--resolve=allowed.test=${GW}`, `--resolve=denied.test=${GW}`)
  objs.push(
    { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'cordon-router-keys' }, stringData: { openai: SECRETS.providerKey, 'control-token': `router-control-${randomBytes(16).toString('hex')}` } },
    { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'cordon-gateway-channels' }, stringData: { 'webhook-secret': SECRETS.webhookSecret } },
    { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'cordon-control' }, stringData: { 'engine-token': SECRETS.engineToken, 'gateway-token': SECRETS.gatewayToken } },
  )
  t.comment('podman translation: the engine policy volume is laid out as the kubelet does (..data symlink) so a live update can be tested')
  t.comment('test configuration: router -> fake provider, engine allows allowed.test and denies denied.test, gateway webhook channel "hook", agent = test/deploy/fixtures/agent.mjs')

  // ---- play -----------------------------------------------------------------------------------
  const seccompRoot = path.join(tmp, 'seccomp')
  mkdirSync(seccompRoot)
  const flat = (p: string) => p.replace(/\//g, '-')
  writeFileSync(path.join(seccompRoot, flat('cordon/agent.json')), cm('cordon-seccomp-profiles').data['agent.json'])
  const adapted = adaptForPodman(objs, { seccompFlatName: flat })
  for (const n of adapted.notes) t.comment(`podman translation: ${n}`)

  const play = (comp: string, start = true) => {
    const file = path.join(tmp, `${comp}.yaml`)
    writeFileSync(file, adapted.byComponent.get(comp)!.map((o) => stringify(o)).join('---\n'))
    run('podman', ['kube', 'play', '--network', NET, '--seccomp-profile-root', seccompRoot, `--start=${start}`, file])
    pods.push(`cordon-${comp}-pod-0`)
    return `cordon-${comp}-pod-0`
  }
  const t0 = Date.now()
  play('router')
  play('engine', false)
  // Give the engine's policy volume the kubelet's ConfigMap layout (podman copies files flat):
  // DIR/..<timestamp>/policy.yaml, DIR/..data -> it, DIR/policy.yaml -> ..data/policy.yaml.
  const engineVol = podman('volume', 'inspect', 'cordon-engine-policy', '--format', '{{.Mountpoint}}')
  const engineCm = new AtomicWriterDir(engineVol)
  const policyText = readFileSync(path.join(engineVol, 'policy.yaml'), 'utf8')
  rmSync(path.join(engineVol, 'policy.yaml'))
  engineCm.write({ 'policy.yaml': policyText })
  podman('pod', 'start', 'cordon-engine-pod-0')
  play('gateway')
  const ip: Record<string, string> = {}
  for (const c of ['router', 'engine', 'gateway']) ip[c] = podIp(`cordon-${c}-pod-0`, NET)
  // kube-proxy emulation: ClusterIP:port -> podIP:targetPort in a client pod's namespace
  const dnat = (pid: number) => {
    for (const s of adapted.services) inNetns(pid, 'iptables', ['-t', 'nat', '-A', 'OUTPUT', '-d', s.clusterIP, '-p', 'tcp', '--dport', String(s.port), '-j', 'DNAT', '--to-destination', `${ip[s.component]}:${s.targetPort}`])
  }
  for (const c of ['engine', 'gateway']) dnat(infraPid(`cordon-${c}-pod-0`))
  const policies = objs.filter((o) => o.kind === 'NetworkPolicy') as unknown as NetworkPolicy[]
  const ns = (n: string) => ({ 'kubernetes.io/metadata.name': n })
  const ep = (c: string): Endpoint => {
    const d = objs.find((o) => o.kind === 'Deployment' && o.spec.template.metadata.labels['app.kubernetes.io/component'] === c)!
    return { name: c, ip: ip[c]!, namespace: 'cordon', labels: d.spec.template.metadata.labels, ports: podSpecOf(d)!.containers[0].ports?.map((p: Obj) => ({ name: p.name, port: p.containerPort, protocol: 'TCP' })) ?? [] }
  }
  /** Play the sandbox pod, wire its namespace (DNAT + CNI stand-in), then start the agent. */
  const startSandbox = (docs: Obj[]): string[] => {
    try { podman('pod', 'rm', '-f', '-t', '0', 'cordon-sandbox-pod-0') } catch { /* first start */ }
    const file = path.join(tmp, 'sandbox.yaml')
    writeFileSync(file, docs.map((o) => stringify(o)).join('---\n'))
    run('podman', ['kube', 'play', '--network', NET, '--seccomp-profile-root', seccompRoot, '--start=false', file])
    // start only the infra container (the pod's network namespace), wire it, then the agent
    podman('start', podman('pod', 'inspect', 'cordon-sandbox-pod-0', '--format', '{{.InfraContainerID}}'))
    ip.sandbox = podIp('cordon-sandbox-pod-0', NET)
    const spid = infraPid('cordon-sandbox-pod-0')
    dnat(spid)
    // CNI stand-in: the sandbox's egress allow-list, compiled from the rendered NetworkPolicies
    const ipt = (...a: string[]) => inNetns(spid, 'iptables', a)
    ipt('-A', 'OUTPUT', '-o', 'lo', '-j', 'ACCEPT')
    ipt('-A', 'OUTPUT', '-m', 'conntrack', '--ctstate', 'ESTABLISHED,RELATED', '-j', 'ACCEPT')
    const allowedFlows: string[] = []
    for (const c of ['router', 'engine', 'gateway']) {
      for (const p of ep(c).ports!) {
        if (evaluate(policies, ns, ep('sandbox'), ep(c), p.port, 'TCP').allowed) {
          ipt('-A', 'OUTPUT', '-d', ip[c]!, '-p', 'tcp', '--dport', String(p.port), '-j', 'ACCEPT')
          allowedFlows.push(`${c}:${p.port}`)
        }
      }
    }
    ipt('-A', 'OUTPUT', '-p', 'tcp', '-j', 'REJECT', '--reject-with', 'tcp-reset')
    ipt('-A', 'OUTPUT', '-j', 'REJECT')
    podman('pod', 'start', 'cordon-sandbox-pod-0')
    return allowedFlows.sort()
  }
  pods.push('cordon-sandbox-pod-0')
  const sandboxDocs = adapted.byComponent.get('sandbox')!
  t.same(startSandbox(sandboxDocs), ['engine:3128', 'gateway:8081', 'router:8080'], 'sandbox egress allow-list compiled from the NetworkPolicies')
  t.comment(`pod IPs: ${JSON.stringify(ip)}`)
  t.comment(`four pods started in ${((Date.now() - t0) / 1000).toFixed(1)} s`)

  const ctr = (c: string) => `cordon-${c}-pod-0-${c === 'sandbox' ? 'agent' : c}`
  const logs = (c: string) => { try { return run('podman', ['logs', ctr(c)], { stdio: ['ignore', 'pipe', 'pipe'] }) } catch (e) { return String(e) } }
  const dumpLogs = () => ['router', 'engine', 'gateway', 'sandbox'].map((c) => `--- ${c}\n${logs(c).split('\n').filter((l) => !l.includes('syslog')).slice(-25).join('\n')}`).join('\n')

  // ---- probes: the manifests' own probe commands, run in the containers ----------------------
  await t.test('every container passes its liveness and readiness probe', async (t) => {
    for (const c of ['router', 'engine', 'gateway', 'sandbox']) {
      const d = objs.find((o) => o.kind === 'Deployment' && o.metadata.name === `cordon-${c}`)!
      for (const kind of ['readinessProbe', 'livenessProbe']) {
        const cmd = podSpecOf(d)!.containers[0][kind].exec.command as string[]
        let ok = false
        let last = ''
        for (let i = 0; i < 60 && !ok; i++) {
          try {
            podman('exec', ctr(c), ...cmd)
            ok = true
          } catch (e) {
            last = String((e as Error).message).slice(0, 300)
            await sleep(500)
          }
        }
        t.ok(ok, `${c}: ${kind} \`${cmd.join(' ')}\` passes${ok ? '' : ` (last: ${last})\n${dumpLogs()}`}`)
      }
    }
  })

  await t.test('the containers run with the rendered securityContext', async (t) => {
    for (const c of ['router', 'engine', 'gateway', 'sandbox']) {
      const info = JSON.parse(podman('inspect', ctr(c)))[0]
      t.equal(info.Config.User, '10001:10001', `${c}: runs as 10001`)
      t.equal(info.HostConfig.ReadonlyRootfs, true, `${c}: read-only root filesystem`)
      t.ok(info.HostConfig.SecurityOpt.includes('no-new-privileges'), `${c}: no-new-privileges`)
      const status = podman('exec', ctr(c), 'cat', '/proc/1/status')
      t.match(status, /^CapEff:\s*0+$/m, `${c}: PID 1 has no effective capabilities`)
      t.match(status, /^CapBnd:\s*0+$/m, `${c}: empty bounding set`)
      t.match(status, /^Seccomp:\s*2$/m, `${c}: seccomp filter mode`)
      const spec = JSON.parse(readFileSync(`/var/lib/containers/storage/overlay-containers/${info.Id}/userdata/config.json`, 'utf8'))
      if (c === 'sandbox') {
        t.same(spec.linux.seccomp.defaultAction, 'SCMP_ACT_ALLOW', 'sandbox: the OCI spec carries cordon\'s agent profile (default allow, deny list), not podman\'s default')
        t.ok(spec.linux.seccomp.syscalls.some((s: any) => s.names.includes('unshare')), 'sandbox: the profile lists unshare')
      }
    }
    const hosts = podman('exec', ctr('sandbox'), 'cat', '/etc/hosts')
    t.match(hosts, /^10\.43\.200\.10\s+inference\.local$/m, 'sandbox /etc/hosts: inference.local from hostAliases')
    t.match(hosts, /^10\.43\.200\.11\s+gateway\.local$/m, 'sandbox /etc/hosts: gateway.local')
    t.match(hosts, /^10\.43\.200\.12\s+egress\.local$/m, 'sandbox /etc/hosts: egress.local')
    t.match(podman('exec', ctr('sandbox'), 'cat', '/etc/resolv.conf'), /nameserver 127\.0\.0\.53/, 'sandbox: no real resolver')
  })

  // ---- the message flow ---------------------------------------------------------------------
  let seq = 0
  const send = async (text: string): Promise<any> => {
    const id = `e2e-${Date.now()}-${seq++}`
    const body = JSON.stringify({ id, conversation: 'e2e-conv', sender: { id: 'e2e-user', name: 'E2E' }, text })
    const ts = Math.floor(Date.now() / 1000)
    // a fresh connection per message (no keep-alive reuse across the long scans between sends)
    const status = await new Promise<{ code: number; text: string }>((resolve, reject) => {
      const req = http.request({ host: ip.gateway, port: 8443, path: '/channels/hook', method: 'POST', agent: false, headers: { 'content-type': 'application/json', 'x-cordon-timestamp': String(ts), 'x-cordon-signature': signWebhook(SECRETS.webhookSecret, ts, body) } }, (res) => {
        let b = ''
        res.on('data', (c) => (b += c))
        res.on('end', () => resolve({ code: res.statusCode ?? 0, text: b }))
      })
      req.on('error', reject)
      req.end(body)
    })
    if (status.code >= 300) throw new Error(`webhook POST: HTTP ${status.code} ${status.text}`)
    const end = Date.now() + 45_000
    while (Date.now() < end) {
      const got = replies.find((x) => x && x.in_reply_to && String(x.in_reply_to).includes(id))
      if (got) return got
      await sleep(200)
    }
    throw new Error(`no reply to ${id} within 45 s; replies so far: ${JSON.stringify(replies).slice(0, 500)}\n${dumpLogs()}`)
  }

  const probeArgs = () => ({
    providerHost: GW, providerPort,
    routerHost: ip.router, routerControlPort: 9090,
    internetHost: GW, internetPort,
    allowedUrl: `http://allowed.test:${internetPort}/`,
    deniedUrl: `http://denied.test:${internetPort}/`,
  })

  await t.test('a channel message reaches the agent; inference goes through the router with the real key; the reply comes back', async (t) => {
    const before = provider.requests.length
    const r = await send('ask: what is the answer?')
    t.match(r.text, /e2e answer forty-two/, 'the reply carries the fake provider\'s answer')
    const seen = provider.requests.slice(before)
    t.ok(seen.length >= 1, 'the fake provider was called')
    t.equal(seen[0]?.headers.authorization, `Bearer ${SECRETS.providerKey}`, 'the router added the real key on the upstream leg')
    t.notMatch(JSON.stringify(seen.map((s) => s.headers)), /sk-dummy-agent-key/, "the agent's dummy key never reached the provider")
    t.equal(seen[0]?.body?.model, 'gpt-e2e-upstream', 'routed to the configured upstream model')
    t.notMatch(JSON.stringify(r), new RegExp(SECRETS.providerKey), 'the key is not in the reply')
  })

  await t.test('from inside the sandbox: egress through the engine allowed and denied; Landlock, seccomp, no direct route', async (t) => {
    const r = await send('probe:' + JSON.stringify(probeArgs()))
    let p: any
    try { p = JSON.parse(r.text) } catch { t.fail(`the agent's probe reply is not JSON: ${r.text}\n${dumpLogs()}`); return }
    t.comment(`probe result: ${JSON.stringify({ ...p, env: Object.keys(p.env) })}`)
    // egress via the engine
    t.equal(p.egressAllowed.status, 200, 'allowed.test through the egress gate: 200')
    t.match(p.egressAllowed.body, /hello from allowed\.test/, 'allowed.test: the body arrived')
    t.equal(p.egressDenied.status, 403, 'denied.test through the egress gate: 403 from the engine')
    t.notMatch(p.egressDenied.body, /hello from/, 'denied.test: nothing from the host came back')
    // no direct routes
    t.not(p.directToProvider, 'connected', `direct connection to the fake provider fails (${p.directToProvider})`)
    t.not(p.directToRouterControl, 'connected', `direct connection to the router's control port fails (${p.directToRouterControl})`)
    t.not(p.directToInternet, 'connected', `direct connection to the internet host fails (${p.directToInternet})`)
    t.equal(p.inferenceReachable, 'connected', 'inference.local is reachable (the legitimate path beside the attacks)')
    // kernel confinement of the agent process
    t.equal(p.status.NoNewPrivs, '1', 'agent: no_new_privs')
    t.equal(p.status.Seccomp, '2', 'agent: seccomp filter mode')
    t.ok(Number(p.status.Seccomp_filters) >= 2, `agent: the pod's profile and cordon's own filter (${p.status.Seccomp_filters} filters)`)
    t.match(p.status.CapEff, /^0+$/, 'agent: no capabilities')
    t.match(p.unshare, /^(?!ok)/, `agent: unshare is refused (${p.unshare})`)
    t.match(p.readDpkgStatus, /EACCES/, 'agent: Landlock denies a world-readable file outside the policy (/var/lib/dpkg/status)')
    t.match(p.readPolicyMount, /EACCES/, 'agent: Landlock denies reading the mounted policy directory')
    t.match(p.readImageHome, /EACCES/, "agent: Landlock denies the image user's home (/home/cordon/.bashrc); its home is in the workspace")
    t.match(p.writeWorkspace, /^ok: work/, 'agent: writes its workspace (legitimate work succeeds)')
    t.match(p.writeTmp, /^ok/, 'agent: writes /tmp')
    t.equal(p.uid, 10001, 'agent: uid 10001')
    // the same file, read outside cordon run (exec in the container: pod seccomp only) succeeds,
    // so the EACCES above is Landlock and not file permissions
    t.match(podman('exec', ctr('sandbox'), 'head', '-c', '20', '/var/lib/dpkg/status'), /Package/, 'control: /var/lib/dpkg/status is readable without cordon run')
    // secrets not in the agent's environment
    const envText = JSON.stringify(p.env)
    for (const [k, v] of Object.entries(SECRETS)) t.notMatch(envText, new RegExp(v), `agent env: no ${k}`)
    t.notMatch(Object.keys(p.env).join(' '), /KEY|TOKEN|SECRET/i, 'agent env: no credential-named variables')
    t.equal(p.env.HTTP_PROXY, 'http://egress.local:3128', 'agent env: HTTP_PROXY names the egress gate (passed by the policy)')
    t.equal(p.env.CORDON_GATEWAY_URL, 'http://gateway.local', 'agent env: CORDON_GATEWAY_URL')
  })

  await t.test('a kubelet-style ConfigMap update reaches the running engine (..data swap on its volume)', async (t) => {
    const show = () => JSON.parse(podman('exec', ctr('engine'), 'node', '-e',
      "require('http').get({socketPath:'/run/cordon/engine.sock',path:'/v1/policy'},r=>{let b='';r.on('data',c=>b+=c);r.on('end',()=>process.stdout.write(b))})"))
    const started = podman('inspect', ctr('engine'), '--format', '{{.State.StartedAt}}')
    const before = show()
    engineCm.write({ 'policy.yaml': stringify({ version: 1, network: { mode: 'proxy', allow: [`allowed.test:${internetPort}`, `denied.test:${internetPort}`, { cidr: `${GW}/32`, ports: [internetPort] }], deny: [], unlisted: 'deny' } }) })
    let after = before
    for (let i = 0; i < 60 && after.hash === before.hash; i++) {
      await sleep(250)
      after = show()
    }
    t.not(after.hash, before.hash, 'the engine applied the new policy')
    t.match(JSON.stringify(after.allow), /denied\.test/, 'the new rule is in force')
    t.equal(podman('inspect', ctr('engine'), '--format', '{{.State.StartedAt}}'), started, 'without a restart')
    const r = await send('probe:' + JSON.stringify(probeArgs()))
    const p = JSON.parse(r.text)
    t.equal(p.egressDenied.status, 200, 'the sandbox now reaches denied.test through the gate')
  })

  await t.test('no secret anywhere in the sandbox container; the same scan finds them in their own pods', async (t) => {
    // Scan each container's whole filesystem view (image, volumes, tmpfs) from the host, through
    // /proc/PID/root with full root rights (root inside the container has no capabilities and
    // could miss a 0600 file), for every secret value at once.
    const scan = (c: string): Record<string, string[]> => {
      const pid = podman('inspect', ctr(c), '--format', '{{.State.Pid}}')
      const root = `/proc/${pid}/root`
      let out = ''
      try {
        out = run('grep', ['-rsoF', ...Object.values(SECRETS).flatMap((v) => ['-e', v]), '--exclude-dir=proc', '--exclude-dir=sys', '--exclude-dir=dev', `${root}/`])
      } catch (e) {
        if (!/exit 1\)/.test(String((e as Error).message))) throw e // exit 1 = no match
      }
      const found: Record<string, string[]> = {}
      for (const line of out.split('\n').filter(Boolean)) {
        const i = line.lastIndexOf(':')
        const name = Object.entries(SECRETS).find(([, v]) => v === line.slice(i + 1))?.[0] ?? '?'
        ;(found[name] ??= []).push(line.slice(root.length, i))
      }
      return found
    }
    const sandbox = scan('sandbox')
    t.same(sandbox, {}, `sandbox filesystem (image, volumes, tmpfs): no secret value anywhere${Object.keys(sandbox).length ? ` — found ${JSON.stringify(sandbox)}` : ''}`)
    const env = JSON.parse(podman('inspect', ctr('sandbox')))[0].Config.Env.join('\n')
    for (const [k, v] of Object.entries(SECRETS)) t.notMatch(env, new RegExp(v), `sandbox container env: no ${k}`)
    const hpids = podman('top', ctr('sandbox'), 'hpid').split('\n').slice(1).map((x) => x.trim()).filter((x) => /^\d+$/.test(x))
    t.ok(hpids.length >= 2, `sandbox container processes: ${hpids.length} (cordon run and the agent)`)
    const environ = hpids.map((p) => { try { return readFileSync(`/proc/${p}/environ`, 'utf8') } catch { return '' } }).join('\n')
    for (const [k, v] of Object.entries(SECRETS)) t.notMatch(environ, new RegExp(v), `sandbox processes' environments: no ${k}`)
    const router = scan('router')
    t.same(Object.keys(router).sort(), ['providerKey'], `router pod holds the provider key and nothing else secret (${JSON.stringify(router)})`)
    t.ok(router.providerKey?.some((f) => f.endsWith('/cordon/keys/openai')), 'control: the scan finds the 0600 key copy in the router pod')
    const gateway = scan('gateway')
    t.same(Object.keys(gateway).sort(), ['engineToken', 'gatewayToken', 'webhookSecret'], `gateway pod: channel secret and control tokens only (${JSON.stringify(gateway)})`)
    const engine = scan('engine')
    t.same(Object.keys(engine).sort(), ['engineToken'], `engine pod: its control token only (${JSON.stringify(engine)})`)
  })

  await t.test('the shipped sandbox Deployment as rendered: the reference agent (examples/agent) answers through the router', async (t) => {
    const docs = structuredClone(sandboxDocs)
    const d = docs.find((o) => o.kind === 'Deployment')!
    const c = podSpecOf(d)!.containers[0]
    c.args = referenceArgs
    t.same(c.args.slice(-2), ['node', '/opt/cordon/examples/agent/agent.mjs'], 'the rendered agent command')
    startSandbox(docs)
    const before = provider.requests.length
    const r = await send('what is the answer?')
    t.match(r.text, /e2e answer forty-two/, "the reference agent's reply carries the provider's answer")
    t.equal(provider.requests.slice(before)[0]?.headers.authorization, `Bearer ${SECRETS.providerKey}`, 'the router added the real key')
    t.match(podman('exec', ctr('sandbox'), 'cat', '/proc/1/status'), /^NoNewPrivs:\s*1$/m, 'the pod runs with no_new_privs')
  })

  for (const n of NOT_EXERCISED) t.comment(`NOT exercised: ${n}`)
})
