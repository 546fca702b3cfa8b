import t from 'tap'
import { FakeDiscord } from './fakes/discord.js'
import { echoAgent, startGateway, waitFor } from './helpers.js'

async function setup(t: typeof import('tap').default) {
  const dc = await FakeDiscord.start()
  t.teardown(() => dc.close())
  const g = await startGateway(t, { channels: [{ name: 'dc', type: 'discord', token: { env: 'DC_TOKEN' }, api_url: dc.apiBase, allow: ['42', '43'] }] }, { env: { DC_TOKEN: dc.token } })
  await waitFor(() => g.gw.status().channels.find((c) => c.name === 'dc')?.state === 'healthy', 15000, 'discord healthy')
  return { dc, ...g }
}

t.test('DM through the Gateway WebSocket reaches the agent; reply created over REST', async (t) => {
  const { dc, gw } = await setup(t)
  const agent = echoAgent(gw.agentUrl)
  t.teardown(agent.stop)
  const id = dc.message({ author: '42', content: 'hi discord' })
  const [p] = await dc.waitPosts(1)
  t.equal(p!.channel, 'dm-42')
  t.equal(p!.content, 'echo: hi discord')
  t.equal(p!.reference, id, 'replies reference the message they answer')
  t.ok(p!.nonce, 'sent with a nonce (Discord-side dedupe)')
  t.equal(agent.seen[0]!.sender.name, 'User 42')
})

t.test('guild messages need a mention; replies split at 2000 characters; mass mentions defused', async (t) => {
  const { dc, gw } = await setup(t)
  const agent = echoAgent(gw.agentUrl, () => '@everyone ' + 'word '.repeat(900))
  t.teardown(agent.stop)
  dc.message({ author: '43', content: 'not for the bot', channel: 'g-chan', guild: 'G1' })
  dc.message({ author: '42', content: '<@900000000000000001> hello', channel: 'g-chan', guild: 'G1', mentionBot: true })
  const posts = await dc.waitPosts(3)
  t.ok(posts.every((p) => p.content.length <= 2000), 'each part within 2000')
  t.notMatch(posts[0]!.content, /^@everyone/, '@everyone is defused')
  await new Promise((r) => setTimeout(r, 500))
  t.equal(agent.seen.length, 1, 'only the mention reached the agent')
  t.equal(new Set(posts.map((p) => p.nonce)).size, posts.length, 'one nonce per part')
})

t.test('REST 429 retry_after is honoured', async (t) => {
  const { dc, gw } = await setup(t)
  const agent = echoAgent(gw.agentUrl)
  t.teardown(agent.stop)
  dc.scripts.push({ kind: '429', retryAfter: 1.5 })
  dc.message({ author: '42', content: 'slow' })
  await waitFor(() => dc.calls.some((c) => c.route.startsWith('POST /channels/')), 10000, 'first post')
  const first = dc.calls.find((c) => c.route.startsWith('POST /channels/'))!.at
  const [p] = await dc.waitPosts(1, 15000)
  t.ok(p!.at - first >= 1400, `retried after ${p!.at - first} ms`)
  t.equal(dc.posts.length, 1)
})

t.test('malformed dispatch is refused without a crash', async (t) => {
  const { dc, gw, logs } = await setup(t)
  const agent = echoAgent(gw.agentUrl)
  t.teardown(agent.stop)
  dc.raw('MESSAGE_CREATE', { content: 'no ids' })
  dc.message({ author: '42', content: 'fine' })
  await dc.waitPosts(1)
  t.match(logs.text(), /discord: malformed input refused: MESSAGE_CREATE lacks id/)
})
