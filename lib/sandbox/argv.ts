/**
 * The plan serialized as cordon-exec options (native/cordon-exec.c documents them). Pure: no
 * decisions, no I/O. The helper applies the options in its own fixed order.
 */
import type { Plan } from '../policy/plan.js'

export function helperArgv(plan: Plan): string[] {
  const a: string[] = []
  for (const d of plan.mkdirs) a.push('--mkdir', d)
  for (const r of plan.rlimits) a.push('--rlimit', `${r.resource}=${r.soft ?? 'inf'}:${r.hard ?? 'inf'}`)
  switch (plan.network.mode) {
    case 'none':
      a.push('--netns', 'new')
      break
    case 'join':
      a.push('--netns-path', plan.network.path)
      break
    case 'host':
      break
  }
  if (plan.privateTmp) a.push('--private-tmp', plan.privateTmp)
  if (plan.dropCapabilities) a.push('--drop-caps')
  const ll = plan.landlock
  if (ll) {
    a.push('--ll-fs', String(ll.handledFs), '--ll-net', String(ll.handledNet), '--ll-scope', String(ll.scoped))
    if (ll.restrictFlags) a.push('--ll-flags', String(ll.restrictFlags))
    for (const p of ll.paths) a.push(p.optional ? '--ll-path-opt' : '--ll-path', `${p.access}:${p.path}`)
    for (const p of ll.ports) a.push('--ll-port', `${p.access}:${p.port}`)
  }
  if (plan.seccomp) a.push('--seccomp', Buffer.from(plan.seccomp.filter.buffer, plan.seccomp.filter.byteOffset, plan.seccomp.filter.byteLength).toString('hex'))
  return a
}

/** The helper's exit status when it refused to run the program (it printed why on stderr). */
export const HELPER_FAILED = 125
