import t from 'tap'
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import { parseConfig, loadConfig, splitText, toSlack, redact } from '../../lib/gateway/index.js'
import { resolveSecret } from '../../lib/gateway/config.js'
import { tmpdir } from './helpers.js'

t.test('errors carry file:line and say what to do', async (t) => {
  t.throws(() => parseConfig('channels:\n  - name: tg\n    type: telegram\n    token: "123:abc"\n', '/etc/gw.yaml'), /\/etc\/gw\.yaml:4: \/channels\/0\/token: credentials may not be written inline: use \{ env: VAR_NAME \} or \{ file:/)
  t.throws(() => parseConfig('channels:\n  - name: tg\n    type: telegrm\n', 'g.yaml'), /g\.yaml:3: \/channels\/0\/type: must be one of telegram, slack, discord, webhook/)
  t.throws(() => parseConfig('channels:\n  - name: tg\n    type: telegram\n', 'g.yaml'), /g\.yaml:2: channel "tg" \(telegram\) needs "token"/)
  t.throws(() => parseConfig('chanels: []\n', 'g.yaml'), /g\.yaml:1: \(top level\): unknown key "chanels"/)
  t.throws(() => parseConfig('channels: [\n', 'g.yaml'), /g\.yaml:\d+:\d+: YAML syntax error/)
  t.throws(() => parseConfig('channels:\n  - { name: h, type: webhook, secret: { env: S } }\n', 'g.yaml'), /public_listen/)
  t.throws(() => parseConfig('channels:\n  - { name: local, type: webhook, secret: { env: S } }\npublic_listen: "127.0.0.1:1"\n', 'g.yaml'), /reserved name "local"/)
})

t.test('defaults and a valid example', async (t) => {
  const c = parseConfig('channels:\n  - { name: tg, type: telegram, token: { env: T }, allow: [1, "2"] }\n', 'g.yaml')
  t.match(c.channels[0], { mode: 'polling', pairing: true, require_mention: true, allow: ['1', '2'], max_message_bytes: 32768 })
  t.equal(c.agent.visibility_timeout_s, 60)
  const ex = loadConfig(path.resolve('profiles/gateway.example.yaml'))
  t.ok(ex.channels.length >= 4, 'the shipped example validates')
})

t.test('secrets: from env or file, registered for redaction', async (t) => {
  const dir = tmpdir(t)
  writeFileSync(path.join(dir, 'tok'), 'file-secret-value-1234\n')
  t.equal(resolveSecret({ file: 'tok' }, 'x', dir), 'file-secret-value-1234')
  t.equal(resolveSecret({ env: 'E' }, 'x', dir, { E: 'env-secret-value-5678' }), 'env-secret-value-5678')
  t.equal(redact('GET /botfile-secret-value-1234/getMe failed (env-secret-value-5678)'), 'GET /bot[REDACTED]/getMe failed ([REDACTED])')
  t.throws(() => resolveSecret({ env: 'MISSING' }, 'channel tg: token', dir, {}), /channel tg: token: environment variable MISSING is not set/)
  t.throws(() => resolveSecret({ file: 'nope' }, 'channel tg: token', dir), /cannot read credential file .*nope: ENOENT/)
})

t.test('splitting and Markdown', async (t) => {
  t.same(splitText('short', 10), ['short'])
  const parts = splitText('aaaa bbbb cccc dddd', 10)
  t.ok(parts.every((p) => p.length <= 10))
  t.equal(parts.join(' '), 'aaaa bbbb cccc dddd')
  const emoji = '😀'.repeat(10) // surrogate pairs, no spaces
  t.ok(splitText(emoji, 5).every((p) => !/^[\udc00-\udfff]/.test(p) && !/[\ud800-\udbff]$/.test(p)), 'never splits a surrogate pair')
  t.equal(toSlack('**b** and [l](https://x.y) and `**code**` a<b'), '*b* and <https://x.y|l> and `**code**` a&lt;b')
})
