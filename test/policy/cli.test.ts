// `cordon policy check` and `cordon policy explain`, run as a command (policy area only; lib/cli/index.ts
// registers the same module in the full CLI).
import t from 'tap'
import path from 'node:path'
import fs from 'node:fs'
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const cordon = (...args: string[]) => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(root, 'test/policy/fixtures/policy-cli.ts'), ...args], { encoding: 'utf8', cwd: dir, timeout: 60_000 })
  return { code: r.status, out: r.stdout, err: r.stderr }
}
const dir = t.testdir({
  ws: {},
  'good.yaml': 'version: 1\nfilesystem:\n  workspace: ws\nnetwork: none\n',
  'bad.yaml': 'version: 1\nfilesystem:\n  workspace: ws\n  tmp: privat\nprocess:\n  sekcomp: agent\n',
})

t.test('policy check: OK, and file:line errors with exit 1', async (t) => {
  const ok = cordon('policy', 'check', 'good.yaml', '--abi', '7', '--arch', 'x86_64')
  t.equal(ok.code, 0, ok.err)
  t.match(ok.out, /good\.yaml: OK \(Landlock ABI 7, \d+ path rules, seccomp agent \d+ instructions, network none\)/)
  const bad = cordon('policy', 'check', 'bad.yaml')
  t.equal(bad.code, 1)
  t.match(bad.err, /bad\.yaml:4: filesystem\.tmp: "privat" is not allowed; allowed: "private", "shared", "none"/)
  t.match(bad.err, /bad\.yaml:6: process\.sekcomp: unknown key "sekcomp"; allowed keys here: seccomp, env, rlimits, capabilities/)
})

t.test('policy explain: words, lost rights for an older ABI, BPF listing', async (t) => {
  const r = cordon('policy', 'explain', 'good.yaml', '--abi', '3', '--arch', 'x86_64', '--bpf')
  t.equal(r.code, 0, r.err)
  t.match(r.out, /Filesystem \(Landlock\)/)
  t.match(r.out, /Landlock cannot deny anything inside an allowed tree/)
  t.match(r.out, /ws\s+everything/)
  t.match(r.out, /Lost on this kernel\n {2}- ioctl on devices/)
  t.match(r.out, /Seccomp BPF \(x86_64\)\n0000: ld\s+\[4\]/)
  const p = cordon('policy', 'explain', 'agent', '--profile', '--workspace', 'ws', '--json', '--abi', '7', '--arch', 'aarch64')
  t.equal(p.code, 0, p.err)
  const plan = JSON.parse(p.out)
  t.equal(plan.seccomp.arch, 'aarch64')
  t.equal(plan.landlock.paths.find((x: { origin: string }) => x.origin === 'filesystem.workspace').path, fs.realpathSync(path.join(dir, 'ws')))
})
