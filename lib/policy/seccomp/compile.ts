/**
 * The seccomp compiler: an OCI runtime-spec seccomp profile -> a classic BPF program for one
 * architecture (x86_64 or aarch64). Pure. Hand-written because no Node library compiles seccomp
 * filters (libseccomp is C; binding it would put policy logic in native code).
 *
 * Program shape:
 *   1. A = arch; anything but the native AUDIT_ARCH -> ERRNO(deny errno)     (foreign arch)
 *   2. A = nr; on x86_64, nr >= 0x40000000 (the x32 ABI bit) -> ERRNO          (x32)
 *   3. a binary search on nr over the syscalls the profile names (jge splits, jeq leaves of up
 *      to 4); a syscall it does not name -> defaultAction
 *   4. one block per named syscall: entries WITH argument conditions first, then entries
 *      without, each in profile order; the first entry that matches decides; none ->
 *      defaultAction. Arguments are only loaded inside a block, so for every syscall whose
 *      result does not depend on arguments the kernel's seccomp action cache (Linux >= 5.11)
 *      skips the filter entirely.
 * The deny errno of steps 1-2 is the profile's defaultErrnoRet, else EPERM.
 *
 * Argument conditions: all conditions of one entry must hold (AND), except when an entry
 * names the same argument index more than once: then each condition is its own entry (OR),
 * as runc does (libseccomp cannot AND two conditions on one argument).
 * Values are 64-bit; comparisons are done on the high and low 32-bit words. Arguments the
 * kernel reads as 32-bit (THIRTY_TWO_BIT_ARGS) are compared on the low word only, and the
 * profile's value is truncated to 32 bits, so garbage in the high word cannot slip past a rule
 * the kernel would then apply to the truncated value.
 */
import type { Arch } from '../plan.js'
import { PolicyError } from '../errors.js'
import type { OciAction, OciArg, OciSeccompProfile, OciSyscall } from './oci.js'
import { Assembler, AUDIT_ARCH, BPF, RET, SECCOMP_DATA, X32_SYSCALL_BIT, disassemble as disasm, type Label } from './bpf.js'
import { SYSCALLS_X86_64 } from './syscalls-x86_64.js'
import { SYSCALLS_AARCH64 } from './syscalls-aarch64.js'

export const SYSCALL_TABLES: Record<Arch, Readonly<Record<string, number>>> = {
  x86_64: SYSCALLS_X86_64,
  aarch64: SYSCALLS_AARCH64,
}

const SCMP_ARCH: Record<Arch, string> = { x86_64: 'SCMP_ARCH_X86_64', aarch64: 'SCMP_ARCH_AARCH64' }

/**
 * Arguments that the kernel declares as int / unsigned int (or truncates to 32 bits), by
 * syscall name -> argument indices. Kept small: the arguments security rules look at.
 *   socket(int domain, int type, int protocol), socketpair(same), ioctl(unsigned int fd,
 *   unsigned int cmd, ...), personality(unsigned int), clone(flags: the kernel uses only the
 *   low 32 bits), setns(int fd, int nstype), prctl(int option, ...), fcntl(unsigned int fd,
 *   unsigned int cmd, ...), kill(pid_t, int sig), tgkill(pid_t, pid_t, int sig).
 */
export const THIRTY_TWO_BIT_ARGS: Readonly<Record<string, readonly number[]>> = {
  socket: [0, 1, 2],
  socketpair: [0, 1, 2],
  ioctl: [0, 1],
  personality: [0],
  clone: [0],
  setns: [0, 1],
  prctl: [0],
  fcntl: [0, 1],
  kill: [0, 1],
  tgkill: [0, 1, 2],
}

export const EPERM = 1

export interface SeccompCompileResult {
  program: Uint8Array
  /** names in the profile that this architecture does not have (skipped, never an error) */
  skipped: string[]
  /** entries skipped because their Docker-style includes/excludes do not apply here */
  inapplicable: number
}

function actionCode(action: OciAction, errno: number | undefined, profile: OciSeccompProfile): number {
  switch (action) {
    case 'SCMP_ACT_ALLOW': return RET.ALLOW
    case 'SCMP_ACT_ERRNO': return (RET.ERRNO | ((errno ?? profile.defaultErrnoRet ?? EPERM) & 0xffff)) >>> 0
    case 'SCMP_ACT_KILL_PROCESS': return RET.KILL_PROCESS
    case 'SCMP_ACT_KILL':
    case 'SCMP_ACT_KILL_THREAD': return RET.KILL_THREAD
    case 'SCMP_ACT_TRAP': return RET.TRAP
    case 'SCMP_ACT_LOG': return RET.LOG
  }
}

