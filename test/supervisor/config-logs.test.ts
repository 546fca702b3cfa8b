// cordon.yaml validation with file:line errors, `cordon up --check`, and the log plumbing:
// size rotation, parsing pino and audit lines, merging by time, filters.
import t from 'tap'
import { mkdtempSync, writeFileSync, readFileSync, existsSync, appendFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { loadConfig, ConfigError } from '../../lib/supervisor/config.js'
import { rotateIfNeeded, readMerged, listSources, parseSince, isDenied, parseLine } from '../../lib/supervisor/logs.js'
import { cli } from './helpers.js'

const dir = mkdtempSync(join(tmpdir(), 'cordon-cfg-'))

t.test('errors name the file, line and key', async (t) => {
  const f = join(dir, 'bad.yaml')
  writeFileSync(f, 'version: 1\nengine:\n  listen: 127.0.0.1:3128\n  lisen: 1\nagent:\n  on_exit: explode\n')
  try {
    loadConfig(f)
    t.fail('should throw')
  } catch (e) {
    t.ok(e instanceof ConfigError)
    const m = (e as Error).message
    t.match(m, `${f}:4:3: engine: unknown key "lisen"`)
    t.match(m, `${f}:6:12: agent.on_exit: must be one of "restart", "stop"`)
  }
  const y = join(dir, 'notyaml.yaml')
  writeFileSync(y, 'version: 1\nengine: [\n')
  t.throws(() => loadConfig(y), { message: new RegExp(`${y}:\\d+:\\d+: `) })
})

t.test('the embedded default resolves completely', async (t) => {
  const cfg = loadConfig(join(process.cwd(), 'profiles', 'cordon.default.yaml'))
  t.equal(cfg.engine.listen, '169.254.77.1:3128')
  t.match(cfg.policy, /profiles\/cordon\.agent\.yaml$/)
  t.equal(cfg.agent.onExit, 'restart')
  t.ok(cfg.agent.command.some((a) => a.endsWith('examples/agent/agent.mjs')), 'the reference agent')
})

t.test('cordon up --check validates the whole set before anything starts', async (t) => {
  const f = join(dir, 'cordon.yaml')
  writeFileSync(join(dir, 'agent.yaml'), 'version: 1\nfilesystem:\n  workspace: /tmp\nnetwork:\n  mode: proxy\n  unlisted: sometimes\n')
  writeFileSync(f, `version: 1\nruntime_dir: ${join(dir, 'run')}\npolicy: ./agent.yaml\nrouter:\n  config: ./missing-router.yaml\n`)
  const r = await cli(['up', '-f', f, '--check'])
  t.equal(r.code, 2)
  t.match(r.stderr, /missing-router\.yaml: router config not found/)
  t.match(r.stderr, /agent\.yaml:6/, 'the agent policy error carries its line')
  t.notOk(existsSync(join(dir, 'run', 'state.json')), 'nothing started')
})

t.test('rotation by size keeps N files; audit trails are not touched', async (t) => {
  const f = join(dir, 'engine.log')
  writeFileSync(f, 'x'.repeat(5000))
  t.ok(rotateIfNeeded(f, 4096, 2))
  t.equal(readFileSync(f, 'utf8'), '', 'live file truncated (writers keep their O_APPEND fd)')
  t.equal(readFileSync(`${f}.1`, 'utf8').length, 5000)
  writeFileSync(f, 'y'.repeat(5000))
  rotateIfNeeded(f, 4096, 2)
  writeFileSync(f, 'z'.repeat(5000))
  rotateIfNeeded(f, 4096, 2)
  t.equal(readFileSync(`${f}.1`, 'utf8')[0], 'z')
  t.equal(readFileSync(`${f}.2`, 'utf8')[0], 'y')
  t.notOk(existsSync(`${f}.3`), 'only keep=2 rotated files')
})

t.test('merge by time across logs and audit trails, with filters', async (t) => {
  const T = 1_790_000_000_000 // ms since the epoch, as pino writes
  const logs = mkdtempSync(join(tmpdir(), 'cordon-logs-'))
  const audit = join(logs, 'audit.jsonl')
  appendFileSync(join(logs, 'router.log'), JSON.stringify({ level: 30, time: T + 1000, msg: 'router up' }) + '\n' + 'a stack trace line\n' + JSON.stringify({ level: 50, time: T + 3000, msg: 'boom', request_id: 'r1' }) + '\n')
  appendFileSync(join(logs, 'agent.log'), JSON.stringify({ level: 30, time: T + 2000, msg: 'asked', request_id: 'r1' }) + '\n')
  appendFileSync(audit, JSON.stringify({ time: new Date(T + 2500).toISOString(), type: 'decision', decision: 'deny', host: 'x.example', port: 443 }) + '\n')
  const src = listSources(logs, [{ component: 'engine', file: audit }])
  const all = readMerged(src)
  t.same(all.map((e) => `${e.component}:${e.t - T}`), ['router:1000', 'router:1000', 'agent:2000', 'engine:2500', 'router:3000'])
  t.equal(all[1]!.msg, 'a stack trace line', 'a non-JSON line is kept with the time before it')
  t.same(readMerged(src, { denied: true }).map((e) => e.component), ['engine'])
  t.same(readMerged(src, { requestId: 'r1' }).map((e) => e.msg), ['asked', 'boom'])
  t.same(readMerged(src, { components: ['agent'] }).length, 1)
  t.ok(isDenied(parseLine('{"decision":"deny"}', 'engine', 'audit', 0)!))
  t.equal(parseSince('10m', 1_000_000), 400_000)
  t.throws(() => parseSince('yesterday-ish'), /expected a duration like 10m/)
})
