// The policy loader: errors name file, line and field and say what is allowed; objects and
// files merge onto the agent profile; extends: none; paths, ~ and ${workspace}.
import t from 'tap'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { loadPolicy, loadProfile, PolicyError } from '../../lib/policy/index.js'
import { generatedValidator, SCHEMA_PATH } from '../../lib/policy/load.js'

const dir = t.testdir({
  ws: { 'notes.txt': 'hi', sub: {} },
  'extra-ro': { sub: {} },
})
const ws = path.join(dir, 'ws')

function write(name: string, text: string): string {
  const f = path.join(dir, name)
  fs.writeFileSync(f, text)
  return f
}

function errorOf(fn: () => unknown): PolicyError {
  try {
    fn()
  } catch (e) {
    if (e instanceof PolicyError) return e
    throw e
  }
  throw new Error('expected a PolicyError')
}

t.test('bad files: each error names file:line: field and what is allowed', async (t) => {
  const cases: { name: string; text: string; line: number; field: string; match: RegExp }[] = [
    { name: 'typo-key.yaml', text: `version: 1\nfilesystem:\n  workspace: ${ws}\n  read_onyl: [/usr]\n`, line: 4,
      field: 'filesystem.read_onyl', match: /unknown key "read_onyl"; allowed keys here: workspace, system, read_only/ },
    { name: 'top-typo.yaml', text: 'version: 1\nnetwrk: none\n', line: 2, field: 'netwrk', match: /unknown key "netwrk"; allowed keys here: version, extends, requirements/ },
    { name: 'no-version.yaml', text: 'network: none\n', line: 1, field: 'version', match: /"version" is required here; add `version: 1`/ },
    { name: 'bad-version.yaml', text: 'version: 2\n', line: 1, field: 'version', match: /2 is not allowed; it must be 1/ },
    { name: 'bad-network.yaml', text: 'version: 1\n\nnetwork: internet\n', line: 3, field: 'network', match: /"internet" is not allowed; allowed: `none`, `host`, or a mapping/ },
    { name: 'bad-unlisted.yaml', text: 'version: 1\nnetwork:\n  mode: proxy\n  unlisted: maybe\n', line: 4, field: 'network.unlisted', match: /"maybe" is not allowed; allowed: "ask", "deny"/ },
    { name: 'bad-rule.yaml', text: 'version: 1\nnetwork:\n  mode: proxy\n  allow:\n    - example.com\n    - "http://x y"\n', line: 6, field: 'network.allow[1]', match: /"http:\/\/x y" is not valid; allowed: "host", "\*\.example\.com"/ },
    { name: 'bad-port.yaml', text: 'version: 1\nnetwork:\n  mode: proxy\n  bind: [80, 70000]\n', line: 4, field: 'network.bind[1]', match: /70000 must be <= 65535/ },
    { name: 'bad-tmp.yaml', text: `version: 1\nfilesystem:\n  workspace: ${ws}\n  tmp: privat\n`, line: 4, field: 'filesystem.tmp', match: /"privat" is not allowed; allowed: "private", "shared", "none"/ },
    { name: 'bad-entry.yaml', text: `version: 1\nfilesystem:\n  workspace: ${ws}\n  read_only:\n    - path: /usr\n      optinal: true\n`, line: 6, field: 'filesystem.read_only[0].optinal', match: /unknown key "optinal"; allowed keys here: path, optional/ },
    { name: 'missing-path.yaml', text: `version: 1\nfilesystem:\n  workspace: ${ws}\n  read_only:\n    - /usr\n    - /definitely/not/here\n`, line: 6, field: 'filesystem.read_only[1]', match: /\/definitely\/not\/here does not exist; create it, fix the path, or mark it \{ path: \.\.\., optional: true \}/ },
    { name: 'missing-ws.yaml', text: 'version: 1\nfilesystem:\n  workspace: /no/such/workspace\n', line: 3, field: 'filesystem.workspace', match: /\/no\/such\/workspace does not exist/ },
    { name: 'bad-seccomp.yaml', text: `version: 1\nfilesystem:\n  workspace: ${ws}\nprocess:\n  seccomp: ./nope.json\n`, line: 5, field: 'process.seccomp', match: /no such seccomp profile/ },
    { name: 'bad-env.yaml', text: 'version: 1\nprocess:\n  env:\n    pass: [PATH, "BAD-NAME"]\n', line: 4, field: 'process.env.pass[1]', match: /"BAD-NAME" is not valid/ },
    { name: 'bad-rlimit.yaml', text: 'version: 1\nprocess:\n  rlimits:\n    nofile: lots\n', line: 4, field: 'process.rlimits.nofile', match: /"lots" is not allowed; allowed: a number, `unlimited`, or \{ soft, hard \}/ },
    { name: 'bad-rlimit-name.yaml', text: 'version: 1\nprocess:\n  rlimits:\n    files: 10\n', line: 4, field: 'process.rlimits.files', match: /unknown key "files"; allowed keys here: as, core, cpu/ },
    { name: 'bad-right.yaml', text: 'version: 1\nrequirements:\n  rights: [fs.refer, net.connect]\n', line: 3, field: 'requirements.rights[1]', match: /"net\.connect" is not allowed; allowed: "fs\.execute"/ },
    { name: 'bad-extends.yaml', text: 'version: 1\nextends: nosuch\n', line: 2, field: 'extends', match: /no profile named "nosuch"; allowed: none, agent/ },
    { name: 'bad-var.yaml', text: `version: 1\nfilesystem:\n  workspace: ${ws}\n  read_only: ["\${home}/x"]\n`, line: 4, field: 'filesystem.read_only[0]', match: /unknown variable in "\$\{home\}\/x"; allowed: \$\{workspace\} and a leading ~/ },
    { name: 'bad-yaml.yaml', text: 'version: 1\nfilesystem:\n\tworkspace: x\n', line: 3, field: '', match: /not valid YAML\/JSON: Tabs are not allowed as indentation/ },
    { name: 'dup-key.yaml', text: 'version: 1\nnetwork: none\nnetwork: host\n', line: 3, field: '', match: /not valid YAML\/JSON: Map keys must be unique/ },
    { name: 'bad.json', text: '{\n  "version": 1,\n  "network": "none",\n  "process": { "capabilities": "all" }\n}\n', line: 4, field: 'process.capabilities', match: /"all" is not allowed; it must be "none"/ },
  ]
  for (const c of cases) {
    const f = write(c.name, c.text)
    const e = errorOf(() => loadPolicy(f))
    t.equal(e.file, f, `${c.name}: file`)
    t.equal(e.line, c.line, `${c.name}: line ${c.line}`)
    if (c.field) t.equal(e.field, c.field, `${c.name}: field ${c.field}`)
    t.ok(e.message.startsWith(`${f}:${c.line}: ${c.field ? `${c.field}: ` : ''}`), `${c.name}: message starts with file:line: field: (${e.message})`)
    t.match(e.message, c.match, `${c.name}: says what was wrong and what is allowed`)
  }
})

