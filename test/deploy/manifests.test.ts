/**
 * deploy/ manifests: render the k3s overlay, validate every object against the Kubernetes API
 * schemas (kubernetes-models 4.5 = Kubernetes 1.33) including unknown fields, check the security
 * properties a platform engineer relies on, and evaluate the NetworkPolicies as a reachability
 * matrix asserted against the table in deploy/README.md (parsed, so the two cannot drift).
 *
 * NOT exercised here: enforcement. Nothing on this machine enforces NetworkPolicy (no K3s, no
 * CNI); this file proves what the policies say, not that a cluster obeys them.
 */
import t from 'tap'
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { render, validateSchema, unknownFields, podSpecOf, kubectlAvailable, ROOT, type Obj } from './lib/k8s.js'
import { evaluate, parseTable, type Endpoint, type NetworkPolicy } from './lib/netpol.js'

if (!kubectlAvailable()) {
  // kubectl carries kustomize; deploy/scripts/host-setup.sh installs it. Not a kernel feature,
  // so this is a failure, not a skip.
  t.fail('kubectl is not installed: run deploy/scripts/host-setup.sh (it installs kubectl for `kubectl kustomize`)')
  process.exit(1)
}

const objs = render(path.join(ROOT, 'deploy/overlays/k3s'))
const byKind = (k: string) => objs.filter((o) => o.kind === k)
const get = (k: string, name: string) => {
  const o = objs.find((x) => x.kind === k && x.metadata.name === name)
  if (!o) throw new Error(`rendered manifests have no ${k}/${name}`)
  return o
}
const workloads = objs.filter((o) => podSpecOf(o))
const component = (o: Obj) => o.spec.template.metadata.labels['app.kubernetes.io/component'] as string
const workload = (c: string) => {
  const w = workloads.find((o) => component(o) === c)
  if (!w) throw new Error(`no workload with component=${c}`)
  return w
}

t.test('every rendered object is valid against the Kubernetes API schema', async (t) => {
  t.ok(objs.length >= 25, `rendered ${objs.length} objects`)
  for (const o of objs) t.equal(validateSchema(o), null, `${o.kind}/${o.metadata.name} validates`)
  t.same(unknownFields(objs), [], 'no unknown fields (kubectl apply uses strict field validation)')
  for (const o of objs) if (o.kind !== 'Namespace') t.equal(o.metadata.namespace, 'cordon', `${o.kind}/${o.metadata.name} is in namespace cordon`)
  // the validators must be able to fail: a wrong type and an unknown field are caught
  const bad = structuredClone(get('Deployment', 'cordon-sandbox'))
  bad.spec.template.spec.containers[0].securityContext.runAsUser = 'root'
  t.not(validateSchema(bad), null, 'a string runAsUser is rejected')
  const bad2 = structuredClone(get('Deployment', 'cordon-sandbox'))
  bad2.spec.template.spec.containers[0].securityContext.readOnlyRootFilesytem = true
  t.match(unknownFields([bad2]).join('\n'), /readOnlyRootFilesytem/, 'a misspelt field is rejected')
})

t.test('one image for every role, tagged with the package version build-image.sh produces', async (t) => {
  const version = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version
  const images = new Set(workloads.flatMap((w) => [...(podSpecOf(w)!.initContainers ?? []), ...podSpecOf(w)!.containers].map((c: Obj) => c.image)))
  t.same([...images], [`localhost/cordon:${version}`], `every container runs localhost/cordon:${version} (deploy/base/kustomization.yaml images: newTag = package.json version)`)
  for (const w of workloads.filter((x) => component(x) !== 'seccomp-installer')) {
    const c = podSpecOf(w)!.containers[0]
    t.equal(c.args?.[0], component(w) === 'sandbox' ? 'run' : component(w), `${w.metadata.name}: the command picks the role (cordon ${c.args?.[0]})`)
    t.notOk(c.command, `${w.metadata.name}: uses the image entrypoint (cordon)`)
  }
})

