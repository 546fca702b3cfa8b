/**
 * `cordon policy check FILE` and `cordon policy explain FILE [--workspace DIR]`.
 * (The policy engine's `policy show|diff|reload` attach to the same `policy` command:
 * use policyCommand(program) to find or create it.)
 */
import type { Command } from 'commander'
import { PolicyError, compilePlan, disassemble, explainPlan, loadPolicy, loadProfile, planWarnings } from '../policy/index.js'
import type { KernelFeatures, Arch } from '../policy/plan.js'
import type { ResolvedPolicy } from '../policy/types.js'

/** The `policy` command, created once and shared by every area that adds subcommands to it. */
export function policyCommand(program: Command): Command {
  const found = program.commands.find((c) => c.name() === 'policy')
  if (found) return found
  return program.command('policy').description('validate, explain and (with a running engine) show, diff and reload policies')
}

interface Common {
  workspace?: string
  profile?: boolean
  abi?: string
  arch?: string
}

function load(file: string, o: Common): ResolvedPolicy {
  const opts = { workspace: o.workspace, cwd: process.cwd() }
  return o.profile ? loadProfile(file, opts) : loadPolicy(file, opts)
}

async function features(o: Common): Promise<KernelFeatures> {
  let f: KernelFeatures | null = null
  try {
    const k = (await import('../kernel/index.js')) as { probe: () => KernelFeatures }
    f = { ...k.probe() }
  } catch (e) {
    if (o.abi === undefined || o.arch === undefined)
      throw Object.assign(new Error(`cannot probe this kernel (${(e as Error).message}); pass --abi N and --arch x86_64|aarch64 to compile for a given kernel`), { exitCode: 2 })
  }
  const base: KernelFeatures = f ?? { arch: 'x86_64', landlockAbi: 0, seccomp: true, seccompTsync: true, userNamespaces: true, networkNamespaces: true, cgroupV2: true, isRoot: false }
  if (o.abi !== undefined) {
    const n = Number(o.abi)
    if (!Number.isInteger(n) || n < 0) throw Object.assign(new Error(`--abi ${o.abi}: must be a Landlock ABI number (0, 1, 2, ...)`), { exitCode: 2 })
    base.landlockAbi = n
  }
  if (o.arch !== undefined) {
    if (o.arch !== 'x86_64' && o.arch !== 'aarch64') throw Object.assign(new Error(`--arch ${o.arch}: allowed: x86_64, aarch64`), { exitCode: 2 })
    base.arch = o.arch as Arch
  }
  return base
}

function report(e: unknown): void {
  if (e instanceof PolicyError) {
    process.stderr.write(`${e.report}\n`)
    process.exitCode = 1
    return
  }
  throw e
}

export function register(program: Command): void {
  const policy = policyCommand(program)
  policy
    .command('check')
    .description('validate a policy file (schema, paths, seccomp profile) and compile it for this kernel; exit 1 with file:line errors')
    .argument('<file>', 'policy file (YAML or JSON), or a profile name with --profile')
    .option('--workspace <dir>', 'the workspace directory (default: the policy\'s filesystem.workspace)')
    .option('--profile', 'FILE is the name of a shipped profile (agent, ...)')
    .option('--abi <n>', 'compile for this Landlock ABI instead of this kernel\'s')
    .option('--arch <arch>', 'compile the seccomp filter for x86_64 or aarch64')
    .action(async (file: string, o: Common) => {
      try {
        const p = load(file, o)
        const plan = compilePlan(p, await features(o))
        process.stdout.write(`${p.source}: OK (Landlock ABI ${plan.abi}, ${plan.landlock?.paths.length ?? 0} path rules, seccomp ${plan.seccomp ? `${plan.seccomp.source} ${plan.seccomp.filter.length / 8} instructions` : 'none'}, network ${p.network.mode})\n`)
        for (const l of plan.lost) process.stdout.write(`  lost on this kernel: ${l}\n`)
        for (const w of planWarnings(plan)) process.stdout.write(`  warning: ${w}\n`)
      } catch (e) {
        report(e)
      }
    })
  policy
    .command('explain')
    .description('print the compiled plan in words: paths and rights, syscall rules, network, environment, lost rights')
    .argument('<file>', 'policy file (YAML or JSON), or a profile name with --profile')
    .option('--workspace <dir>', 'the workspace directory (default: the policy\'s filesystem.workspace)')
    .option('--profile', 'FILE is the name of a shipped profile (agent, ...)')
    .option('--abi <n>', 'compile for this Landlock ABI instead of this kernel\'s')
    .option('--arch <arch>', 'compile the seccomp filter for x86_64 or aarch64')
    .option('--bpf', 'also print the seccomp BPF program, one instruction per line')
    .option('--json', 'print the plan as JSON (filter as base64)')
    .action(async (file: string, o: Common & { bpf?: boolean; json?: boolean }) => {
      try {
        const p = load(file, o)
        const plan = compilePlan(p, await features(o))
        if (o.json) {
          const j = { ...plan, seccomp: plan.seccomp && { ...plan.seccomp, filter: Buffer.from(plan.seccomp.filter).toString('base64') } }
          process.stdout.write(JSON.stringify(j, null, 2) + '\n')
          return
        }
        process.stdout.write(explainPlan(plan, p))
        if (o.bpf && plan.seccomp) process.stdout.write(`\nSeccomp BPF (${plan.seccomp.arch})\n${disassemble(plan.seccomp.filter, plan.seccomp.arch)}`)
      } catch (e) {
        report(e)
      }
    })
}