/** Docker's includes/excludes: caps are all dropped in cordon, minKernel is not checked. */
function applies(e: OciSyscall, arch: Arch): boolean {
  const scmp = SCMP_ARCH[arch]
  if (e.includes) {
    if (e.includes.arches && e.includes.arches.length && !e.includes.arches.some((a) => a === scmp || a === arch || (arch === 'x86_64' && a === 'amd64') || (arch === 'aarch64' && a === 'arm64'))) return false
    if (e.includes.caps && e.includes.caps.length) return false
  }
  if (e.excludes?.arches && e.excludes.arches.some((a) => a === scmp || a === arch || (arch === 'x86_64' && a === 'amd64') || (arch === 'aarch64' && a === 'arm64'))) return false
  return true
}

const lo32 = (v: number | bigint) => Number(BigInt(v) & 0xffffffffn)
const hi32 = (v: number | bigint) => Number((BigInt(v) >> 32n) & 0xffffffffn)

/**
 * Emit the checks for one condition: fall through when it holds, jump to `fail` otherwise.
 */
function emitCondition(asm: Assembler, c: OciArg, is32: boolean, fail: Label): void {
  const ok = asm.label('cond-ok')
  const words: { off: number; v: number; m: number }[] = []
  const value = c.op === 'SCMP_CMP_MASKED_EQ' ? c.valueTwo ?? 0 : c.value
  const mask = c.op === 'SCMP_CMP_MASKED_EQ' ? c.value : 0xffffffffffffffffn
  if (!is32) words.push({ off: SECCOMP_DATA.argHi(c.index), v: hi32(value), m: hi32(mask) })
  words.push({ off: SECCOMP_DATA.argLo(c.index), v: lo32(value), m: lo32(mask) })
  const last = words.length - 1
  words.forEach((w, i) => {
    const isLast = i === last
    const next = isLast ? ok : asm.label('cond-next-word')
    if (!(c.op === 'SCMP_CMP_MASKED_EQ' && w.m === 0)) asm.ld(w.off)
    switch (c.op) {
      case 'SCMP_CMP_EQ':
        asm.jmp(BPF.JEQ_K, w.v, next, fail)
        break
      case 'SCMP_CMP_NE':
        // holds as soon as one word differs
        asm.jmp(BPF.JEQ_K, w.v, isLast ? fail : next, ok)
        break
      case 'SCMP_CMP_MASKED_EQ':
        if ((w.v & ~w.m) !== 0) asm.ja(fail) // (arg & mask) can never equal a value with bits outside the mask
        else if (w.m === 0) { /* nothing of this word is looked at */ }
        else {
          if (w.m !== 0xffffffff) asm.and(w.m)
          asm.jmp(BPF.JEQ_K, w.v, next, fail)
        }
        break
      case 'SCMP_CMP_GT':
      case 'SCMP_CMP_GE':
      case 'SCMP_CMP_LT':
      case 'SCMP_CMP_LE': {
        // LT is "not GE" and LE is "not GT": the same jumps with the outcomes swapped
        const above = c.op === 'SCMP_CMP_GT' || c.op === 'SCMP_CMP_GE'
        const [whenAbove, whenBelow] = above ? [ok, fail] : [fail, ok]
        if (isLast) asm.jmp(c.op === 'SCMP_CMP_GT' || c.op === 'SCMP_CMP_LE' ? BPF.JGT_K : BPF.JGE_K, w.v, whenAbove, whenBelow)
        else {
          // a higher word decides unless it is equal; then the next word does
          const eq = asm.label()
          asm.jmp(BPF.JGT_K, w.v, whenAbove, eq)
          asm.bind(eq)
          asm.jmp(BPF.JEQ_K, w.v, next, whenBelow)
        }
        break
      }
    }
    if (!isLast) asm.bind(next)
  })
  asm.bind(ok)
}

