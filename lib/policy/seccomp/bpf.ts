/**
 * Classic BPF as seccomp uses it: the instruction encoding (struct sock_filter, 8 bytes, little
 * endian), an assembler with labels that turns out-of-range conditional jumps into long jumps,
 * and a disassembler. Written by hand: no Node library emits seccomp BPF.
 */
import type { Arch } from '../plan.js'

export const BPF = {
  LD_W_ABS: 0x20, // A = *(u32 *)(seccomp_data + k)
  ALU_AND_K: 0x54, // A &= k
  JA: 0x05, // pc += k
  JEQ_K: 0x15,
  JGT_K: 0x25,
  JGE_K: 0x35,
  JSET_K: 0x45,
  RET_K: 0x06,
} as const

export const RET = {
  KILL_PROCESS: 0x80000000,
  KILL_THREAD: 0x00000000,
  TRAP: 0x00030000,
  ERRNO: 0x00050000,
  TRACE: 0x7ff00000,
  LOG: 0x7ffc0000,
  ALLOW: 0x7fff0000,
} as const

export const AUDIT_ARCH: Record<Arch, number> = {
  x86_64: 0xc000003e, // EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
  aarch64: 0xc00000b7, // EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
}
export const X32_SYSCALL_BIT = 0x40000000
/** Most instructions a seccomp filter may have (BPF_MAXINSNS). */
export const BPF_MAXINSNS = 4096

/** offsets in struct seccomp_data */
export const SECCOMP_DATA = {
  nr: 0,
  arch: 4,
  ip_lo: 8,
  ip_hi: 12,
  argLo: (i: number) => 16 + 8 * i,
  argHi: (i: number) => 20 + 8 * i,
}

export type Label = { readonly id: number; readonly name?: string }

export type Insn =
  | { op: 'ld'; k: number }
  | { op: 'and'; k: number }
  | { op: 'ret'; k: number }
  | { op: 'jmp'; code: number; k: number; t: Label; f: Label }
  | { op: 'ja'; to: Label }
  | { op: 'label'; label: Label }

/** An assembler: emit instructions and labels, then assemble() resolves jumps. */
export class Assembler {
  private insns: Insn[] = []
  private n = 0
  label(name?: string): Label {
    return { id: this.n++, name }
  }
  bind(label: Label): void {
    this.insns.push({ op: 'label', label })
  }
  ld(k: number): void {
    this.insns.push({ op: 'ld', k })
  }
  and(k: number): void {
    this.insns.push({ op: 'and', k: k >>> 0 })
  }
  ret(k: number): void {
    this.insns.push({ op: 'ret', k: k >>> 0 })
  }
  jmp(code: number, k: number, t: Label, f: Label): void {
    this.insns.push({ op: 'jmp', code, k: k >>> 0, t, f })
  }
  ja(to: Label): void {
    this.insns.push({ op: 'ja', to })
  }

  /**
   * Lay out the program. Conditional jumps reach at most 255 instructions ahead; a jump whose
   * target is further is rewritten as `jcc +0/+1; ja T; ja F` (only the far leg needs the ja,
   * but both are emitted to keep the rewrite uniform). Expanding grows the program, which can
   * push other jumps out of range, so this repeats until nothing changes.
   */
  assemble(): Uint8Array {
    const long = new Set<number>() // indices (in this.insns) of jumps emitted in long form
    for (let round = 0; ; round++) {
      if (round > 64) throw new Error('seccomp BPF: jump layout did not converge')
      const pos = new Map<number, number>()
      let pc = 0
      this.insns.forEach((ins, i) => {
        if (ins.op === 'label') pos.set(ins.label.id, pc)
        else pc += ins.op === 'jmp' && long.has(i) ? 3 : 1
      })
      const total = pc
      const out: [number, number, number, number][] = []
      let grew = false
      pc = 0
      const at = (l: Label) => {
        const p = pos.get(l.id)
        if (p === undefined) throw new Error(`seccomp BPF: unbound label ${l.name ?? l.id}`)
        return p
      }
      this.insns.forEach((ins, i) => {
        switch (ins.op) {
          case 'label':
            return
          case 'ld':
            out.push([BPF.LD_W_ABS, 0, 0, ins.k])
            break
          case 'and':
            out.push([BPF.ALU_AND_K, 0, 0, ins.k])
            break
          case 'ret':
            out.push([BPF.RET_K, 0, 0, ins.k])
            break
          case 'ja': {
            const off = at(ins.to) - (pc + 1)
            if (off < 0) throw new Error('seccomp BPF: backward jump')
            out.push([BPF.JA, 0, 0, off])
            break
          }
          case 'jmp': {
            if (long.has(i)) {
              out.push([ins.code, 0, 1, ins.k])
              out.push([BPF.JA, 0, 0, at(ins.t) - (pc + 2)])
              out.push([BPF.JA, 0, 0, at(ins.f) - (pc + 3)])
              pc += 3
              return
            }
            const jt = at(ins.t) - (pc + 1)
            const jf = at(ins.f) - (pc + 1)
            if (jt < 0 || jf < 0) throw new Error('seccomp BPF: backward jump')
            if (jt > 255 || jf > 255) {
              long.add(i)
              grew = true
            }
            out.push([ins.code, Math.min(jt, 255), Math.min(jf, 255), ins.k])
            break
          }
        }
        pc++
      })
      if (grew) continue
      if (total !== out.length) throw new Error('seccomp BPF: layout mismatch')
      if (out.length > BPF_MAXINSNS)
        throw new Error(`seccomp BPF: the program has ${out.length} instructions; the kernel accepts at most ${BPF_MAXINSNS}`)
      const bytes = new Uint8Array(out.length * 8)
      const dv = new DataView(bytes.buffer)
      out.forEach(([code, jt, jf, k], j) => {
        dv.setUint16(j * 8, code, true)
        dv.setUint8(j * 8 + 2, jt)
        dv.setUint8(j * 8 + 3, jf)
        dv.setUint32(j * 8 + 4, k >>> 0, true)
      })
      return bytes
    }
  }
}