t.test('four components, each with its own token-less ServiceAccount', async (t) => {
  t.same(new Set(workloads.map(component)), new Set(['sandbox', 'router', 'engine', 'gateway', 'seccomp-installer']))
  for (const sa of byKind('ServiceAccount')) t.equal(sa.automountServiceAccountToken, false, `ServiceAccount ${sa.metadata.name} mounts no token`)
  for (const w of workloads) {
    const spec = podSpecOf(w)!
    t.equal(spec.automountServiceAccountToken, false, `${w.metadata.name}: automountServiceAccountToken false`)
    t.ok(byKind('ServiceAccount').some((s) => s.metadata.name === spec.serviceAccountName), `${w.metadata.name}: its ServiceAccount ${spec.serviceAccountName} exists`)
    t.not(spec.serviceAccountName, 'default', `${w.metadata.name}: not the default ServiceAccount`)
    t.equal(spec.hostNetwork ?? false, false, `${w.metadata.name}: no host network`)
    t.equal(spec.hostPID ?? false, false, `${w.metadata.name}: no host PID`)
  }
  for (const c of ['engine', 'gateway']) {
    const w = workload(c)
    const pvc = podSpecOf(w)!.volumes.find((v: Obj) => v.persistentVolumeClaim)
    t.ok(pvc && byKind('PersistentVolumeClaim').some((p) => p.metadata.name === pvc.persistentVolumeClaim.claimName), `${c}: state on a PVC`)
    t.equal(w.spec.strategy?.type, 'Recreate', `${c}: Recreate (one writer per PVC)`)
    t.equal(w.spec.replicas, 1, `${c}: one replica`)
  }
})

t.test('every container: probes, requests and limits, hardened securityContext', async (t) => {
  for (const w of workloads) {
    const spec = podSpecOf(w)!
    for (const c of [...(spec.initContainers ?? []), ...spec.containers]) {
      const id = `${w.metadata.name}/${c.name}`
      const init = (spec.initContainers ?? []).includes(c)
      for (const k of ['requests', 'limits']) for (const r of ['cpu', 'memory']) t.ok(c.resources?.[k]?.[r], `${id}: resources.${k}.${r}`)
      if (!init) {
        t.ok(c.livenessProbe, `${id}: liveness probe`)
        t.ok(c.readinessProbe, `${id}: readiness probe`)
      }
      t.equal(c.securityContext?.allowPrivilegeEscalation, false, `${id}: allowPrivilegeEscalation false`)
      t.equal(c.securityContext?.readOnlyRootFilesystem, true, `${id}: read-only root filesystem`)
      t.same(c.securityContext?.capabilities?.drop, ['ALL'], `${id}: drops ALL capabilities`)
      t.not(c.securityContext?.privileged, true, `${id}: not privileged`)
      const runAsNonRoot = c.securityContext?.runAsNonRoot ?? spec.securityContext?.runAsNonRoot
      if (component(w) !== 'seccomp-installer') t.equal(runAsNonRoot, true, `${id}: runAsNonRoot`)
      const sc = c.securityContext?.seccompProfile ?? spec.securityContext?.seccompProfile
      t.ok(sc && sc.type !== 'Unconfined', `${id}: a seccomp profile (${sc?.type})`)
    }
  }
  // only the installer's init container runs as root, and only it has a hostPath
  for (const w of workloads) {
    const hp = (podSpecOf(w)!.volumes ?? []).filter((v: Obj) => v.hostPath)
    if (component(w) === 'seccomp-installer') t.same(hp.map((v: Obj) => v.hostPath.path), ['/var/lib/kubelet/seccomp'], 'installer: only the kubelet seccomp directory')
    else t.equal(hp.length, 0, `${w.metadata.name}: no hostPath`)
  }
})

