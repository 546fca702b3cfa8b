import t from 'tap'
import { FakeSlack, slackMessageEvent, slackSign } from './fakes/slack.js'
import { echoAgent, startGateway, waitFor } from './helpers.js'

const SECRET = 'slack-signing-secret-for-tests'

async function setup(t: typeof import('tap').default, mode: 'events' | 'socket' = 'events') {
  const sl = await FakeSlack.start()
  t.teardown(() => sl.close())
  const g = await startGateway(
    t,
    {
      public_listen: '127.0.0.1:0',
      channels: [
        { name: 'sl', type: 'slack', mode, token: { env: 'SLACK_BOT' }, ...(mode === 'events' ? { signing_secret: { env: 'SLACK_SIGNING' } } : { app_token: { env: 'SLACK_APP' } }), api_url: sl.apiUrl, allow: ['U1'] },
      ],
    },
    { env: { SLACK_BOT: sl.token, SLACK_SIGNING: SECRET, SLACK_APP: sl.appToken } },
  )
  await waitFor(() => g.gw.status().channels.find((c) => c.name === 'sl')?.state === 'healthy', 10000, 'slack healthy')
  const post = (body: string, headers: Record<string, string>) => fetch(`${g.gw.publicUrl}/channels/sl`, { method: 'POST', body, headers })
  return { sl, post, ...g }
}

t.test('signed event reaches the agent; reply posted with chat.postMessage', async (t) => {
  const { sl, gw, post } = await setup(t)
  const agent = echoAgent(gw.agentUrl, (m) => `**bold** answer to ${m.text} [docs](https://example.com)`)
  t.teardown(agent.stop)
  const body = JSON.stringify({ type: 'event_callback', event_id: 'Ev1', event: slackMessageEvent({ user: 'U1', text: 'hi slack' }) })
  const r = await post(body, slackSign(SECRET, body))
  t.equal(r.status, 200)
  const [p] = await sl.waitPosts(1)
  t.equal(p!.channel, 'DU1')
  t.equal(p!.text, '*bold* answer to hi slack <https://example.com|docs>', 'Markdown converted to Slack mrkdwn')
  t.equal(agent.seen[0]!.sender.name, 'Real U1')
})

t.test('url_verification challenge is answered', async (t) => {
  const { post } = await setup(t)
  const body = JSON.stringify({ type: 'url_verification', challenge: 'chal-123' })
  const r = await post(body, slackSign(SECRET, body))
  t.equal(r.status, 200)
  t.equal(await r.text(), 'chal-123')
})

t.test('forged signature, stale timestamp and replayed retries are refused', async (t) => {
  const { sl, gw, post, logs } = await setup(t)
  const agent = echoAgent(gw.agentUrl)
  t.teardown(agent.stop)
  const body = JSON.stringify({ type: 'event_callback', event_id: 'Ev2', event: slackMessageEvent({ user: 'U1', text: 'forged', ts: '100.1' }) })
  const forged = await post(body, slackSign('not-the-secret', body))
  t.equal(forged.status, 401, 'signature with the wrong secret refused')
  const tampered = await post(body.replace('forged', 'FORGED'), slackSign(SECRET, body))
  t.equal(tampered.status, 401, 'body changed after signing refused')
  const old = await post(body, slackSign(SECRET, body, Math.floor(Date.now() / 1000) - 600))
  t.equal(old.status, 401, 'a correctly signed request from 10 minutes ago (replay) refused')
  t.match(logs.text(), /X-Slack-Signature does not match/)
  t.match(logs.text(), /more than 5 minutes off \(possible replay\)/)
  // legit, then the same event again (Slack retry or a replay within the window): delivered once
  const good = JSON.stringify({ type: 'event_callback', event_id: 'Ev3', event: slackMessageEvent({ user: 'U1', text: 'real', ts: '200.2' }) })
  t.equal((await post(good, slackSign(SECRET, good))).status, 200)
  t.equal((await post(good, { ...slackSign(SECRET, good), 'x-slack-retry-num': '1' })).status, 200)
  await sl.waitPosts(1)
  await new Promise((r) => setTimeout(r, 1000))
  t.equal(agent.seen.length, 1, 'the agent saw only the legitimate message, once')
  t.equal(agent.seen[0]!.text, 'real')
})

t.test('chat.postMessage 429 with Retry-After is honoured', async (t) => {
  const { sl, gw, post } = await setup(t)
  const agent = echoAgent(gw.agentUrl)
  t.teardown(agent.stop)
  sl.scripts.push({ kind: '429', retryAfter: 1 })
  const body = JSON.stringify({ type: 'event_callback', event_id: 'Ev4', event: slackMessageEvent({ user: 'U1', text: 'rate me' }) })
  await post(body, slackSign(SECRET, body))
  await waitFor(() => sl.calls.some((c) => c.method === 'chat.postMessage'), 10000, 'first post')
  const first = sl.calls.find((c) => c.method === 'chat.postMessage')!.at
  const [p] = await sl.waitPosts(1, 10000)
  t.ok(p!.at - first >= 950, `waited ${p!.at - first} ms before retrying`)
  t.equal(sl.posts.length, 1)
})

t.test('Socket Mode: events arrive over the WebSocket and are acked after storage', async (t) => {
  const { sl, gw } = await setup(t, 'socket')
  const agent = echoAgent(gw.agentUrl)
  t.teardown(agent.stop)
  const env = sl.pushSocketEvent(slackMessageEvent({ user: 'U1', text: 'over the socket' }))
  const [p] = await sl.waitPosts(1)
  t.equal(p!.text, 'echo: over the socket')
  await waitFor(() => sl.acks.includes(env), 5000, 'envelope acked')
  t.pass('envelope acked')
})
