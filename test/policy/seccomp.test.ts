// The seccomp compiler: generated syscall numbers, the agent profile run through a classic BPF
// interpreter against seccomp_data samples, every OCI operator against a BigInt reference,
// long jumps, and a disassembly snapshot.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { execFileSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import {
  compileSeccomp, compileSeccompDetailed, disassemble, loadSeccompProfile, SYSCALL_TABLES, PolicyError,
  parseOciProfile,
} from '../../lib/policy/index.js'
import type { OciSeccompProfile, OciOp } from '../../lib/policy/index.js'

const here = path.dirname(fileURLToPath(import.meta.url))
const root = path.resolve(here, '../..')

// ---- a classic BPF interpreter (the subset seccomp allows) ----
const AUDIT_ARCH_X86_64 = 0xc000003e
const AUDIT_ARCH_AARCH64 = 0xc00000b7
const AUDIT_ARCH_I386 = 0x40000003
interface Data { nr: number; arch: number; args?: (number | bigint)[] }
function run(prog: Uint8Array, d: Data): number {
  const mem = Buffer.alloc(64)
  mem.writeInt32LE(d.nr | 0, 0)
  mem.writeUInt32LE(d.arch >>> 0, 4)
  mem.writeBigUInt64LE(0x401000n, 8)
  ;(d.args ?? []).forEach((a, i) => mem.writeBigUInt64LE(BigInt.asUintN(64, BigInt(a)), 16 + 8 * i))
  const dv = new DataView(prog.buffer, prog.byteOffset, prog.byteLength)
  const n = prog.length / 8
  let A = 0
  for (let pc = 0, steps = 0; pc < n; pc++, steps++) {
    if (steps > 5000) throw new Error('runaway')
    const code = dv.getUint16(pc * 8, true)
    const jt = dv.getUint8(pc * 8 + 2)
    const jf = dv.getUint8(pc * 8 + 3)
    const k = dv.getUint32(pc * 8 + 4, true)
    switch (code) {
      case 0x20: // ld w abs
        if (k % 4 !== 0 || k + 4 > 64) throw new Error(`bad load offset ${k} at ${pc}`)
        A = mem.readUInt32LE(k)
        break
      case 0x54: A = (A & k) >>> 0; break // and k
      case 0x05: pc += k; break // ja
      case 0x15: pc += A === k ? jt : jf; break // jeq
      case 0x25: pc += A > k ? jt : jf; break // jgt
      case 0x35: pc += A >= k ? jt : jf; break // jge
      case 0x45: pc += (A & k) !== 0 ? jt : jf; break // jset
      case 0x06: return k // ret k
      default: throw new Error(`unknown opcode 0x${code.toString(16)} at ${pc}`)
    }
  }
  throw new Error('fell off the end of the program')
}
const ALLOW = 0x7fff0000
const ERRNO = (e: number) => (0x00050000 | e) >>> 0
const EPERM = ERRNO(1)

t.test('generated syscall tables match known numbers', async (t) => {
  const x = SYSCALL_TABLES.x86_64
  const a = SYSCALL_TABLES.aarch64
  t.equal(x.read, 0)
  t.equal(x.ptrace, 101)
  t.equal(x.io_uring_setup, 425)
  t.equal(x.landlock_create_ruleset, 444)
  t.equal(x.getpid, 39)
  t.equal(x.clone3, 435)
  t.equal(a.ptrace, 117)
  t.equal(a.io_uring_setup, 425)
  t.equal(a.openat, 56)
  t.equal(a.getpid, 172)
  t.equal(a.fstat, 80, 'the __NR3264 aliases resolve to their 64-bit names')
  t.equal(a.newfstatat, 79)
  t.equal(a.renameat, 38, '__ARCH_WANT_RENAMEAT is set for arm64')
  t.equal(a.open, undefined, 'aarch64 has no open()')
  t.equal(a.fcntl64, undefined, 'no 32-bit aliases on a 64-bit arch')
  t.equal(a.arch_specific_syscall, undefined, 'range markers are not syscalls')
  t.equal(x.open_tree_attr, 467, 'supplement adds syscalls newer than the headers')
  // the committed files are what the script generates from this machine's headers
  const out = execFileSync(process.execPath, [path.join(root, 'scripts/gen-syscalls.mjs'), '--check'], { encoding: 'utf8' })
  t.equal(out, '', 'gen-syscalls --check: committed tables are up to date')
})