export interface SockFilter {
  code: number
  jt: number
  jf: number
  k: number
}

export function decode(prog: Uint8Array): SockFilter[] {
  if (prog.length % 8 !== 0) throw new Error('a BPF program is a multiple of 8 bytes')
  const dv = new DataView(prog.buffer, prog.byteOffset, prog.byteLength)
  const out: SockFilter[] = []
  for (let i = 0; i < prog.length; i += 8)
    out.push({ code: dv.getUint16(i, true), jt: dv.getUint8(i + 2), jf: dv.getUint8(i + 3), k: dv.getUint32(i + 4, true) })
  return out
}

export function retName(k: number): string {
  const action = (k & 0xffff0000) >>> 0
  const data = k & 0xffff
  switch (action) {
    case RET.KILL_PROCESS: return 'KILL_PROCESS'
    case RET.KILL_THREAD: return 'KILL_THREAD'
    case RET.TRAP: return `TRAP(${data})`
    case RET.ERRNO: return `ERRNO(${data})`
    case RET.TRACE: return `TRACE(${data})`
    case RET.LOG: return 'LOG'
    case RET.ALLOW: return 'ALLOW'
    default: return `0x${k.toString(16)}`
  }
}

function fieldName(k: number): string {
  if (k === 0) return 'nr'
  if (k === 4) return 'arch'
  if (k === 8) return 'ip.lo'
  if (k === 12) return 'ip.hi'
  if (k >= 16 && k < 64) return `args[${(k - 16) >> 3}].${k % 8 === 0 ? 'lo' : 'hi'}`
  return `?${k}`
}

/**
 * One instruction per line: `0005: jeq #0x65 jt 6 jf 8 ; ptrace`. Comments name seccomp_data
 * fields, syscall numbers (when A holds nr) and return actions.
 */
export function disassemble(prog: Uint8Array, arch: Arch, names?: Readonly<Record<string, number>>): string {
  const byNr = new Map<number, string>()
  if (names) for (const [n, v] of Object.entries(names)) if (!byNr.has(v)) byNr.set(v, n)
  const insns = decode(prog)
  // what the accumulator holds on entry to each instruction (jumps only go forward)
  const aIn: (string | undefined)[] = new Array(insns.length).fill(undefined)
  const flow = (to: number, v: string) => {
    if (to >= insns.length) return
    aIn[to] = aIn[to] === undefined || aIn[to] === v ? v : 'mixed'
  }
  insns.forEach((ins, pc) => {
    const a = ins.code === BPF.LD_W_ABS ? fieldName(ins.k) : ins.code === BPF.ALU_AND_K ? 'masked' : aIn[pc] ?? 'none'
    if (ins.code === BPF.RET_K) return
    if (ins.code === BPF.JA) return flow(pc + 1 + ins.k, a)
    if (ins.code === BPF.JEQ_K || ins.code === BPF.JGT_K || ins.code === BPF.JGE_K || ins.code === BPF.JSET_K) {
      flow(pc + 1 + ins.jt, a)
      return flow(pc + 1 + ins.jf, a)
    }
    flow(pc + 1, a)
  })
  const lines: string[] = []
  insns.forEach((ins, pc) => {
    const hex = (n: number) => `#0x${n.toString(16)}`
    const pcs = String(pc).padStart(4, '0')
    let text: string
    let note = ''
    const jump = (mn: string) => {
      text = `${mn.padEnd(4)} ${hex(ins.k).padEnd(12)} jt ${pc + 1 + ins.jt}  jf ${pc + 1 + ins.jf}`
      if (aIn[pc] === 'nr' && byNr.has(ins.k) && ins.code === BPF.JEQ_K) note = byNr.get(ins.k)!
      else if (aIn[pc] === 'nr' && ins.k === X32_SYSCALL_BIT) note = 'x32 syscall bit'
      else if (aIn[pc] === 'nr' && ins.code === BPF.JGE_K) note = `nr >= ${ins.k}${byNr.has(ins.k) ? ` (${byNr.get(ins.k)})` : ''}`
      else if (aIn[pc] === 'arch') note = ins.k === AUDIT_ARCH[arch] ? `AUDIT_ARCH_${arch.toUpperCase()}` : 'foreign arch'
    }
    switch (ins.code) {
      case BPF.LD_W_ABS:
        text = `ld   [${ins.k}]`
        note = fieldName(ins.k)
        break
      case BPF.ALU_AND_K:
        text = `and  ${hex(ins.k)}`
        break
      case BPF.JA:
        text = `ja   ${pc + 1 + ins.k}`
        break
      case BPF.JEQ_K: jump('jeq'); break
      case BPF.JGT_K: jump('jgt'); break
      case BPF.JGE_K: jump('jge'); break
      case BPF.JSET_K: jump('jset'); break
      case BPF.RET_K:
        text = `ret  ${hex(ins.k)}`
        note = retName(ins.k)
        break
      default:
        text = `.insn code=0x${ins.code.toString(16)} jt=${ins.jt} jf=${ins.jf} k=${hex(ins.k)}`
    }
    lines.push(`${pcs}: ${text!.padEnd(40)}${note ? `; ${note}` : ''}`.trimEnd())
  })
  return lines.join('\n') + '\n'
}
