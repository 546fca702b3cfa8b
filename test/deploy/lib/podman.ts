/**
 * Running the rendered Kubernetes manifests with `podman kube play` (podman 4.3, Debian 12), and
 * the few translations podman needs. Each translation is listed by adaptForPodman() so the test
 * prints exactly what differs from a cluster:
 *  - seccompProfile Localhost: podman 4.3 kube play ignores the field and reads only the
 *    deprecated annotation, with a single path segment; the same profile file is used.
 *  - Secret volumes: podman 4.3 kube play crashes on them (nil secrets manager in
 *    VolumeFromSecret); the Secret's data is mounted as a ConfigMap volume at the same path in
 *    the same pod only.
 *  - Services: podman has none. ClusterIPs are emulated kube-proxy style: DNAT rules in each
 *    client pod's network namespace (ClusterIP:port -> pod IP:targetPort).
 *  - Cluster DNS names (*.cordon.svc.cluster.local) used by engine/gateway: hostAliases to the
 *    ClusterIPs (what CoreDNS would answer).
 *  - NetworkPolicy: podman enforces none. For the sandbox pod only, its egress allow-list is
 *    compiled by the evaluator (netpol.ts) from the rendered policies into iptables rules in its
 *    network namespace (a stand-in for the CNI), so "no direct route" is checked for real there.
 *  - Namespace, ServiceAccount, DaemonSet: not run (no API server, no DaemonSets in podman).
 */
import { execFileSync, type ExecFileSyncOptions } from 'node:child_process'
import { podSpecOf, type Obj } from './k8s.js'

export function run(cmd: string, args: string[], opts: ExecFileSyncOptions = {}): string {
  try {
    return String(execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20, ...opts }))
  } catch (e) {
    const x = e as { stderr?: string; stdout?: string; status?: number }
    throw new Error(`${cmd} ${args.join(' ')} failed (exit ${x.status}): ${String(x.stderr ?? '').trim().slice(-2000)} ${String(x.stdout ?? '').trim().slice(-500)}`)
  }
}
export const podman = (...args: string[]) => run('podman', args).trim()

export interface Adapted {
  /** component -> the objects to play for it (ConfigMaps, PVCs, the Deployment) */
  byComponent: Map<string, Obj[]>
  /** what differs from a cluster, one line each */
  notes: string[]
  /** Service ClusterIP:port -> { component, targetPort number } */
  services: { name: string; clusterIP: string; port: number; component: string; targetPort: number }[]
}