t.test('a missing file', async (t) => {
  const e = errorOf(() => loadPolicy(path.join(dir, 'nope.yaml')))
  t.match(e.message, /nope\.yaml: no such file; give the path of a policy file/)
})

t.test('several problems are reported together', async (t) => {
  const f = write('many.yaml', 'version: 1\nnetwrk: none\nfilesystem:\n  sytem: true\n')
  const e = errorOf(() => loadPolicy(f))
  t.equal(e.others.length, 1)
  t.match(e.report, /many\.yaml:2: netwrk: unknown key[\s\S]*many\.yaml:4: filesystem\.sytem: unknown key/)
})

t.test('an object policy merges onto the agent profile', async (t) => {
  const p = loadPolicy({ filesystem: { workspace: ws } })
  const agent = loadProfile('agent', { workspace: ws })
  t.equal(p.extends, 'agent')
  t.equal(p.filesystem.workspace, ws)
  t.equal(p.filesystem.system, true, 'system paths from the profile')
  t.equal(p.filesystem.home, 'private')
  t.equal(p.filesystem.tmp, 'private')
  t.same(p.network, { mode: 'none' })
  t.equal(p.process.seccomp?.source, 'agent', 'the agent seccomp profile')
  t.same(p.process.env, agent.process.env)
  t.same(p.process.rlimits, { core: 0, nofile: 4096, nproc: 4096 })
  t.equal(p.requirements.bestEffort, true)
  t.equal(p.source, '<policy object>')

  // field-level: rlimits and env.set merge, lists replace
  const q = loadPolicy({
    filesystem: { workspace: ws, read_only: [path.join(dir, 'extra-ro')] },
    process: { rlimits: { nofile: 100 }, env: { pass: ['PATH'], set: { A: 'b', N: 3 } } },
  }, { source: 'launcher.ts' })
  t.same(q.process.rlimits, { core: 0, nofile: 100, nproc: 4096 }, 'rlimits merge by name')
  t.same(q.process.env.pass, ['PATH'], 'lists replace')
  t.same(q.process.env.set, { A: 'b', N: '3' })
  t.equal(q.filesystem.system, true, 'untouched fields stay')
  t.equal(q.filesystem.readOnly[0]!.path, path.join(dir, 'extra-ro'))
  t.equal(q.filesystem.readOnly[0]!.origin.field, 'filesystem.read_only[0]')
  t.equal(q.source, 'launcher.ts')
  const e = errorOf(() => loadPolicy({ filesystem: { workspace: ws, read_only: ['/nope/x'] } }, { source: 'launcher.ts' }))
  t.match(e.message, /^launcher\.ts: filesystem\.read_only\[0\]: \/nope\/x does not exist/, 'object errors name the source and field')
})