t.test('agent profile on x86_64, through the interpreter', async (t) => {
  const { profile } = loadSeccompProfile('agent')
  const r = compileSeccompDetailed(profile, 'x86_64')
  const prog = r.program
  const X = SYSCALL_TABLES.x86_64
  const call = (name: string, ...args: (number | bigint)[]) => run(prog, { nr: X[name]!, arch: AUDIT_ARCH_X86_64, args })
  t.same(r.skipped, [], 'every name in the agent profile exists on x86_64')
  t.equal(call('getpid'), ALLOW, 'getpid allowed')
  t.equal(call('read', 0, 0, 10), ALLOW, 'read allowed')
  t.equal(call('execve'), ALLOW, 'execve allowed')
  for (const n of ['ptrace', 'process_vm_readv', 'mount', 'umount2', 'pivot_root', 'unshare', 'setns', 'bpf', 'perf_event_open',
    'userfaultfd', 'keyctl', 'add_key', 'io_uring_setup', 'io_uring_enter', 'kexec_load', 'init_module', 'finit_module',
    'open_by_handle_at', 'iopl', 'ioperm', 'reboot', 'swapon', 'acct', 'quotactl', 'syslog', 'fsopen', 'move_mount', 'open_tree'])
    t.equal(call(n), EPERM, `${n} -> EPERM`)
  t.equal(call('clone3'), ERRNO(38), 'clone3 -> ENOSYS so libc falls back to clone')
  // x32 and foreign architectures
  t.equal(run(prog, { nr: 0x40000000 | X.getpid!, arch: AUDIT_ARCH_X86_64 }), EPERM, 'x32 getpid -> EPERM')
  t.equal(run(prog, { nr: 0x40000000 | X.ptrace!, arch: AUDIT_ARCH_X86_64 }), EPERM, 'x32 ptrace -> EPERM')
  t.equal(run(prog, { nr: 20, arch: AUDIT_ARCH_I386 }), EPERM, 'i386 (int 0x80) -> EPERM')
  t.equal(run(prog, { nr: X.getpid!, arch: AUDIT_ARCH_AARCH64 }), EPERM, 'foreign arch -> EPERM')
  // clone namespace flags (SIGCHLD = 17)
  t.equal(call('clone', 17), ALLOW, 'plain fork-style clone allowed')
  t.equal(call('clone', 0x003d0f00), ALLOW, 'pthread_create-style clone allowed')
  for (const [name, bit] of [['NEWNS', 0x20000], ['NEWCGROUP', 0x2000000], ['NEWUTS', 0x4000000], ['NEWIPC', 0x8000000],
    ['NEWUSER', 0x10000000], ['NEWPID', 0x20000000], ['NEWNET', 0x40000000]] as const)
    t.equal(call('clone', bit | 17), EPERM, `clone(CLONE_${name}) -> EPERM`)
  t.equal(call('clone', (0xdeadn << 32n) | 0x10000011n), EPERM, 'clone(CLONE_NEWUSER) with high garbage -> EPERM')
  // socket
  t.equal(call('socket', 2, 1, 0), ALLOW, 'socket(AF_INET, SOCK_STREAM)')
  t.equal(call('socket', 10, 2 | 0x80000, 0), ALLOW, 'socket(AF_INET6, SOCK_DGRAM|SOCK_CLOEXEC)')
  t.equal(call('socket', 17, 3, 0), EPERM, 'socket(AF_PACKET) -> EPERM')
  t.equal(call('socket', (1n << 32n) | 17n, 2, 0), EPERM, 'socket(AF_PACKET | garbage<<32) -> EPERM (32-bit compare)')
  t.equal(call('socket', 2, 3, 1), EPERM, 'socket(AF_INET, SOCK_RAW) -> EPERM')
  t.equal(call('socket', 2, 3 | 0x80000 | 0x800, 1), EPERM, 'socket(AF_INET, SOCK_RAW|SOCK_CLOEXEC|SOCK_NONBLOCK) -> EPERM')
  t.equal(call('socket', 2, (0xffffffffn << 32n) | 3n, 1), EPERM, 'SOCK_RAW with high garbage -> EPERM')
  t.equal(call('socket', 1, 1, 0), EPERM, 'socket(AF_UNIX) -> EPERM')
  t.equal(call('socketpair', 1, 1, 0), ALLOW, 'socketpair(AF_UNIX) allowed (child-process plumbing)')
  t.equal(call('socket', 16, 3, 0), ALLOW, 'socket(AF_NETLINK, NETLINK_ROUTE) allowed (getaddrinfo/getifaddrs)')
  t.equal(call('socket', 16, 3, 9), EPERM, 'socket(AF_NETLINK, NETLINK_AUDIT) -> EPERM')
  t.equal(call('socket', 16, 3, 4), EPERM, 'socket(AF_NETLINK, NETLINK_SOCK_DIAG) -> EPERM')
  t.equal(call('socket', 16, 3 | 0x80000, (1n << 32n) | 0n), ALLOW, 'NETLINK_ROUTE with high garbage in protocol is still NETLINK_ROUTE to the kernel')
  t.equal(call('socket', 10, 3, 58), EPERM, 'socket(AF_INET6, SOCK_RAW, ICMPV6) -> EPERM')
  // ioctl
  t.equal(call('ioctl', 0, 0x5401, 0), ALLOW, 'ioctl(TCGETS) allowed')
  t.equal(call('ioctl', 0, 0x5412, 0), EPERM, 'ioctl(TIOCSTI) -> EPERM')
  t.equal(call('ioctl', 0, (1n << 32n) | 0x5412n, 0), EPERM, 'ioctl(TIOCSTI | garbage<<32) -> EPERM (cmd is 32-bit)')
  t.equal(call('ioctl', 0, 0x541c, 0), EPERM, 'ioctl(TIOCLINUX) -> EPERM')
  // personality
  t.equal(call('personality', 0), ALLOW, 'personality(PER_LINUX)')
  t.equal(call('personality', 0xffffffff), ALLOW, 'personality(query)')
  t.equal(call('personality', 8), ALLOW, 'personality(PER_LINUX32)')
  t.equal(call('personality', 0x0040000), EPERM, 'personality(ADDR_NO_RANDOMIZE) -> EPERM')
  t.equal(call('personality', 0x0400000), EPERM, 'personality(READ_IMPLIES_EXEC) -> EPERM')
})

