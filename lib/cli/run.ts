/**
 * `cordon run` (run a command confined, exit with its status) and `cordon doctor` (what this
 * kernel can enforce, and what a policy would lose here).
 */
import type { Command } from 'commander'
import { resolve } from 'node:path'
import { loadPolicy, compilePlan, amendPlan, PolicyError } from '../policy/index.js'
import { doctor, probe, type DoctorReport } from '../kernel/probe.js'
import { runPlan } from '../sandbox/spawn.js'
import { ensureGateAddress, prepareNetns, proxyEnvFor, GATE_ADDRESS } from '../sandbox/netns.js'
import { runThroughRelay } from '../sandbox/userns.js'

interface RunOpts { policy?: string; profile?: string; workspace?: string; gatePort?: string; gateSocket?: string }

/** The port `cordon engine` (and `cordon up`) serves the egress gate on, at 169.254.77.1. */
export const DEFAULT_GATE_PORT = 3128

function policyInput(o: { policy?: string; profile?: string }): string | object {
  if (o.policy && o.profile) throw Object.assign(new Error('use either --policy FILE or --profile NAME, not both'), { exitCode: 2 })
  if (o.policy) return resolve(o.policy)
  if (o.profile) return { extends: o.profile }
  return {}
}

export async function runCommand(cmd: string, args: string[], o: RunOpts): Promise<number> {
  const workspace = resolve(o.workspace ?? process.cwd())
  const policy = loadPolicy(policyInput(o), { workspace, cwd: process.cwd() })
  const features = probe()
  if (policy.network.mode !== 'proxy' || policy.network.namespace === 'current') {
    // none / host, or a pod's own namespace (confined by the cluster; Landlock limits TCP connect
    // to network.connect and the gate port)
    const gatePorts = policy.network.mode === 'proxy' && o.gatePort !== undefined ? [Number(o.gatePort)] : []
    const plan = compilePlan(policy, features, { env: process.env, gatePorts })
    for (const l of plan.lost) process.stderr.write(`cordon: not enforced on this kernel: ${l}\n`)
    return runPlan(plan, cmd, args, { cwd: process.cwd(), dieWithParent: true })
  }
  // Proxy mode: the sandbox gets a namespace whose only route leads to the egress gate of a
  // running `cordon engine` (lib/sandbox/netns.ts), and Landlock (ABI >= 4) limits its TCP
  // connect() to the gate's port.
  const gatePort = Number(o.gatePort ?? DEFAULT_GATE_PORT)
  if (!Number.isInteger(gatePort) || gatePort < 1 || gatePort > 65535) {
    throw Object.assign(new Error(`--gate-port ${o.gatePort}: not a TCP port (1-65535)`), { exitCode: 2 })
  }
  const gateSocket = o.gateSocket ?? process.env.CORDON_GATE_SOCKET
  // Without root (or when asked): a user + network namespace with only loopback, where a relay on
  // 127.0.0.1:<gate port> carries connections to the engine's gate unix socket (lib/sandbox/userns.ts)
  const relayed = !features.isRoot || gateSocket !== undefined
  if (relayed && gateSocket === undefined) {
    throw Object.assign(new Error(
      `${policy.source}: network: proxy without root needs the engine's gate unix socket: start the engine with ` +
      `\`cordon engine --listen-unix PATH\` and pass \`--gate-socket PATH\` (or set CORDON_GATE_SOCKET); ` +
      `as root, cordon run uses a veth to the gate on ${GATE_ADDRESS} instead`), { exitCode: 125 })
  }
  const compiled = compilePlan(policy, features, { env: process.env, gatePorts: [gatePort] })
  for (const l of compiled.lost) process.stderr.write(`cordon: not enforced on this kernel: ${l}\n`)
  if (relayed) {
    const plan = amendPlan(compiled, { env: { ...compiled.env, ...proxyEnvFor({ host: '127.0.0.1', port: gatePort }) } })
    return runThroughRelay(plan, cmd, args, { gateSocket: gateSocket!, port: gatePort, cwd: process.cwd() })
  }
  ensureGateAddress()
  const ns = prepareNetns({ id: `run-${process.pid}`, gatePort })
  try {
    const plan = amendPlan(compiled, { network: { mode: 'join', path: ns.netnsPath }, env: { ...compiled.env, ...ns.proxyEnv } })
    return await runPlan(plan, cmd, args, { cwd: process.cwd(), dieWithParent: true })
  } finally {
    ns.cleanup()
  }
}

function yesNo(b: boolean | null): string {
  return b === null ? 'unknown' : b ? 'yes' : 'no'
}