t.test('opts.workspace overrides; relative paths resolve against the file / cwd', async (t) => {
  const f = write('rel.yaml', 'version: 1\nfilesystem:\n  workspace: ws\n  read_only: [extra-ro, "${workspace}/sub", "~"]\n')
  const p = loadPolicy(f)
  t.equal(p.filesystem.workspace, ws, 'relative to the policy file')
  t.same(p.filesystem.readOnly.map((e) => e.path), [path.join(dir, 'extra-ro'), path.join(ws, 'sub'), os.homedir()])
  const q = loadPolicy(f, { workspace: 'extra-ro', cwd: dir })
  t.equal(q.filesystem.workspace, path.join(dir, 'extra-ro'), 'opts.workspace against opts.cwd')
  t.equal(q.filesystem.readOnly[1]!.path, path.join(dir, 'extra-ro', 'sub'), '${workspace} follows the override')
  const r = loadPolicy({ filesystem: { workspace: 'ws' } }, { cwd: dir })
  t.equal(r.filesystem.workspace, ws, 'object paths against opts.cwd')
  const u = loadPolicy({ filesystem: { workspace: undefined, tmp: undefined } }, { workspace: ws })
  t.equal(u.filesystem.tmp, 'private', 'undefined fields count as omitted')
  const opt = loadPolicy({ filesystem: { workspace: ws, read_write: [{ path: '/no/such', optional: true }] } })
  t.same(opt.filesystem.readWrite.map((e) => [e.path, e.optional]), [['/no/such', true]], 'a missing optional path is fine')
  const e = errorOf(() => loadPolicy({ filesystem: { workspace: '/tmp' } }, { workspace: '/no/where' }))
  t.match(e.message, /filesystem\.workspace: \/no\/where does not exist; pass an existing directory/)
})

t.test('extends: none starts from the strictest values', async (t) => {
  const f = write('bare.yaml', `version: 1\nextends: none\nfilesystem:\n  workspace: ${ws}\n`)
  const p = loadPolicy(f)
  t.equal(p.extends, 'none')
  t.equal(p.filesystem.system, false)
  t.equal(p.filesystem.home, 'none')
  t.equal(p.filesystem.tmp, 'none')
  t.same(p.network, { mode: 'none' })
  t.equal(p.process.seccomp, null)
  t.same(p.process.env, { pass: [], set: {} })
  const g = write('bare2.yaml', 'version: 1\nextends: none\nfilesystem:\n  home: private\n')
  const e = errorOf(() => loadPolicy(g))
  t.match(e.message, /bare2\.yaml:4: filesystem\.home: "private" needs a workspace/)
})