t.test('agent profile on aarch64', async (t) => {
  const { profile } = loadSeccompProfile('agent')
  const r = compileSeccompDetailed(profile, 'aarch64')
  const A = SYSCALL_TABLES.aarch64
  t.ok(r.skipped.includes('iopl') && r.skipped.includes('modify_ldt'), `x86-only names are skipped and reported: ${r.skipped.join(', ')}`)
  const call = (name: string, ...args: (number | bigint)[]) => run(r.program, { nr: A[name]!, arch: AUDIT_ARCH_AARCH64, args })
  t.equal(call('getpid'), ALLOW)
  t.equal(call('ptrace'), EPERM)
  t.equal(call('io_uring_setup'), EPERM)
  t.equal(call('clone', 0x10000000 | 17), EPERM)
  t.equal(call('socket', 17, 3, 0), EPERM)
  t.equal(run(r.program, { nr: A.getpid!, arch: AUDIT_ARCH_X86_64 }), EPERM, 'x86_64 syscalls into an aarch64 filter -> EPERM')
  t.notOk(/x32/.test(disassemble(r.program, 'aarch64')), 'no x32 check on aarch64')
})

t.test('every OCI operator matches a 64-bit reference, on hi and lo words', async (t) => {
  const ops: OciOp[] = ['SCMP_CMP_EQ', 'SCMP_CMP_NE', 'SCMP_CMP_LT', 'SCMP_CMP_LE', 'SCMP_CMP_GE', 'SCMP_CMP_GT', 'SCMP_CMP_MASKED_EQ']
  const M = (1n << 64n) - 1n
  const pivots = [0n, 1n, 0x7fffffffn, 0xffffffffn, 0x100000000n, 0x1_0000_0005n, 0xffff_ffff_0000_0000n, M]
  const samples = new Set<bigint>()
  for (const p of pivots) for (const d of [-1n, 0n, 1n]) samples.add(BigInt.asUintN(64, p + d))
  samples.add(0xdead_beef_0000_0001n)
  const ref = (op: OciOp, a: bigint, v: bigint, v2: bigint) => {
    switch (op) {
      case 'SCMP_CMP_EQ': return a === v
      case 'SCMP_CMP_NE': return a !== v
      case 'SCMP_CMP_LT': return a < v
      case 'SCMP_CMP_LE': return a <= v
      case 'SCMP_CMP_GE': return a >= v
      case 'SCMP_CMP_GT': return a > v
      case 'SCMP_CMP_MASKED_EQ': return (a & v) === v2
    }
  }
  let checked = 0
  let wrong = 0
  for (const op of ops) for (const v of pivots) {
    const v2 = op === 'SCMP_CMP_MASKED_EQ' ? v & 0xffff_0000_ffffn : 0n
    const prof: OciSeccompProfile = {
      defaultAction: 'SCMP_ACT_ALLOW',
      syscalls: [{ names: ['read'], action: 'SCMP_ACT_ERRNO', errnoRet: 7, args: [{ index: 2, value: v, valueTwo: v2, op }] }],
    }
    const prog = compileSeccomp(prof, 'x86_64')
    for (const a of samples) {
      const got = run(prog, { nr: 0, arch: AUDIT_ARCH_X86_64, args: [0, 0, a] }) === ERRNO(7)
      checked++
      if (got !== ref(op, a, v, v2)) {
        wrong++
        t.fail(`${op} value=0x${v.toString(16)} arg=0x${a.toString(16)}: filter says ${got}`)
      }
    }
  }
  t.equal(wrong, 0, `${checked} operator/value/argument combinations agree with the reference`)
})

