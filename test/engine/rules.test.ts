import t from 'tap'
import { parseRule, decideName, checkAddress, normalizePath, type CompiledNetwork, type Target } from '../../lib/engine/rules.js'
import { parseIP, formatIP, specialRange } from '../../lib/engine/ip.js'
import { compileNetworkPolicy, PolicyLoadError, loadPreset, listPresets } from '../../lib/engine/policy.js'

const none = { allow: [], deny: [] }
function net(allow: unknown[], deny: unknown[] = [], unlisted: 'ask' | 'deny' = 'deny'): CompiledNetwork {
  return {
    mode: 'proxy',
    allow: allow.map((r, i) => parseRule(r as string, `allow[${i}]`, 'allow')),
    deny: deny.map((r, i) => parseRule(r as string, `deny[${i}]`, 'deny')),
    unlisted,
    presets: [],
    bind: [],
  }
}
const T = (host: string, port = 443, extra: Partial<Target> = {}): Target => ({ host, port, tunnel: true, ...extra })

t.test('ip parsing and special ranges', async (t) => {
  t.equal(formatIP(parseIP('::ffff:127.0.0.1')!), '127.0.0.1')
  t.equal(formatIP(parseIP('fd00:ec2::254')!), 'fd00:ec2::254')
  t.equal(specialRange(parseIP('169.254.169.254')!)!.kind, 'metadata')
  t.equal(specialRange(parseIP('100.100.100.200')!)!.kind, 'metadata')
  t.equal(specialRange(parseIP('fd00:ec2::254')!)!.kind, 'metadata')
  t.equal(specialRange(parseIP('::ffff:10.1.2.3')!)!.kind, 'private')
  t.equal(specialRange(parseIP('64:ff9b::7f00:1')!)!.kind, 'loopback', 'NAT64-embedded loopback')
  t.equal(specialRange(parseIP('::1')!)!.kind, 'loopback')
  t.equal(specialRange(parseIP('93.184.216.34')!), null)
  t.equal(specialRange(parseIP('2606:4700::1111')!), null)
})

t.test('host patterns, ports, deny wins, default deny', async (t) => {
  const n = net(['api.example.com', '*.cdn.example.com:443', 'db.example.com:5432', { host: 'ports.example.com', ports: ['8000-8100'] }], ['evil.cdn.example.com'])
  t.equal(decideName(n, none, T('api.example.com', 443)).action, 'allow')
  t.equal(decideName(n, none, T('api.example.com', 80)).action, 'allow', 'default ports 80 and 443')
  t.equal(decideName(n, none, T('api.example.com', 22)).action, 'unlisted')
  t.equal(decideName(n, none, T('a.b.cdn.example.com')).action, 'allow', 'wildcard any depth')
  t.equal(decideName(n, none, T('cdn.example.com')).action, 'unlisted', 'wildcard does not match the apex')
  t.equal(decideName(n, none, T('xcdn.example.com')).action, 'unlisted')
  t.equal(decideName(n, none, T('evil.cdn.example.com')).action, 'deny', 'deny beats allow')
  t.equal(decideName(n, none, T('db.example.com', 5432)).action, 'allow')
  t.equal(decideName(n, none, T('db.example.com', 443)).action, 'unlisted')
  t.equal(decideName(n, none, T('ports.example.com', 8050)).action, 'allow')
  t.equal(decideName(n, none, T('ports.example.com', 8101)).action, 'unlisted')
  t.equal(decideName(n, none, T('other.org')).action, 'unlisted', 'default: not allowed')
  t.equal(decideName({ ...n, mode: 'none' }, none, T('api.example.com')).action, 'deny')
})

t.test('methods and paths: checked on plain HTTP, fail closed on tunnels', async (t) => {
  const n = net([{ host: 'api.example.com', methods: ['GET'], paths: ['/v1/'] }, 'other.example.com'], [{ host: 'other.example.com', methods: ['DELETE'] }])
  const H = (host: string, method: string, path: string): Target => ({ host, port: 80, method, path, tunnel: false })
  t.equal(decideName(n, none, H('api.example.com', 'GET', '/v1/models')).action, 'allow')
  t.equal(decideName(n, none, H('api.example.com', 'GET', '/v1')).action, 'allow')
  t.equal(decideName(n, none, H('api.example.com', 'POST', '/v1/models')).action, 'unlisted')
  t.equal(decideName(n, none, H('api.example.com', 'GET', '/v10')).action, 'unlisted', 'prefix on segment boundary')
  t.equal(decideName(n, none, H('api.example.com', 'GET', normalizePath('/v1/../admin'))).action, 'unlisted', 'dot segments resolved first')
  t.equal(normalizePath('/v1/%2e%2e/admin'), '/admin')
  t.equal(decideName(n, none, T('api.example.com', 443)).action, 'unlisted', 'method/path allow cannot allow a tunnel')
  t.equal(decideName(n, none, H('other.example.com', 'GET', '/')).action, 'allow')
  t.equal(decideName(n, none, H('other.example.com', 'DELETE', '/x')).action, 'deny')
  t.equal(decideName(n, none, T('other.example.com', 443)).action, 'deny', 'method-restricted deny denies the whole tunnel')
})