t.test('the sandbox pod: no secrets, confined, names pinned, no DNS', async (t) => {
  const w = workload('sandbox')
  const spec = podSpecOf(w)!
  const c = spec.containers[0]
  t.equal(spec.containers.length, 1, 'one container')
  t.same(spec.securityContext.seccompProfile, { type: 'Localhost', localhostProfile: 'cordon/agent.json' }, 'pod seccomp: Localhost cordon/agent.json')
  t.same(c.securityContext.seccompProfile, { type: 'Localhost', localhostProfile: 'cordon/agent.json' }, 'container seccomp: Localhost cordon/agent.json')
  t.equal(spec.securityContext.runAsNonRoot, true, 'runAsNonRoot')
  t.ok(spec.securityContext.runAsUser > 0, 'non-zero uid')
  t.equal(spec.enableServiceLinks, false, 'no service-link environment variables')
  t.notOk(spec.shareProcessNamespace, 'no shared process namespace')
  // nothing secret: no Secret volume or projected secret/token, no env from secrets, no envFrom
  const json = JSON.stringify(spec)
  t.notMatch(json, /"secret"|secretKeyRef|secretRef|serviceAccountToken|"projected"/, 'no Secret reference anywhere in the pod spec')
  t.notOk(c.envFrom, 'no envFrom')
  for (const e of c.env ?? []) {
    t.notOk(e.valueFrom, `env ${e.name}: a literal`)
    t.notMatch(`${e.name}=${e.value}`, /KEY|TOKEN|SECRET|PASSWORD|sk-|Bearer/i, `env ${e.name} is not a credential`)
  }
  // the agent runs under cordon run with the mounted policy
  t.same(c.args.slice(0, 3), ['run', '--policy=/etc/cordon/policy/agent.yaml', '--workspace=/workspace'], 'PID 1 is `cordon run --policy`')
  t.ok(c.args.includes('--'), 'the agent command follows --')
  const pol = spec.volumes.find((v: Obj) => v.name === 'policy')
  t.equal(pol.configMap.name, 'cordon-sandbox-policy', 'policy from the cordon-sandbox-policy ConfigMap')
  // writable only the two emptyDirs
  const writable = c.volumeMounts.filter((m: Obj) => !m.readOnly).map((m: Obj) => m.mountPath).sort()
  t.same(writable, ['/tmp', '/workspace'], 'writable mounts: /tmp and /workspace only')
  // names: hostAliases = the pinned ClusterIPs of the right Services; no resolver
  const alias = (h: string) => spec.hostAliases.find((a: Obj) => a.hostnames.includes(h))?.ip
  t.equal(alias('inference.local'), get('Service', 'cordon-router').spec.clusterIP, 'inference.local -> router ClusterIP')
  t.equal(alias('gateway.local'), get('Service', 'cordon-gateway').spec.clusterIP, 'gateway.local -> gateway ClusterIP')
  t.equal(alias('egress.local'), get('Service', 'cordon-engine').spec.clusterIP, 'egress.local -> engine ClusterIP')
  for (const ip of spec.hostAliases.map((a: Obj) => a.ip)) t.match(ip, /^10\.43\./, `${ip} is inside K3s's service CIDR 10.43.0.0/16`)
  t.equal(spec.dnsPolicy, 'None', 'dnsPolicy None: no cluster DNS')
  t.same(spec.dnsConfig.nameservers, ['127.0.0.53'], 'resolver address where nothing listens')
  t.equal(new Set(spec.hostAliases.map((a: Obj) => a.ip)).size, 3, 'three distinct ClusterIPs')
  const env = Object.fromEntries(c.env.map((e: Obj) => [e.name, e.value]))
  t.equal(env.HTTP_PROXY, `http://egress.local:${get('Service', 'cordon-engine').spec.ports.find((p: Obj) => p.name === 'gate').port}`, 'HTTP_PROXY names the gate Service port')
})

