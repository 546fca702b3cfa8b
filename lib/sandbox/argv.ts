/**
 * The plan serialized as cordon-exec options (native/cordon-exec.c documents them). Pure: no
 * decisions, no I/O. The helper applies the options in its own fixed order.
 */
import type { Plan } from '../policy/plan.js'

const memo = new WeakMap<Plan, readonly string[]>()

/** helperArgv, computed once per plan object (spawn() reuses cached plans; the seccomp hex and
 * the rule list cost a little on every spawn otherwise). Plans are never mutated after compile. */
export function helperArgvCached(plan: Plan): readonly string[] {
  let a = memo.get(plan)
  if (!a) memo.set(plan, (a = Object.freeze(helperArgv(plan))))
  return a
}

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
  const ll0 = plan.landlock
  if (plan.privateTmp) {
    a.push('--private-tmp', plan.privateTmp)
    // Rule paths under the host's /tmp (e.g. a workspace there) would vanish under the private
    // /tmp: the helper bind-mounts them back at the same path (outermost ones only).
    const under = (p: string, dir: string) => p.startsWith(dir.endsWith('/') ? dir : dir + '/')
    const cands = [...new Set((ll0?.paths ?? []).map((r) => r.path))].filter(
      (p) => under(p, '/tmp') && p !== plan.privateTmp && !under(p, plan.privateTmp!),
    )
    const outer = cands.filter((p) => !cands.some((q) => q !== p && under(p, q)))
    for (const p of outer.sort()) a.push('--keep-path', p)
  }
  if (plan.hideProcesses) a.push(plan.hideProcessesBestEffort ? '--hide-processes-try' : '--hide-processes')
  if (plan.dropCapabilities) a.push('--drop-caps')
  const ll = plan.landlock
  if (ll) {
    a.push('--ll-fs', String(ll.handledFs), '--ll-net', String(ll.handledNet), '--ll-scope', String(ll.scoped))
    if (ll.restrictFlags) a.push('--ll-flags', String(ll.restrictFlags))
    for (const p of ll.paths) a.push(p.optional ? '--ll-path-opt' : '--ll-path', `${p.access}:${p.path}`)
    if (plan.privateTmp && !ll.paths.some((p) => p.path === '/tmp')) {
      // The private directory appears at /tmp; Landlock sees it through that mount, so /tmp gets
      // exactly the rights the plan gives the directory itself (from the rules covering it).
      let access = 0
      for (const r of ll.paths)
        if (r.path === plan.privateTmp || r.path === '/' || plan.privateTmp.startsWith(r.path + '/')) access |= r.access
      if (access) a.push('--ll-path', `${access}:/tmp`)
    }
    for (const p of ll.ports) a.push('--ll-port', `${p.access}:${p.port}`)
  }
  if (plan.seccomp) a.push('--seccomp', Buffer.from(plan.seccomp.filter.buffer, plan.seccomp.filter.byteOffset, plan.seccomp.filter.byteLength).toString('hex'))
  return a
}

/** The helper's exit status when it refused to run the program (it printed why on stderr). */
export const HELPER_FAILED = 125
