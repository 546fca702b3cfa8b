// `cordon up` with no configuration at all: the embedded defaults (default agent policy in proxy
// mode, local chat channel, the reference agent confined, router routes with keys from the key
// store). With no key set, `cordon chat` gets the router's error relayed by the agent.
import t from 'tap'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { cli } from './helpers.js'

const keys = '/etc/cordon/keys.json'
const haveKey = existsSync(keys) && /"openai"/.test(readFileSync(keys, 'utf8'))

t.test('fresh machine: cordon up, cordon chat, no key -> a clear error in the chat', { skip: haveKey ? `${keys} holds an openai key on this host; this test needs none` : false }, async (t) => {
  const rt = mkdtempSync('/run/cordon-defaults-')
  const env = { CORDON_RUNTIME_DIR: rt }
  const up = await cli(['up', '--detach'], env, 240_000)
  t.teardown(async () => {
    await cli(['down'], env)
    rmSync(rt, { recursive: true, force: true })
  })
  t.equal(up.code, 0, `cordon up with no configuration${up.code ? `: ${up.stderr}` : ''}`)
  t.match(up.stdout, /engine\s+healthy[\s\S]*router\s+healthy[\s\S]*gateway\s+healthy[\s\S]*agent\s+running/)
  const chat = await cli(['chat', '--control', join(rt, 'gateway.sock'), '-m', 'hello', '--wait', '120'], env, 180_000)
  t.match(chat.stdout + chat.stderr, /no API key set for route openai: run `cordon keys set openai`/, 'the agent relays the router error naming the fix')
  const down = await cli(['down'], env)
  t.equal(down.code, 0)
  t.notOk(existsSync(join(rt, 'state.json')))
})