t.test('secrets: provider keys only in the router, channel tokens only in the gateway', async (t) => {
  const users = (secret: string) =>
    workloads.filter((w) => JSON.stringify(podSpecOf(w)).includes(`"secretName":"${secret}"`)).map(component).sort()
  t.same(users('cordon-router-keys'), ['router'], 'cordon-router-keys: router only')
  t.same(users('cordon-gateway-channels'), ['gateway'], 'cordon-gateway-channels: gateway only')
  t.same(users('cordon-control'), ['engine', 'gateway'], 'cordon-control: engine and gateway only')
  t.equal(byKind('Secret').length, 0, 'no Secret object in the manifests (created by the operator, never in git)')
  const routerCfg = get('ConfigMap', 'cordon-router-config').data['router.yaml'] as string
  for (const m of routerCfg.matchAll(/file:\s*(\S+?)\s*\}/g)) t.match(m[1], /^\/run\/cordon\/keys\//, `router key ${m[1]} is in the router's key copy (from its Secret, by its init container)`)
  const rspec = podSpecOf(workload('router'))!
  t.equal(rspec.volumes.find((v: Obj) => v.name === 'keys').emptyDir.medium, 'Memory', 'router key copy: memory-backed, never on disk')
  const gwCfg = get('ConfigMap', 'cordon-gateway-config').data['gateway.yaml'] as string
  for (const m of gwCfg.matchAll(/file:\s*(\S+?)\s*\}/g)) t.match(m[1], /^\/var\/run\/secrets\/cordon\/(gateway|control)\//, `gateway secret ${m[1]} is in a gateway Secret mount`)
  for (const cm of byKind('ConfigMap')) t.notMatch(JSON.stringify(cm.data), /sk-[A-Za-z0-9]{8}|xox[bp]-|\d{6,}:[A-Za-z0-9_-]{30}/, `${cm.metadata.name} holds no credential`)
})

t.test('ports agree: listen flags, containerPorts, Services', async (t) => {
  const flagPort = (w: Obj, flag: string) => {
    const a = podSpecOf(w)!.containers[0].args.find((x: string) => x.startsWith(`--${flag}=`))
    return a ? Number(a.split(':').pop()) : undefined
  }
  const cport = (w: Obj, name: string) => podSpecOf(w)!.containers[0].ports.find((p: Obj) => p.name === name)?.containerPort
  t.equal(flagPort(workload('router'), 'listen'), cport(workload('router'), 'inference'), 'router --listen = inference port')
  t.equal(flagPort(workload('router'), 'control'), cport(workload('router'), 'control'), 'router --control = control port')
  t.equal(flagPort(workload('engine'), 'listen'), cport(workload('engine'), 'gate'), 'engine --listen = gate port')
  t.equal(flagPort(workload('engine'), 'control-tcp'), cport(workload('engine'), 'control'), 'engine --control-tcp = control port')
  t.equal(flagPort(workload('gateway'), 'agent-listen'), cport(workload('gateway'), 'agent'), 'gateway --agent-listen = agent port')
  const gw = get('ConfigMap', 'cordon-gateway-config').data['gateway.yaml'] as string
  t.equal(Number(/public_listen:\s*\S+:(\d+)/.exec(gw)?.[1]), cport(workload('gateway'), 'public'), 'gateway public_listen = public port')
  t.equal(Number(/control_http:\s*\n\s*listen:\s*\S+:(\d+)/.exec(gw)?.[1]), cport(workload('gateway'), 'control'), 'gateway control_http = control port')
  for (const s of byKind('Service')) {
    const w = workloads.find((x) => Object.entries(s.spec.selector).every(([k, v]) => x.spec.template.metadata.labels[k] === v))
    t.ok(w, `Service ${s.metadata.name} selects a workload`)
    for (const p of s.spec.ports) t.ok(podSpecOf(w!)!.containers[0].ports.some((c: Obj) => c.name === p.targetPort), `Service ${s.metadata.name}:${p.port} -> named container port ${p.targetPort}`)
  }
})

