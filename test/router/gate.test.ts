/**
 * The agent's real path: the official openai client inside "the sandbox" reaches
 * http://inference.local only through the egress gate (lib/engine), which hands inference.local to
 * the router, which adds the key and calls the fake provider. Both proxy styles agents use:
 * a CONNECT tunnel to inference.local:80 (undici's ProxyAgent) and an absolute-URI request.
 */
import t from 'tap'
import fs from 'node:fs'
import http from 'node:http'
import path from 'node:path'
import OpenAI from 'openai'
import { fetch as undiciFetch, ProxyAgent } from 'undici'
import { Engine } from '../../lib/engine/engine.js'
import { FakeProvider } from './fake-provider.js'
import { startRouter, REAL_KEY } from './helpers.js'

const fake = await FakeProvider.start({ expectKey: REAL_KEY })
const h = await startRouter(`
routes:
  - name: fast
    models: [gpt-fast]
    targets: [{ provider: openai, base_url: ${fake.baseUrl}, model: up, key: { store: openai } }]
`)
const routerAddr = h.router.addresses()[0]!
const policyFile = path.join(h.dir, 'policy.yaml')
fs.writeFileSync(policyFile, 'network:\n  mode: proxy\n  unlisted: deny\n  allow: []\n')
const engine = new Engine({
  policyFile,
  listen: { host: '127.0.0.1', port: 0 },
  router: { host: routerAddr.slice(0, routerAddr.lastIndexOf(':')), port: Number(routerAddr.slice(routerAddr.lastIndexOf(':') + 1)) },
  audit: null,
  watch: false,
  identify: 'none',
})
const gate = await engine.start()
t.teardown(async () => {
  await engine.stop()
  await h.close()
  await fake.close()
})
const proxyUrl = `http://127.0.0.1:${gate.port}`

t.test('openai client through the gate (CONNECT inference.local:80), streamed and not', async (t) => {
  const agent = new ProxyAgent(proxyUrl)
  const openai = new OpenAI({
    baseURL: 'http://inference.local/v1',
    apiKey: 'dummy',
    maxRetries: 0,
    fetch: ((url: string, init: Record<string, unknown>) => undiciFetch(url, { ...init, dispatcher: agent } as never)) as never,
  })
  const r = await openai.chat.completions.create({ model: 'gpt-fast', messages: [{ role: 'user', content: 'hi' }] })
  t.equal(r.choices[0]!.message.content, 'hello from fake')
  let text = ''
  for await (const c of await openai.chat.completions.create({ model: 'gpt-fast', messages: [{ role: 'user', content: 'hi' }], stream: true })) text += c.choices[0]?.delta?.content ?? ''
  t.equal(text, 'hello from fake')
  t.equal(fake.requests.at(-1)!.headers.authorization, `Bearer ${REAL_KEY}`)
  await agent.close()
})

t.test('absolute-URI request through the gate', async (t) => {
  const body = JSON.stringify({ model: 'gpt-fast', messages: [] })
  const out = await new Promise<{ status: number; text: string }>((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: gate.port, method: 'POST', path: 'http://inference.local/v1/chat/completions', headers: { host: 'inference.local', 'content-type': 'application/json', authorization: 'Bearer dummy' } }, (res) => {
      let s = ''
      res.on('data', (d) => (s += d))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: s }))
    })
    req.on('error', reject)
    req.end(body)
  })
  t.equal(out.status, 200, out.text)
  t.match(out.text, /hello from fake/)
  t.notOk(out.text.includes(REAL_KEY))
})