t.test('addresses: literals, CIDRs, special ranges', async (t) => {
  const n = net(['api.example.com', '203.0.113.7:443', { cidr: '127.0.0.2/32', ports: [8080] }, '0.0.0.0/0:9999', 'fd00::/8:443'], ['198.51.100.0/24'])
  const check = (host: string, port: number, addr: string, own = false) => {
    const tg = T(host, port)
    const name = decideName(n, none, tg)
    if (name.action !== 'allow') return name.action
    return checkAddress(n, none, tg, parseIP(addr)!, own, name).action
  }
  t.equal(check('api.example.com', 443, '93.184.216.34'), 'allow')
  t.equal(check('api.example.com', 443, '127.0.0.1'), 'deny', 'rebinding to loopback')
  t.equal(check('api.example.com', 443, '169.254.169.254'), 'deny', 'rebinding to metadata')
  t.equal(check('api.example.com', 443, '::ffff:169.254.169.254'), 'deny', 'mapped metadata')
  t.equal(check('api.example.com', 443, '10.0.0.5'), 'deny', 'private')
  t.equal(check('api.example.com', 443, '198.51.100.9'), 'deny', 'deny CIDR on a resolved address')
  t.equal(check('api.example.com', 443, '8.8.8.8', true), 'deny', "host's own address")
  t.equal(check('203.0.113.7', 443, '203.0.113.7'), 'allow', 'a literal rule names its own address, opening it inside a special range')
  t.equal(check('api.example.com', 443, '203.0.113.8'), 'deny', 'the rest of that special range stays closed')
  t.equal(check('127.0.0.2', 8080, '127.0.0.2'), 'allow', 'a /32 inside loopback opens it for that port')
  t.equal(check('127.0.0.2', 8081, '127.0.0.2'), 'unlisted')
  t.equal(check('127.0.0.1', 9999, '127.0.0.1'), 'deny', '0.0.0.0/0 does not open loopback')
  t.equal(check('8.8.8.8', 9999, '8.8.8.8'), 'allow', '0.0.0.0/0 allows public literals')
  t.equal(check('unlisted.example.com', 9999, '8.8.8.8'), 'unlisted', 'a CIDR never allows a name')
})

t.test('rule syntax errors say what is wrong', async (t) => {
  t.throws(() => parseRule('exa mple.com', 'x', 'allow'), /is not a host name/)
  t.throws(() => parseRule('foo.*.com', 'x', 'allow'), /wildcard/)
  t.throws(() => parseRule('example.com:99999', 'x', 'allow'), /1-65535/)
  t.throws(() => parseRule({ host: 'a.com', cidr: '1.2.3.0/24' }, 'x', 'allow'), /either host or cidr/)
  t.throws(() => parseRule({ host: 'a.com', paths: ['v1'] }, 'x', 'allow'), /must start with/)
  t.throws(() => parseRule({ host: 'a.com', port: 1 } as never, 'x', 'allow'), /unknown key "port"/)
  t.same(parseRule('[2001:db8::1]:8443', 'x', 'allow').ports, [{ lo: 8443, hi: 8443 }])
  t.equal(parseRule('example.com:*', 'x', 'allow').ports, null)
})

t.test('policy adapter: file:line errors, presets', async (t) => {
  const ok = compileNetworkPolicy('network:\n  presets: [npm, telegram]\n  unlisted: ask\n  allow: [api.example.com]\n', 'p.yaml')
  t.equal(ok.unlisted, 'ask')
  t.ok(ok.allow.some((r) => r.host === 'registry.npmjs.org' && r.origin === 'preset:npm'))
  t.ok(ok.allow.some((r) => r.host === 'api.telegram.org'))
  t.equal(compileNetworkPolicy('network: none\n', 'p.yaml').mode, 'none')
  const bad = 'network:\n  mode: proxy\n  allow:\n    - good.example.com\n    - "bad host"\n  presets: [nosuch]\n'
  try {
    compileNetworkPolicy(bad, '/etc/p.yaml')
    t.fail('should throw')
  } catch (e) {
    t.type(e, PolicyLoadError)
    t.match((e as Error).message, /\/etc\/p\.yaml:5:\d+: network\.allow\[1\]: "bad host" is not a host name/)
    t.match((e as Error).message, /\/etc\/p\.yaml:6:\d+: network\.presets: unknown preset "nosuch"/)
  }
  for (const name of ['discord', 'telegram', 'slack', 'pypi', 'npm', 'dockerhub', 'github', 'huggingface']) {
    t.ok(listPresets().includes(name), `preset ${name} ships`)
    t.ok(loadPreset(name).rules.length > 0)
  }
})

t.test('a full cordon policy (version: 1) is validated by lib/policy; the engine takes its network section', async (t) => {
  const { loadNetworkPolicy } = await import('../../lib/engine/policy.js')
  const fs = await import('node:fs')
  const os = await import('node:os')
  const path = await import('node:path')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cordon-engine-full-'))
  const f = path.join(dir, 'policy.yaml')
  fs.writeFileSync(f, 'version: 1\nextends: none\nnetwork:\n  mode: proxy\n  unlisted: ask\n  allow:\n    - api.example.com\n')
  const p = loadNetworkPolicy(f)
  t.equal(p.network.unlisted, 'ask')
  t.equal(p.network.allow[0]!.origin, 'policy.yaml:7 network.allow[0]')
  fs.writeFileSync(f, 'version: 1\nextends: none\nnetwork:\n  mode: proxy\n  allow:\n    - "bad host"\n')
  t.throws(() => loadNetworkPolicy(f), /policy\.yaml:6:\d+: network\.allow\[0\]/)
  fs.writeFileSync(f, 'version: 1\nextends: none\nnetwork: host\nprocess: { nosuch: 1 }\n')
  t.throws(() => loadNetworkPolicy(f), /policy\.yaml:4/, 'the whole policy is validated, not only the network section')
})