t.test('config files: the seccomp ConfigMap is profiles/seccomp/agent.json; configs parse', async (t) => {
  const shipped = readFileSync(path.join(ROOT, 'profiles/seccomp/agent.json'), 'utf8')
  t.equal(get('ConfigMap', 'cordon-seccomp-profiles').data['agent.json'], shipped, 'deploy/base/config/seccomp-agent.json is identical to profiles/seccomp/agent.json (copy it over after editing the profile)')
  const dir = mkdtempSync(path.join(os.tmpdir(), 'cordon-deploy-'))
  const { compileConfig } = await import('../../lib/router/config.js')
  t.doesNotThrow(() => compileConfig(get('ConfigMap', 'cordon-router-config').data['router.yaml'], 'router.yaml', { env: {} }), 'router.yaml is a valid router config')
  const { parseConfig } = await import('../../lib/gateway/config.js')
  t.doesNotThrow(() => parseConfig(get('ConfigMap', 'cordon-gateway-config').data['gateway.yaml'], 'gateway.yaml'), 'gateway.yaml is a valid gateway config')
  const { compileNetworkPolicy } = await import('../../lib/engine/policy.js')
  t.doesNotThrow(() => compileNetworkPolicy(get('ConfigMap', 'cordon-engine-policy').data['policy.yaml'], 'policy.yaml'), 'engine policy.yaml is a valid network policy')
  const { loadPolicy } = await import('../../lib/policy/load.js')
  const pf = path.join(dir, 'agent.yaml')
  // /opt/cordon exists in the image, not on this host: point it at the package checkout
  writeFileSync(pf, String(get('ConfigMap', 'cordon-sandbox-policy').data['agent.yaml']).replaceAll('/opt/cordon', ROOT))
  const p = loadPolicy(pf, { workspace: dir }) as unknown as Obj
  t.equal(p.network?.mode, 'host', 'sandbox policy: network host (the pod namespace)')
  t.ok(p.process?.seccomp?.profile, 'sandbox policy keeps a seccomp profile')
  t.equal(p.filesystem?.workspace, dir, 'sandbox policy: the workspace is the one passed (the pod mounts /workspace)')
  t.ok((p.process?.env?.pass ?? []).includes('HTTP_PROXY'), 'sandbox policy passes HTTP_PROXY to the agent')
  t.equal(p.filesystem?.tmp, 'shared', 'sandbox policy: /tmp is the pod\'s own emptyDir (no mount namespace in a pod)')
})

// ---- NetworkPolicy reachability ---------------------------------------------------------------
const policies = byKind('NetworkPolicy') as unknown as NetworkPolicy[]
const nsObj = get('Namespace', 'cordon')
const nsLabels = (ns: string): Record<string, string> =>
  ns === 'cordon' ? { ...(nsObj.metadata.labels ?? {}), 'kubernetes.io/metadata.name': 'cordon' } : { 'kubernetes.io/metadata.name': ns }
let ipn = 10
const podEndpoint = (name: string, w: Obj): Endpoint => ({
  name,
  ip: `10.42.0.${ipn++}`,
  namespace: 'cordon',
  labels: w.spec.template.metadata.labels,
  ports: (podSpecOf(w)!.containers ?? []).flatMap((c: Obj) => (c.ports ?? []).map((p: Obj) => ({ name: p.name, port: p.containerPort, protocol: p.protocol ?? 'TCP' }))),
})
const endpoints: Record<string, Endpoint> = {
  sandbox: podEndpoint('sandbox', workload('sandbox')),
  router: podEndpoint('router', workload('router')),
  engine: podEndpoint('engine', workload('engine')),
  gateway: podEndpoint('gateway', workload('gateway')),
  'seccomp-installer': podEndpoint('seccomp-installer', workload('seccomp-installer')),
  operator: { name: 'operator', ip: '10.42.0.40', namespace: 'cordon', labels: { 'cordon.io/operator': 'true', app: 'toolbox' } },
  'other-ns': { name: 'other-ns', ip: '10.42.1.20', namespace: 'default', labels: { app: 'other' } },
  'kube-dns': { name: 'kube-dns', ip: '10.42.0.2', namespace: 'kube-system', labels: { 'k8s-app': 'kube-dns' }, ports: [{ name: 'dns', port: 53, protocol: 'UDP' }, { name: 'dns-tcp', port: 53, protocol: 'TCP' }] },
  internet: { name: 'internet', ip: '93.184.215.14' },
  internet6: { name: 'internet6', ip: '2606:2800:21f:cb07::1' },
  private: { name: 'private', ip: '192.168.1.10' },
  metadata: { name: 'metadata', ip: '169.254.169.254' },
}
const EXTERNAL_PORTS = ['22/TCP', '53/UDP', '80/TCP', '443/TCP', '6443/TCP']
const ANY_PORTS = ['22/TCP', '80/TCP', '443/TCP', '3000/TCP', '8080/TCP', '9229/TCP', '53/UDP']
const targetPorts = (e: Endpoint) => (e.ports?.length ? e.ports.map((p) => `${p.port}/${p.protocol}`) : EXTERNAL_PORTS)
const verdict = (from: string, to: string, port: string) => {
  const [n, proto] = port.split('/') as [string, string]
  return evaluate(policies, nsLabels, endpoints[from]!, endpoints[to]!, Number(n), proto)
}

