/**
 * `cordon run` with `network: proxy` without root: the sandbox's only way out is the egress gate,
 * reached through a relay (lib/sandbox/relay.ts) from loopback inside a namespace of its own to
 * the engine's gate unix socket (`cordon engine --listen-unix PATH`). Pathname unix sockets are
 * not tied to a network namespace; nothing else leaves it.
 *
 *   cordon run (unprivileged)
 *     cordon-exec --die-with-parent --netns new      a user namespace (our uid mapped to itself)
 *       node userns.js                               and a network namespace with only lo, up
 *         relay 127.0.0.1:PORT -> gate socket        this process: namespaces only, no Landlock
 *         cordon-exec <the plan> -- CMD ARGS         the sandbox, in the same network namespace
 *
 * The launcher in the middle holds no secret: its environment is the spec alone, and the sandbox
 * gets the plan's scrubbed environment. The sandbox cannot reach it: the plan's Landlock scoping
 * (ABI >= 6) stops signals to it and abstract sockets, ptrace needs what the plan drops, and the
 * agent seccomp profile refuses AF_UNIX sockets. Killing `cordon run` kills both (die-with-parent).
 */
import { spawn as cpSpawn } from 'node:child_process'
import fs from 'node:fs'
import { fileURLToPath } from 'node:url'
import { resolve } from 'node:path'
import { helperPath, packageRoot } from '../kernel/addon.js'
import { helperArgv, HELPER_FAILED } from './argv.js'
import { waitChild } from './spawn.js'
import { startRelay } from './relay.js'
import { amendPlan, type Plan } from '../policy/index.js'

const SPEC_VAR = 'CORDON_USERNS_SPEC'

interface Spec {
  gateSocket: string
  port: number
  helper: string
  helperArgv: string[]
  cmd: string
  args: string[]
  env: Record<string, string>
  cwd: string
}

/** The launcher command: this file, compiled (dist/) or through tsx's loader (lib/, tests). */
function launcher(): string[] {
  const here = fileURLToPath(import.meta.url)
  if (!here.endsWith('.ts')) return [process.execPath, here]
  const loader = resolve(packageRoot(), 'node_modules', 'tsx', 'dist', 'loader.mjs')
  return [process.execPath, '--import', fs.existsSync(loader) ? `file://${loader}` : 'tsx', here]
}

/**
 * Run `cmd` confined by `plan` in a user + network namespace whose only way out is a relay to
 * `gateSocket`. The plan's network section is replaced (the sandbox stays in the launcher's
 * namespace); its proxy settings and Landlock port rule must name `port`.
 */
export function runThroughRelay(plan: Plan, cmd: string, args: string[], o: { gateSocket: string; port: number; cwd: string }): Promise<number> {
  let st: fs.Stats
  try {
    st = fs.statSync(o.gateSocket)
  } catch (e) {
    throw Object.assign(new Error(`gate socket ${o.gateSocket}: ${(e as NodeJS.ErrnoException).code}; start the engine with \`cordon engine --listen-unix ${o.gateSocket}\` (or pass --gate-socket)`), { exitCode: HELPER_FAILED })
  }
  if (!st.isSocket()) throw Object.assign(new Error(`gate socket ${o.gateSocket}: not a unix socket`), { exitCode: HELPER_FAILED })
  const spec: Spec = {
    gateSocket: resolve(o.gateSocket),
    port: o.port,
    helper: helperPath(),
    helperArgv: helperArgv(amendPlan(plan, { network: { mode: 'host' } })),
    cmd,
    args,
    env: plan.env,
    cwd: o.cwd,
  }
  const [node, ...entry] = launcher()
  const child = cpSpawn(helperPath(), ['--die-with-parent', '--netns', 'new', '--', node!, ...entry], {
    stdio: 'inherit',
    cwd: o.cwd,
    env: { [SPEC_VAR]: JSON.stringify(spec) }, // nothing else of cordon run's environment
  })
  return waitChild(child)
}

/** Inside the namespaces: start the relay, run the sandbox, exit with its status. */
async function main(): Promise<void> {
  const raw = process.env[SPEC_VAR]
  delete process.env[SPEC_VAR]
  if (!raw) {
    process.stderr.write(`cordon: ${SPEC_VAR} is not set: this launcher is started by \`cordon run\`\n`)
    process.exit(HELPER_FAILED)
  }
  const spec = JSON.parse(raw) as Spec
  let relay
  try {
    relay = await startRelay({ gateSocket: spec.gateSocket, listen: { host: '127.0.0.1', port: spec.port } })
  } catch (e) {
    process.stderr.write(`cordon: relay to the egress gate on 127.0.0.1:${spec.port}: ${(e as Error).message}\n`)
    process.exit(HELPER_FAILED)
  }
  const child = cpSpawn(spec.helper, ['--die-with-parent', ...spec.helperArgv, '--', spec.cmd, ...spec.args], { stdio: 'inherit', env: spec.env, cwd: spec.cwd })
  let status: number
  try {
    status = await waitChild(child)
  } catch (e) {
    process.stderr.write(`cordon: ${(e as Error).message}\n`)
    status = HELPER_FAILED
  }
  await relay.close()
  process.exit(status)
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) void main()