t.test('32-bit arguments compare the low word only', async (t) => {
  const prof: OciSeccompProfile = {
    defaultAction: 'SCMP_ACT_ALLOW',
    syscalls: [{ names: ['socket'], action: 'SCMP_ACT_ERRNO', args: [{ index: 0, value: 10, op: 'SCMP_CMP_GT' }] }],
  }
  const prog = compileSeccomp(prof, 'x86_64')
  const s = (d: bigint) => run(prog, { nr: 41, arch: AUDIT_ARCH_X86_64, args: [d] })
  t.equal(s(11n), EPERM)
  t.equal(s(10n), ALLOW)
  t.equal(s((1n << 32n) | 5n), ALLOW, 'the kernel sees domain 5: high garbage does not turn it into a match')
  t.equal(s((1n << 40n) | 11n), EPERM, 'the kernel sees domain 11: high garbage does not hide it')
})

t.test('precedence, OR on repeated indices, skipped names, errno defaults', async (t) => {
  const prof: OciSeccompProfile = {
    defaultAction: 'SCMP_ACT_ERRNO',
    defaultErrnoRet: 13,
    syscalls: [
      { names: ['write'], action: 'SCMP_ACT_KILL_PROCESS' },
      { names: ['write'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 1, op: 'SCMP_CMP_EQ' }] },
      // same index twice: either condition (runc semantics)
      { names: ['kill'], action: 'SCMP_ACT_ALLOW', args: [{ index: 1, value: 0, op: 'SCMP_CMP_EQ' }, { index: 1, value: 15, op: 'SCMP_CMP_EQ' }] },
      { names: ['getpid', 'no_such_syscall'], action: 'SCMP_ACT_ALLOW' },
      { names: ['getuid'], action: 'SCMP_ACT_ERRNO' },
      { names: ['gettid'], action: 'SCMP_ACT_LOG' },
      { names: ['getppid'], action: 'SCMP_ACT_TRAP' },
      { names: ['getpgrp'], action: 'SCMP_ACT_KILL' },
      { names: ['uname'], action: 'SCMP_ACT_ALLOW', includes: { caps: ['CAP_SYS_ADMIN'] } },
    ],
  }
  const r = compileSeccompDetailed(prof, 'x86_64')
  const X = SYSCALL_TABLES.x86_64
  const c = (n: string, ...args: number[]) => run(r.program, { nr: X[n]!, arch: AUDIT_ARCH_X86_64, args })
  t.equal(c('write', 1), ALLOW, 'conditional entry checked before the unconditional one')
  t.equal(c('write', 2), 0x80000000, 'unconditional entry applies when no condition matches')
  t.equal(c('kill', 5, 0), ALLOW)
  t.equal(c('kill', 5, 15), ALLOW)
  t.equal(c('kill', 5, 9), ERRNO(13), 'repeated index = OR; no match -> default')
  t.equal(c('getpid'), ALLOW)
  t.equal(c('getuid'), ERRNO(13), 'ERRNO without errnoRet uses defaultErrnoRet')
  t.equal(c('gettid'), 0x7ffc0000, 'LOG')
  t.equal(c('getppid'), 0x00030000, 'TRAP')
  t.equal(c('getpgrp'), 0, 'KILL = KILL_THREAD')
  t.equal(c('uname'), ERRNO(13), 'an entry needing a capability does not apply (cordon drops them all)')
  t.equal(c('read'), ERRNO(13), 'unlisted -> default')
  t.equal(run(r.program, { nr: 0x40000000, arch: AUDIT_ARCH_X86_64 }), ERRNO(13), 'x32 denied with the profile errno')
  t.same(r.skipped, ['no_such_syscall'], 'unknown names are skipped and reported, not an error')
  t.equal(r.inapplicable, 1)
})

