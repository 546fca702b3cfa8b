/**
 * The agent sandbox's network for `cordon up`: one namespace per running system, prepared by
 * lib/sandbox/netns.ts (engineer E's wiring: a veth whose only route leads to the egress gate),
 * kept across agent restarts, recorded in state.json so a cleanup after a kill -9 of the
 * supervisor finds it: the namespace, the host-side veth, the iptables rules tagged with the
 * namespace name, and the engine registry entry naming the sandbox address.
 */
import { createHash } from 'node:crypto'
import { execFileSync } from 'node:child_process'
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { DEFAULT_REGISTRY, GATE_ADDRESS, prepareNetns, type PreparedNetns } from '../sandbox/netns.js'

export { GATE_ADDRESS, DEFAULT_REGISTRY }

/** A stable sandbox id per runtime dir: `up-<8 hex>` (namespace cordon-up-<8 hex>). */
export function sandboxId(runtimeDir: string): string {
  return `up-${createHash('sha256').update(runtimeDir).digest('hex').slice(0, 8)}`
}

export function prepareAgentNet(runtimeDir: string, gatePort: number): PreparedNetns {
  return prepareNetns({ id: sandboxId(runtimeDir), gatePort })
}

/** iptables rules carrying `--comment TAG`, as delete commands. */
function taggedRules(tag: string): string[][] {
  const out: string[][] = []
  for (const chain of ['INPUT', 'FORWARD']) {
    let text = ''
    try {
      text = execFileSync('iptables', ['-w', '5', '-S', chain], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
    } catch {
      continue
    }
    for (const line of text.split('\n')) {
      if (!line.startsWith('-A ') || !line.includes(`--comment ${tag}`)) continue
      out.push(['-D', ...line.slice(3).split(' ')])
    }
  }
  return out
}

/** Remove what prepareNetns made for `id`, without its cleanup closure (after a crash). */
export function removeAgentNet(id: string, registry = DEFAULT_REGISTRY): string[] {
  const name = `cordon-${id}`
  const done: string[] = []
  for (const r of taggedRules(name)) {
    try {
      execFileSync('iptables', ['-w', '5', ...r], { stdio: 'ignore' })
      done.push(`iptables ${r.join(' ')}`)
    } catch {
      /* gone */
    }
  }
  if (existsSync(`/run/netns/${name}`)) {
    try {
      execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' })
      done.push(`netns ${name}`)
    } catch {
      /* gone */
    }
  }
  try {
    for (const f of readdirSync(registry)) {
      const file = join(registry, f)
      try {
        if (readFileSync(file, 'utf8').trim() === id) {
          rmSync(file, { force: true })
          done.push(`registry ${file}`)
        }
      } catch {
        /* raced */
      }
    }
  } catch {
    /* no registry */
  }
  return done
}