export function adaptForPodman(objs: Obj[], opts: { seccompFlatName: (localhostProfile: string) => string }): Adapted {
  const notes: string[] = []
  const cms = new Map(objs.filter((o) => o.kind === 'ConfigMap').map((o) => [o.metadata.name, o]))
  const secrets = new Map(objs.filter((o) => o.kind === 'Secret').map((o) => [o.metadata.name, o]))
  const pvcs = new Map(objs.filter((o) => o.kind === 'PersistentVolumeClaim').map((o) => [o.metadata.name, o]))
  const byComponent = new Map<string, Obj[]>()
  const services: Adapted['services'] = []
  const deployments = objs.filter((o) => o.kind === 'Deployment')
  const compOf = (o: Obj) => o.spec.template.metadata.labels['app.kubernetes.io/component'] as string

  for (const s of objs.filter((o) => o.kind === 'Service')) {
    const d = deployments.find((x) => Object.entries(s.spec.selector).every(([k, v]) => x.spec.template.metadata.labels[k] === v))
    if (!d || !s.spec.clusterIP) continue
    for (const p of s.spec.ports) {
      const cp = podSpecOf(d)!.containers[0].ports.find((c: Obj) => c.name === p.targetPort || c.containerPort === p.targetPort)
      services.push({ name: s.metadata.name, clusterIP: s.spec.clusterIP, port: p.port, component: compOf(d), targetPort: cp.containerPort })
    }
  }
  const dnsAliases = [...new Set(services.map((s) => s.name))].map((name) => ({
    ip: services.find((s) => s.name === name)!.clusterIP,
    hostnames: [`${name}.cordon.svc.cluster.local`, `${name}.cordon.svc`, `${name}.cordon`],
  }))

  for (const d0 of deployments) {
    const d = structuredClone(d0)
    const comp = compOf(d)
    const spec = podSpecOf(d)!
    const out: Obj[] = []
    // seccomp: field -> annotation
    const sc = spec.securityContext?.seccompProfile ?? spec.containers[0].securityContext?.seccompProfile
    if (sc?.type === 'Localhost') {
      d.spec.template.metadata.annotations = { ...(d.spec.template.metadata.annotations ?? {}), 'seccomp.security.alpha.kubernetes.io/pod': `localhost/${opts.seccompFlatName(sc.localhostProfile)}` }
      notes.push(`${comp}: seccompProfile Localhost ${sc.localhostProfile} given to podman as the annotation (podman 4.3 reads only that); same profile file`)
    } else if (sc?.type === 'RuntimeDefault') {
      notes.push(`${comp}: seccompProfile RuntimeDefault = podman's default profile`)
    }
    if (spec.initContainers?.length) {
      // podman 4.3 removes init containers right after it thinks they exited and races with its
      // own state ("cannot remove container ... as it is running", seen here with a 1 s init
      // container). Run the init containers' scripts at the start of the main container instead:
      // same image, user and order; the main container also gets the init containers' mounts.
      const main = spec.containers[0]
      const scripts: string[] = []
      for (const ic of spec.initContainers) {
        if (ic.image !== main.image || ic.command?.[0] !== '/bin/sh' || ic.command?.[1] !== '-c') throw new Error(`${comp}: cannot fold init container ${ic.name} into ${main.name}`)
        scripts.push(`( ${ic.args.join('\n')} )`)
        for (const m of ic.volumeMounts ?? []) if (!main.volumeMounts.some((x: Obj) => x.mountPath === m.mountPath)) main.volumeMounts.push(m)
      }
      main.volumeMounts = main.volumeMounts.map((m: Obj) => (spec.initContainers.some((ic: Obj) => ic.volumeMounts?.some((x: Obj) => x.name === m.name && !x.readOnly)) ? { ...m, readOnly: false } : m))
      main.command = ['/bin/sh', '-c', `${scripts.join(' && ')} && exec /usr/local/bin/cordon "$@"`, 'cordon']
      delete spec.initContainers
      notes.push(`${comp}: init containers folded into the start of the main container (podman 4.3 races removing init containers)`)
    }
    // volumes
    for (const v of spec.volumes ?? []) {
      if (v.configMap) {
        const cm = cms.get(v.configMap.name)
        if (!cm) throw new Error(`${comp}: ConfigMap ${v.configMap.name} is not in the rendered set`)
        out.push(cm)
      } else if (v.secret) {
        const s = secrets.get(v.secret.secretName)
        if (!s) throw new Error(`${comp}: Secret ${v.secret.secretName} was not provided to the test`)
        const data: Record<string, string> = { ...(s.stringData ?? {}) }
        for (const [k, b64] of Object.entries((s.data ?? {}) as Record<string, string>)) data[k] = Buffer.from(b64, 'base64').toString('utf8')
        const items = v.secret.items as { key: string; path: string }[] | undefined
        const picked = items ? Object.fromEntries(items.map((i) => [i.path, data[i.key]!])) : data
        const name = `${comp}-secret-${v.name}`
        out.push({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name }, data: picked })
        v.configMap = { name }
        delete v.secret
        notes.push(`${comp}: Secret ${s.metadata.name} mounted as a ConfigMap volume of this pod only (podman 4.3 kube play crashes on Secret volumes)`)
      } else if (v.persistentVolumeClaim) {
        out.push(pvcs.get(v.persistentVolumeClaim.claimName)!)
      }
    }
    // podman 4.3 publishes every containerPort on the host (all addresses), which a cluster never
    // does: drop them (pods reach each other by pod IP; nothing here needs a host port).
    for (const c of [...(spec.initContainers ?? []), ...spec.containers]) {
      if (c.ports?.length) {
        delete c.ports
        notes.push(`${comp}: containerPorts not given to podman (podman 4.3 would publish them on the host)`)
      }
    }
    if (comp === 'engine' || comp === 'gateway') {
      spec.hostAliases = [...(spec.hostAliases ?? []), ...dnsAliases]
      notes.push(`${comp}: cluster DNS names of the Services given as hostAliases to their ClusterIPs (no CoreDNS in podman)`)
    }
    out.push(d)
    byComponent.set(comp, out)
  }
  notes.push('Services: ClusterIPs emulated by DNAT rules in each client pod\'s network namespace (kube-proxy style)')
  notes.push('NetworkPolicy: NOT enforced by podman; the sandbox pod\'s egress allow-list is compiled from the rendered policies into iptables rules in its namespace (CNI stand-in)')
  for (const o of objs) if (['Namespace', 'ServiceAccount', 'DaemonSet', 'NetworkPolicy'].includes(o.kind)) notes.push(`not run: ${o.kind}/${o.metadata.name}`)
  return { byComponent, notes: [...new Set(notes)], services }
}

/** PID of a pod's infra container (its network namespace). */
export function infraPid(pod: string): number {
  const infra = podman('pod', 'inspect', pod, '--format', '{{.InfraContainerID}}')
  return Number(podman('inspect', infra, '--format', '{{.State.Pid}}'))
}

export function podIp(pod: string, network: string): string {
  const infra = podman('pod', 'inspect', pod, '--format', '{{.InfraContainerID}}')
  return podman('inspect', infra, '--format', `{{(index .NetworkSettings.Networks "${network}").IPAddress}}`)
}

export function inNetns(pid: number, cmd: string, args: string[]): string {
  return run('nsenter', ['-t', String(pid), '-n', cmd, ...args])
}
