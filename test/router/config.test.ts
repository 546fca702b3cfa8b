/**
 * router.yaml validation: every problem reported as file:line:col with what to do, and the
 * redactor's chunk-boundary handling (a key split at every possible byte offset).
 */
import t from 'tap'
import { mkdtempSync, writeFileSync, rmSync, chmodSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { compileConfig, ConfigError } from '../../lib/router/config.js'
import { openKeyStore, setKey, listKeys, removeKey } from '../../lib/router/keys.js'
import { Redactor } from '../../lib/router/redact.js'

const dir = mkdtempSync(join(tmpdir(), 'cordon-router-cfg-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

function problems(text: string): string[] {
  try {
    compileConfig(text, 'router.yaml')
  } catch (e) {
    if (e instanceof ConfigError) return e.message.split('\n').slice(1)
    throw e
  }
  return []
}

t.test('a valid config compiles with defaults', async (t) => {
  const c = compileConfig(
    `routes:
  - name: fast
    targets:
      - { provider: openai, base_url: "https://api.openai.com/v1/", model: gpt-4o-mini, key: { env: CORDON_T_KEY } }
`,
    'router.yaml',
    { env: { CORDON_T_KEY: 'sk-from-env-123456' } },
  )
  const r = c.byModel.get('fast')!
  t.equal(r.name, 'fast', 'the route name is its model alias when models: is absent')
  t.equal(r.targets[0]!.basePath, '/v1')
  t.equal(r.targets[0]!.auth, 'bearer')
  t.equal(r.targets[0]!.key, 'sk-from-env-123456')
  t.same([...r.fallbackOn].sort(), ['429', '5xx', 'connect', 'timeout'])
  t.same(c.keys, ['sk-from-env-123456'])
  t.equal(c.unmapped, 'by-address')
})

t.test('schema errors carry file:line:col', async (t) => {
  const p = problems(`version: 1
routes:
  - name: fast
    targets:
      - provider: openia
        base_url: https://api.openai.com/v1
        model: x
        key: sk-inline-secret
        colour: blue
`)
  t.match(p.join('\n'), /router\.yaml:5:19: routes\.0\.targets\.0\.provider: must be one of "openai", "anthropic", "openai-compatible"/)
  t.match(p.join("\n"), /router\.yaml:8:14: routes\.0\.targets\.0\.key: a key is never written inline/)
  t.match(p.join('\n'), /router\.yaml:9:9: unknown field "colour"/)
})

t.test('YAML syntax errors carry the line', async (t) => {
  const p = problems('routes:\n  - name: a\n   targets: [\n')
  t.ok(p.length >= 1)
  t.match(p[0], /^router\.yaml:\d+:\d+: YAML syntax/)
})

t.test('semantic checks', async (t) => {
  const p = problems(`routes:
  - name: a
    models: [m1]
    default: true
    targets:
      - { provider: openai, base_url: "https://user:pw@api.openai.com/v1", model: x }
      - { provider: anthropic, base_url: "https://api.anthropic.com/v1", model: y }
  - name: a
    models: [m1]
    default: true
    targets:
      - { provider: openai, base_url: "http://localhost:11434/v1", model: z, headers: { Authorization: "Bearer x" } }
sandboxes:
  s1: { addresses: [10.0.0.300], limits: { spend: { usd: 5, period: day } } }
`).join('\n')
  t.match(p, /router\.yaml:6:\d+: base_url must not carry credentials/)
  t.match(p, /router\.yaml:7:\d+: route "a": target 1 speaks the anthropic API but target 0 speaks openai/)
  t.match(p, /router\.yaml:8:\d+: route name "a" is used twice/)
  t.match(p, /router\.yaml:9:\d+: model alias "m1" is already served by route "a"/)
  t.match(p, /router\.yaml:10:\d+: only one route may be the default/)
  t.match(p, /router\.yaml:12:\d+: header "Authorization" cannot be set/)
  t.match(p, /router\.yaml:14:\d+: "10\.0\.0\.300" is not an IP address or CIDR/)
  t.match(p, /a spend cap is configured but prices: has no entry for model "x"/)
})

t.test('address and CIDR mapping', async (t) => {
  const c = compileConfig(
    `sandboxes:
  a: { addresses: [10.1.0.2, "fd00::2"] }
  b: { addresses: [10.2.0.0/16] }
routes: [{ name: r, targets: [{ provider: openai-compatible, base_url: "http://x/v1", model: m, auth: none }] }]
`,
    'r.yaml',
  )
  const { matchCidr } = await import('../../lib/router/config.js')
  t.equal(matchCidr(c, '10.1.0.2'), 'a')
  t.equal(matchCidr(c, '::ffff:10.1.0.2'), 'a')
  t.equal(matchCidr(c, 'fd00::2'), 'a')
  t.equal(matchCidr(c, '10.2.200.9'), 'b')
  t.equal(matchCidr(c, '10.3.0.1'), undefined)
})

t.test('key store: 0600, refuses loose permissions, list shows fingerprints only', async (t) => {
  const p = join(dir, 'keys.json')
  setKey(p, 'openai', 'sk-store-abcdef0123456789')
  const { statSync, readFileSync } = await import('node:fs')
  t.equal(statSync(p).mode & 0o777, 0o600)
  t.equal(openKeyStore(p).get('openai'), 'sk-store-abcdef0123456789')
  const l = listKeys(p)
  t.equal(l[0]!.name, 'openai')
  t.notOk(JSON.stringify(l).includes('sk-store'), 'list never shows the key')
  chmodSync(p, 0o644)
  t.throws(() => openKeyStore(p), /readable by group or others .*chmod 600/)
  chmodSync(p, 0o600)
  t.equal(removeKey(p, 'openai'), true)
  t.notOk(readFileSync(p, 'utf8').includes('sk-store'))
  t.throws(() => setKey(p, 'bad name', 'x'), /may only contain/)
  const kf = join(dir, 'k.txt')
  writeFileSync(kf, 'sk-file\n')
  chmodSync(kf, 0o644)
  const c = compileConfig(`routes: [{ name: r, targets: [{ provider: openai, base_url: "http://x/v1", model: m, key: { file: ${kf} } }] }]`, 'r.yaml')
  t.match(c.routes[0]!.targets[0]!.keyError, /readable by group or others/, 'a world-readable key file is refused')
})

t.test('redactor: a key split at every offset across two or three chunks', async (t) => {
  const key = 'sk-live-Zq8vL2mN4pR6tY0wX3cB5dF7gH9jK1'
  const r = new Redactor()
  r.add(key)
  r.add('sk-other-key-0000000000')
  const text = `{"a":"${key}","b":"x${key}${key}y","c":"sk-live-Zq8 not it"}`
  const want = text.split(key).join('[REDACTED]')
  let cases = 0
  for (let i = 0; i <= text.length; i++) {
    for (const j of [i, Math.min(text.length, i + 7), Math.min(text.length, i + 31)]) {
      const s = r.stream()
      const out = Buffer.concat([s.push(Buffer.from(text.slice(0, i))), s.push(Buffer.from(text.slice(i, j))), s.push(Buffer.from(text.slice(j))), s.end()]).toString()
      if (out !== want) {
        t.fail(`split at ${i},${j}: ${out}`)
        return
      }
      cases++
    }
  }
  t.pass(`${cases} splits all redacted`)
  // no delay for ordinary SSE: nothing held back when the tail is not a key prefix
  const s = r.stream()
  t.equal(s.push(Buffer.from('data: {"x":1}\n\n')).toString(), 'data: {"x":1}\n\n')
  t.equal(s.push(Buffer.from('data: sk-li')).toString(), 'data: ', 'a possible key prefix is held')
  t.equal(s.push(Buffer.from('ke\n\n')).toString(), 'sk-like\n\n')
  t.equal(r.string(`a ${encodeURIComponent(key)} b`), 'a [REDACTED] b')
})

t.test('redactor: the key base64-encoded at any alignment, base64url and hex, inside longer text', async (t) => {
  const key = 'sk-live-Zq8vL2mN4pR6tY0wX3cB5dF7gH9jK1'
  const r = new Redactor()
  r.add(key)
  let cases = 0
  for (const prefix of ['', 'x', 'xy', 'Bearer ', 'user:', 'ab:']) {
    for (const suffix of ['', '!', '\n']) {
      const plain = Buffer.from(prefix + key + suffix)
      for (const enc of [plain.toString('base64'), plain.toString('base64url'), plain.toString('hex'), plain.toString('hex').toUpperCase()]) {
        const text = `{"echo":"${enc}"}`
        const out = r.string(text)
        const outStream = (() => {
          const s = r.stream()
          const mid = Math.floor(text.length / 2)
          return Buffer.concat([s.push(Buffer.from(text.slice(0, mid))), s.push(Buffer.from(text.slice(mid))), s.end()]).toString()
        })()
        for (const o of [out, outStream]) {
          // what is left of the encoded text must not decode back to the key, nor to most of it
          const left = o.replace(/^\{"echo":"|"\}$/g, '').split('[REDACTED]')
          const leaked = left.map((p) => (/^[0-9a-fA-F]+$/.test(p) ? Buffer.from(p, 'hex') : Buffer.from(p, 'base64')).toString('latin1')).join('')
          if (!o.includes('[REDACTED]') || leaked.includes(key.slice(0, 8)) || leaked.includes(key.slice(-8))) {
            t.fail(`${JSON.stringify(prefix)} + key + ${JSON.stringify(suffix)} as ${enc.slice(0, 12)}...: ${o}`)
            return
          }
        }
        cases++
      }
    }
  }
  t.pass(`${cases} encodings redacted, whole and split across chunks`)
  const short = new Redactor()
  short.add('sk-short')
  t.equal(short.string(Buffer.from('sk-short').toString('base64')), Buffer.from('sk-short').toString('base64'), 'a short key has no encoded forms (they would match by chance)')
  t.equal(r.string('aGVsbG8gd29ybGQ= 68656c6c6f'), 'aGVsbG8gd29ybGQ= 68656c6c6f', 'ordinary base64 and hex pass unchanged')
})

t.test('the shipped example config validates', async (t) => {
  const { loadConfigFile } = await import('../../lib/router/config.js')
  const here = new URL('../../profiles/router.example.yaml', import.meta.url).pathname
  const c = loadConfigFile(here, { env: {} })
  t.same(c.routes.map((r) => r.name), ['fast', 'smart', 'claude', 'local'])
  t.same([...c.byModel.get('smart')!.fallbackOn].sort(), ['5xx', 'connect', 'timeout'])
  t.equal(c.unmapped, 'reject')
  t.equal(c.listeners.length, 2)
})