t.test('jumps longer than 255 instructions', async (t) => {
  // two syscalls with many conditional entries: the jump to the second body crosses the first
  const block = (name: string, n: number, base: number) => Array.from({ length: n }, (_, i) => ({
    names: [name], action: 'SCMP_ACT_ERRNO' as const, errnoRet: 1 + (i % 100),
    args: [{ index: 2, value: base + i, op: 'SCMP_CMP_EQ' as const }],
  }))
  const prof: OciSeccompProfile = {
    defaultAction: 'SCMP_ACT_ALLOW',
    syscalls: [...block('ioctl', 120, 1000), ...block('madvise', 120, 5000), { names: ['ptrace'], action: 'SCMP_ACT_ERRNO', errnoRet: 1 }],
  }
  const prog = compileSeccomp(prof, 'x86_64')
  t.ok(prog.length / 8 > 1000, `program has ${prog.length / 8} instructions`)
  t.match(disassemble(prog, 'x86_64'), /\bja\s+\d+/, 'long jumps were emitted')
  const X = SYSCALL_TABLES.x86_64
  t.equal(run(prog, { nr: X.ptrace!, arch: AUDIT_ARCH_X86_64 }), EPERM)
  t.equal(run(prog, { nr: X.ioctl!, arch: AUDIT_ARCH_X86_64, args: [0, 0, 1000 + 119] }), ERRNO(1 + (119 % 100)))
  t.equal(run(prog, { nr: X.madvise!, arch: AUDIT_ARCH_X86_64, args: [0, 0, 5000 + 7] }), ERRNO(8), 'the body past the long jump is reached')
  t.equal(run(prog, { nr: X.madvise!, arch: AUDIT_ARCH_X86_64, args: [0, 0, 4] }), ALLOW)
  t.equal(run(prog, { nr: X.ioctl!, arch: AUDIT_ARCH_X86_64, args: [0, 0, 5] }), ALLOW)
  t.equal(run(prog, { nr: X.getpid!, arch: AUDIT_ARCH_X86_64 }), ALLOW)
})