t.test('NetworkPolicy reachability matches the table in deploy/README.md', async (t) => {
  t.comment('NOT exercised: enforcement. Podman does not enforce NetworkPolicy and there is no K3s/CNI here; this evaluates what the policies say.')
  const readme = readFileSync(path.join(ROOT, 'deploy/README.md'), 'utf8')
  const rows = parseTable(readme, 'NetworkPolicies: what each allows')
  t.ok(rows.length >= 40, `${rows.length} rows in the README table`)
  const listed = new Set<string>()
  for (const r of rows) {
    t.ok(endpoints[r.from] && endpoints[r.to], `README:${r.line}: known endpoints ${r.from} -> ${r.to}`)
    if (!endpoints[r.from] || !endpoints[r.to]) continue
    t.match(r.verdict, /^(allow|deny)$/, `README:${r.line}: verdict is allow or deny`)
    t.ok(r.why.length > 10, `README:${r.line}: says why`)
    const ports = r.port === 'any' ? ANY_PORTS : r.port.startsWith('any/') ? ANY_PORTS.filter((p) => p.endsWith(r.port.slice(3))) : [r.port]
    if (r.port.startsWith('any')) listed.add(`${r.from}|${r.to}|${r.port}`)
    for (const p of ports) {
      const v = verdict(r.from, r.to, p)
      t.equal(v.allowed ? 'allow' : 'deny', r.verdict, `README:${r.line}: ${r.from} -> ${r.to} ${p} is ${r.verdict} (egress: ${v.egress}; ingress: ${v.ingress})`)
      listed.add(`${r.from}|${r.to}|${p}`)
    }
  }
  // every flow the policies allow that touches the cordon namespace is documented
  const cordonEnds = ['sandbox', 'router', 'engine', 'gateway', 'seccomp-installer', 'operator']
  const undocumented: string[] = []
  for (const from of Object.keys(endpoints)) {
    for (const to of Object.keys(endpoints)) {
      if (from === to || (!cordonEnds.includes(from) && !cordonEnds.includes(to))) continue
      if (from === 'metadata' || from === 'kube-dns') continue // destinations only
      for (const p of targetPorts(endpoints[to]!)) {
        const documented = listed.has(`${from}|${to}|${p}`) || listed.has(`${from}|${to}|any`) || listed.has(`${from}|${to}|any/${p.split('/')[1]}`)
        if (verdict(from, to, p).allowed && !documented) undocumented.push(`${from} -> ${to} ${p}`)
      }
    }
  }
  t.same(undocumented, [], 'every allowed flow is a row of the README table')
})

t.test('the evaluator itself: selectors, ipBlock except, ports', async (t) => {
  // guards against an evaluator that allows or denies everything
  t.equal(verdict('sandbox', 'router', '8080/TCP').allowed, true, 'a known allowed flow')
  t.equal(verdict('sandbox', 'router', '9090/TCP').allowed, false, 'a known denied flow (port)')
  t.equal(verdict('router', 'internet', '443/TCP').allowed, true, 'ipBlock 0.0.0.0/0 matches a public address')
  t.equal(verdict('router', 'private', '443/TCP').allowed, false, 'ipBlock except removes 192.168.0.0/16')
  const noDeny = policies.filter((p) => p.metadata.name !== 'default-deny' && p.metadata.name !== 'sandbox')
  const v = evaluate(noDeny, nsLabels, endpoints.sandbox!, endpoints.internet!, 443, 'TCP')
  t.equal(v.allowed, true, 'without default-deny and the sandbox policy, the sandbox would reach the internet')
})
