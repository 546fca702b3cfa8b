// `cordon policy check` and `cordon policy explain`: the policy area's commander commands, run
// in-process with stdout/stderr captured (lib/cli/index.ts registers the same module).
import t from 'tap'
import path from 'node:path'
import fs from 'node:fs'
import { Command } from 'commander'
import { register } from '../../lib/cli/policy.js'

const dir = t.testdir({
  ws: {},
  'good.yaml': 'version: 1\nfilesystem:\n  workspace: ws\nnetwork: none\n',
  'bad.yaml': 'version: 1\nfilesystem:\n  workspace: ws\n  tmp: privat\nprocess:\n  sekcomp: agent\n',
})

async function cordon(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const program = new Command('cordon').exitOverride()
  register(program)
  let out = ''
  let err = ''
  const ow = process.stdout.write.bind(process.stdout)
  const ew = process.stderr.write.bind(process.stderr)
  const cwd = process.cwd()
  process.stdout.write = ((s: string) => ((out += s), true)) as typeof process.stdout.write
  process.stderr.write = ((s: string) => ((err += s), true)) as typeof process.stderr.write
  process.exitCode = 0
  try {
    process.chdir(dir)
    await program.parseAsync(['node', 'cordon', ...args])
  } finally {
    process.chdir(cwd)
    process.stdout.write = ow
    process.stderr.write = ew
  }
  const code = Number(process.exitCode ?? 0)
  process.exitCode = 0
  return { code, out, err }
}

t.test('policy check: OK, and file:line errors with exit code 1', async (t) => {
  const ok = await cordon('policy', 'check', 'good.yaml', '--abi', '7', '--arch', 'x86_64')
  t.equal(ok.code, 0, ok.err)
  t.match(ok.out, /good\.yaml: OK \(Landlock ABI 7, \d+ path rules, seccomp agent \d+ instructions, network none\)/)
  const bad = await cordon('policy', 'check', 'bad.yaml', '--abi', '7', '--arch', 'x86_64')
  t.equal(bad.code, 1)
  t.match(bad.err, /bad\.yaml:4: filesystem\.tmp: "privat" is not allowed; allowed: "private", "shared", "none"/)
  t.match(bad.err, /bad\.yaml:6: process\.sekcomp: unknown key "sekcomp"; allowed keys here: seccomp, env, rlimits, capabilities/)
  const missing = await cordon('policy', 'check', 'nope.yaml', '--abi', '7', '--arch', 'x86_64')
  t.equal(missing.code, 1)
  t.match(missing.err, /nope\.yaml: no such file/)
})

t.test('policy explain: words, lost rights for an older ABI, BPF listing, JSON', async (t) => {
  const r = await cordon('policy', 'explain', 'good.yaml', '--abi', '3', '--arch', 'x86_64', '--bpf')
  t.equal(r.code, 0, r.err)
  t.match(r.out, /Filesystem \(Landlock\)/)
  t.match(r.out, /Landlock cannot deny anything inside an allowed tree/)
  t.match(r.out, /ws\s+everything/)
  t.match(r.out, /Lost on this kernel\n {2}- ioctl on devices/)
  t.match(r.out, /Seccomp BPF \(x86_64\)\n0000: ld\s+\[4\]/)
  const p = await cordon('policy', 'explain', 'agent', '--profile', '--workspace', 'ws', '--json', '--abi', '7', '--arch', 'aarch64')
  t.equal(p.code, 0, p.err)
  const plan = JSON.parse(p.out)
  t.equal(plan.seccomp.arch, 'aarch64')
  t.equal(plan.landlock.paths.find((x: { origin: string }) => x.origin === 'filesystem.workspace').path, fs.realpathSync(path.join(dir, 'ws')))
  await t.rejects(cordon('policy', 'explain', 'good.yaml', '--abi', 'x', '--arch', 'x86_64'),
    { message: /--abi x: must be a Landlock ABI number/, exitCode: 2 }, 'a bad --abi is a usage error for the CLI entry (exit 2)')
})