t.test('a profile naming every syscall dispatches each to its own rule', async (t) => {
  for (const arch of ['x86_64', 'aarch64'] as const) {
    const table = SYSCALL_TABLES[arch]
    const names = Object.keys(table)
    const prof: OciSeccompProfile = {
      defaultAction: 'SCMP_ACT_KILL_PROCESS',
      syscalls: names.map((n) => ({ names: [n], action: 'SCMP_ACT_ERRNO' as const, errnoRet: table[n]! % 4000 + 1 })),
    }
    const prog = compileSeccomp(prof, arch)
    const archNo = arch === 'x86_64' ? AUDIT_ARCH_X86_64 : AUDIT_ARCH_AARCH64
    let bad = 0
    for (const n of names) if (run(prog, { nr: table[n]!, arch: archNo }) !== ERRNO(table[n]! % 4000 + 1)) bad++
    t.equal(bad, 0, `${arch}: all ${names.length} syscalls reach their own rule`)
    t.equal(run(prog, { nr: 1000, arch: archNo }), 0x80000000, `${arch}: an unknown number gets the default`)
  }
})

t.test('bad profiles are PolicyErrors with file:line:field', async (t) => {
  const bad = '{\n  "defaultAction": "SCMP_ACT_ALLOW",\n  "syscalls": [\n    { "names": ["ptrace"], "action": "SCMP_ACT_DENY" }\n  ]\n}\n'
  let caught: unknown
  try {
    parseOciProfile(bad, 'p.json')
  } catch (e) {
    caught = e
  }
  t.ok(caught instanceof PolicyError, 'a PolicyError')
  t.match((caught as Error).message, /^p\.json:4: syscalls\[0\]\.action: "SCMP_ACT_DENY" is not a supported action; allowed: SCMP_ACT_ALLOW/)
  const bad2 = '{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":1,"op":"SCMP_CMP_MASKED_EQ"}]}]}'
  t.throws(() => parseOciProfile(bad2, 'q.json'), /q\.json:1: syscalls\[0\]\.args\[0\]\.valueTwo: SCMP_CMP_MASKED_EQ needs valueTwo/)
  t.throws(() => compileSeccomp({ defaultAction: 'SCMP_ACT_ALLOW', architectures: ['SCMP_ARCH_AARCH64'] }, 'x86_64'),
    /does not cover SCMP_ARCH_X86_64/)
  const big = parseOciProfile('{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":18446744073709551615,"op":"SCMP_CMP_EQ"}]}]}', 'r.json')
  t.equal(BigInt(big.syscalls![0]!.args![0]!.value), (1n << 64n) - 1n, 'uint64 values keep full precision')
})

t.test('disassembly snapshot of the agent profile (x86_64)', async (t) => {
  const { profile } = loadSeccompProfile('agent')
  const text = disassemble(compileSeccomp(profile, 'x86_64'), 'x86_64')
  const snap = path.join(here, 'snapshots', 'agent-x86_64.bpf.txt')
  if (process.env.UPDATE_SNAPSHOTS === '1' || !fs.existsSync(snap)) {
    fs.mkdirSync(path.dirname(snap), { recursive: true })
    fs.writeFileSync(snap, text)
    t.comment(`wrote ${snap}`)
  }
  t.equal(text, fs.readFileSync(snap, 'utf8'), 'matches test/policy/snapshots/agent-x86_64.bpf.txt (UPDATE_SNAPSHOTS=1 to regenerate after a reviewed change)')
  const lines = text.trim().split('\n')
  t.match(lines[0], /^0000: ld\s+\[4\]\s+; arch$/)
  t.match(lines[1], /jeq\s+#0xc000003e .*AUDIT_ARCH_X86_64/)
  t.match(text, /jge\s+#0x40000000 .*; x32 syscall bit/)
  t.match(text, /jeq\s+#0x65 .*; ptrace/, 'ptrace is 101 (0x65)')
  t.match(text, /jeq\s+#0x1a9 .*; io_uring_setup/, 'io_uring_setup is 425 (0x1a9)')
  t.match(text, /ret\s+#0x50026\s+; ERRNO\(38\)/, 'clone3 -> ENOSYS')
})