/** Compile an OCI profile to BPF for `arch`, reporting names the arch lacks. */
export function compileSeccompDetailed(profile: OciSeccompProfile, arch: Arch): SeccompCompileResult {
  const table = SYSCALL_TABLES[arch]
  if (!table) throw new PolicyError({ field: 'arch', problem: `unsupported architecture ${String(arch)}`, hint: 'allowed: x86_64, aarch64' })
  if (profile.architectures && profile.architectures.length && !profile.architectures.includes(SCMP_ARCH[arch]))
    throw new PolicyError({ field: 'architectures', problem: `the profile does not cover ${SCMP_ARCH[arch]} (it lists ${profile.architectures.join(', ')})`,
      hint: `add ${SCMP_ARCH[arch]} to architectures` })
  const deny = (RET.ERRNO | ((profile.defaultErrnoRet ?? EPERM) & 0xffff)) >>> 0
  const dflt = actionCode(profile.defaultAction, undefined, profile)

  // group entries by syscall number, keeping the order of first mention
  type Rule = { args: OciArg[]; ret: number }
  const groups = new Map<number, { name: string; cond: Rule[]; plain: Rule[] }>()
  const skipped = new Set<string>()
  let inapplicable = 0
  for (const e of profile.syscalls ?? []) {
    if (!applies(e, arch)) {
      inapplicable++
      continue
    }
    const ret = actionCode(e.action, e.errnoRet, profile)
    const args = e.args ?? []
    const indices = args.map((a) => a.index)
    const sameIndexTwice = new Set(indices).size !== indices.length
    const variants: OciArg[][] = sameIndexTwice ? args.map((a) => [a]) : [args]
    for (const name of e.names) {
      const nr = table[name]
      if (nr === undefined) {
        skipped.add(name)
        continue
      }
      let g = groups.get(nr)
      if (!g) groups.set(nr, (g = { name, cond: [], plain: [] }))
      for (const v of variants) (v.length ? g.cond : g.plain).push({ args: v, ret })
    }
  }

  const asm = new Assembler()
  const archOk = asm.label('arch-ok')
  const denyArch = asm.label('deny-arch')
  asm.ld(SECCOMP_DATA.arch)
  asm.jmp(BPF.JEQ_K, AUDIT_ARCH[arch], archOk, denyArch)
  asm.bind(denyArch)
  asm.ret(deny)
  asm.bind(archOk)
  asm.ld(SECCOMP_DATA.nr)
  if (arch === 'x86_64') {
    const notX32 = asm.label('not-x32')
    const isX32 = asm.label('x32')
    asm.jmp(BPF.JGE_K, X32_SYSCALL_BIT, isX32, notX32)
    asm.bind(isX32)
    asm.ret(deny)
    asm.bind(notX32)
  }
  // dispatch on nr with a binary search (a few compares per syscall, however long the profile),
  // linear in leaves of up to 4; every syscall body follows the search tree
  // a syscall whose first applicable entry is unconditional jumps straight to a shared return
  const shared = new Map<number, Label>()
  const simple = (g: { cond: Rule[]; plain: Rule[] }) => g.cond.length === 0 && g.plain.length > 0
  const sorted = [...groups.entries()].sort((a, b) => a[0] - b[0]).map(([nr, g]) => {
    if (!simple(g)) return { nr, g, body: asm.label(`body-${g.name}`) }
    const ret = g.plain[0]!.ret
    if (!shared.has(ret)) shared.set(ret, asm.label(`ret-${ret}`))
    return { nr, g, body: shared.get(ret)! }
  })
  const tree = (lo: number, hi: number): void => {
    if (hi - lo <= 4) {
      for (let i = lo; i < hi; i++) {
        const next = asm.label('next')
        asm.jmp(BPF.JEQ_K, sorted[i]!.nr, sorted[i]!.body, next)
        asm.bind(next)
      }
      asm.ret(dflt)
      return
    }
    const mid = (lo + hi) >> 1
    const left = asm.label('lt')
    const right = asm.label('ge')
    asm.jmp(BPF.JGE_K, sorted[mid]!.nr, right, left)
    asm.bind(left)
    tree(lo, mid)
    asm.bind(right)
    tree(mid, hi)
  }
  tree(0, sorted.length)
  for (const [ret, label] of shared) {
    asm.bind(label)
    asm.ret(ret)
  }
  for (const { g, body } of sorted) {
    if (simple(g)) continue
    asm.bind(body)
    const is32 = new Set(THIRTY_TWO_BIT_ARGS[g.name] ?? [])
    for (const rule of [...g.cond, ...g.plain]) {
      const fail = asm.label('rule-fail')
      for (const c of rule.args) emitCondition(asm, c, is32.has(c.index), fail)
      asm.ret(rule.ret)
      asm.bind(fail)
      if (rule.args.length === 0) break // an unconditional entry ends the block
    }
    if (g.plain.length === 0) asm.ret(dflt)
  }
  return { program: asm.assemble(), skipped: [...skipped].sort(), inapplicable }
}

/** Compile an OCI profile to a seccomp BPF program (struct sock_filter[] bytes). */
export function compileSeccomp(profile: OciSeccompProfile, arch: Arch): Uint8Array {
  return compileSeccompDetailed(profile, arch).program
}

/** The program, one instruction per line, with syscall names for `arch`. */
export function disassemble(prog: Uint8Array, arch: Arch): string {
  return disasm(prog, arch, SYSCALL_TABLES[arch])
}