t.test('network proxy section is passed through for the policy engine', async (t) => {
  const f = write('net.yaml', [
    'version: 1', 'network:', '  mode: proxy', '  allow:', '    - api.example.com', '    - "*.github.com:443"',
    '    - { cidr: 10.0.0.0/8, ports: [5432] }', '    - { host: example.org, methods: [GET], paths: [/v1/] }',
    '  deny: [evil.example.com]', '  unlisted: ask', '  bind: [8080]', '',
  ].join('\n'))
  const p = loadPolicy(f, { workspace: ws })
  t.same(p.network, {
    mode: 'proxy', presets: [], unlisted: 'ask', bind: [8080], connect: [], namespace: 'new', deny: ['evil.example.com'],
    allow: ['api.example.com', '*.github.com:443', { cidr: '10.0.0.0/8', ports: [5432] }, { host: 'example.org', methods: ['GET'], paths: ['/v1/'] }],
  })
  const d = loadPolicy({ network: { mode: 'proxy' } }, { workspace: ws })
  t.same(d.network, { mode: 'proxy', presets: [], allow: [], deny: [], unlisted: 'deny', bind: [], connect: [], namespace: 'new' }, 'defaults: unlisted deny, a namespace of its own')
  const bad = errorOf(() => loadPolicy(write('ns.yaml', 'version: 1\nnetwork:\n  mode: proxy\n  namespace: pod\n'), { workspace: ws }))
  t.match(bad.message, /ns\.yaml:4: network\.namespace/, 'an unknown namespace value is an error at its line')
})

t.test('the shipped agent profile and schema', async (t) => {
  const p = loadProfile('agent', { workspace: ws })
  t.equal(p.filesystem.workspace, ws)
  t.equal(p.process.capabilities, 'none')
  const e = errorOf(() => loadProfile('nosuch'))
  t.match(e.message, /profile: no profile named "nosuch"; allowed: .*agent/)
  const schema = JSON.parse(fs.readFileSync(new URL('../../profiles/policy.schema.json', import.meta.url), 'utf8'))
  t.equal(schema.additionalProperties, false, 'unknown top-level keys are errors')
  t.match(schema.description, /Landlock cannot deny anything inside a tree it allows/, 'the schema docs say Landlock cannot deny inside an allowed tree')
})

t.test('the schema is valid JSON Schema (the runtime compile skips that check for speed)', async (t) => {
  const { default: Ajv } = await import('ajv')
  const ajv = new Ajv({ strict: true, allowUnionTypes: true })
  ajv.addKeyword({ keyword: 'x-allowed', schemaType: 'string' })
  const schema = JSON.parse(fs.readFileSync(SCHEMA_PATH, 'utf8'))
  t.equal(ajv.validateSchema(schema), true, JSON.stringify(ajv.errors))
})

t.test('the generated validator: used only for its own schema, same verdicts as the full one', async (t) => {
  const { spawnSync } = await import('node:child_process')
  const d = t.testdir({})
  const good = path.join(d, 'good.cjs')
  const r = spawnSync(process.execPath, [new URL('../../scripts/gen-policy-validator.mjs', import.meta.url).pathname, good], { encoding: 'utf8' })
  t.equal(r.status, 0, r.stderr)
  const stale = path.join(d, 'stale.cjs')
  fs.writeFileSync(stale, fs.readFileSync(good, 'utf8').replace(/schemaSha256 = "[0-9a-f]+"/, `schemaSha256 = "${'0'.repeat(64)}"`))
  t.equal(generatedValidator([stale]), null, 'generated from another schema: not used')
  t.equal(generatedValidator([path.join(d, 'missing.cjs')]), null)
  const fast = generatedValidator([stale, good])
  t.type(fast, 'function', 'generated from this schema: used')
  const cases: Array<[unknown, boolean]> = [
    [{ version: 1 }, true],
    [{ version: 1, filesystem: { workspace: '/w', read_only: ['/a', { path: '/b', optional: true }] } }, true],
    [{ version: 1, network: { mode: 'proxy', allow: [{ host: 'example.com', ports: [443] }] } }, true],
    [{ version: 2 }, false],
    [{ version: 1, filesystem: { workspace: 3 } }, false],
    [{ version: 1, nosuch: true }, false],
    [{ version: 1, network: 'everything' }, false],
    [{ version: 1, process: { env: { pass: 'PATH' } } }, false],
  ]
  for (const [data, valid] of cases) {
    let full = true
    try {
      loadPolicy({ extends: 'none', ...(data as object) }, { cwd: dir })
    } catch (e) {
      full = !(e instanceof PolicyError && /is not allowed|wrong type|unknown key|not valid|required/.test(e.message))
    }
    t.equal(full, valid, `full validator on ${JSON.stringify(data)}`)
    t.equal(fast!({ extends: 'none', ...(data as object) }), full, `same verdict for ${JSON.stringify(data)}`)
  }
})