export function formatDoctor(r: DoctorReport): string {
  const f = r.features
  const ll = r.landlock
  const lines = [
    `kernel        ${r.kernel} (${f.arch})`,
    `landlock      ${ll.abi === 0 ? 'absent' : `ABI ${ll.abi}`}`,
  ]
  if (ll.abi > 0) {
    lines.push(`  filesystem  ${ll.fs.join(', ')}`)
    lines.push(`  network     ${ll.net.length ? ll.net.join(', ') : 'none (needs ABI 4)'}`)
    lines.push(`  scoping     ${ll.scopes.length ? ll.scopes.join(', ') : 'none (needs ABI 6)'}`)
    lines.push(`  log flags   ${yesNo(ll.logFlags)}`)
    lines.push(`  all-thread restrict (TSYNC) ${yesNo(ll.tsync)}${ll.tsync ? '' : ' — lock() re-executes the process'}`)
    if (ll.missing.length) lines.push(`  not here    ${ll.missing.join(', ')}`)
  }
  lines.push(
    `seccomp       ${yesNo(f.seccomp)} (filter TSYNC ${yesNo(f.seccompTsync)})`,
    `user ns       ${yesNo(f.userNamespaces)}`,
    `network ns    ${yesNo(f.networkNamespaces)}${r.networkNamespaceWorks === null ? '' : ` (tried: ${r.networkNamespaceWorks ? 'works' : 'FAILED'})`}`,
    `cgroup v2     ${yesNo(f.cgroupV2)}`,
    `root          ${yesNo(f.isRoot)}`,
    `helper        ${r.helper ?? 'NOT FOUND'}`,
  )
  if (r.addonError) lines.push(`addon         ${r.addonError}`)
  for (const n of r.notes) lines.push(`note: ${n}`)
  return lines.join('\n') + '\n'
}

export function register(program: Command): void {
  program
    .command('run')
    .description('run a command confined by a policy (default: the agent profile with the current directory as workspace); exits with its status, 128+signal when killed, 125 when cordon refused')
    .option('--policy <file>', 'policy file (YAML or JSON)')
    .option('--profile <name>', 'a shipped profile (profiles/<name>.yaml), e.g. agent')
    .option('--workspace <dir>', 'read-write workspace (default: the current directory)')
    .option('--gate-port <port>', `with network: proxy, the port of the running engine's egress gate on 169.254.77.1 (default ${DEFAULT_GATE_PORT}); with --gate-socket, the relay's port on the sandbox's loopback`)
    .option('--gate-socket <path>', "with network: proxy, reach the engine through its gate unix socket (`cordon engine --listen-unix PATH`) via a relay in the sandbox's own user + network namespace: the way without root (default $CORDON_GATE_SOCKET)")
    .argument('<command>', 'the program to run (put `--` before it)')
    .argument('[args...]', 'its arguments')
    .action(async (cmd: string, args: string[], o: RunOpts) => {
      try {
        process.exitCode = await runCommand(cmd, args, o)
      } catch (err) {
        if (err instanceof PolicyError) throw Object.assign(err, { exitCode: 125 })
        const e = err as NodeJS.ErrnoException & { exitCode?: number }
        if (e.exitCode === undefined) e.exitCode = 125
        throw e
      }
    })

  program
    .command('doctor')
    .description('show what this kernel can enforce (Landlock ABI and rights, seccomp, TSYNC, namespaces, cgroup v2) and what a policy would lose here')
    .option('--policy <file>', 'also compile this policy and list what it would lose on this kernel')
    .option('--json', 'machine-readable output')
    .action((o: { policy?: string; json?: boolean }) => {
      const r = doctor()
      let policyReport: { source: string; ok: boolean; lost: string[]; error?: string } | undefined
      if (o.policy) {
        const source = resolve(o.policy)
        try {
          const p = loadPolicy(source, { cwd: process.cwd() })
          const plan = compilePlan(p, r.features, { env: process.env })
          policyReport = { source, ok: true, lost: plan.lost }
        } catch (err) {
          if (!(err instanceof PolicyError)) throw err
          policyReport = { source, ok: false, lost: [], error: err.message }
        }
      }
      if (o.json) {
        process.stdout.write(JSON.stringify({ ...r, policy: policyReport }, null, 2) + '\n')
      } else {
        process.stdout.write(formatDoctor(r))
        if (policyReport) {
          process.stdout.write(`\npolicy ${policyReport.source}: `)
          if (!policyReport.ok) process.stdout.write(`would REFUSE to start here:\n  ${policyReport.error}\n`)
          else if (!policyReport.lost.length) process.stdout.write('fully enforceable on this kernel\n')
          else process.stdout.write(`runs, but loses:\n${policyReport.lost.map((l) => `  - ${l}`).join('\n')}\n`)
        }
      }
      if (policyReport && !policyReport.ok) process.exitCode = 1
    })
}
