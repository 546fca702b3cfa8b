#!/usr/bin/env node
// The reference agent `cordon up` runs by default: it answers each message from the gateway by
// calling inference.local with the official `openai` client. It holds no key: the privacy router
// adds it. It runs inside the sandbox, so every byte it sends goes through the egress gate
// (HTTP_PROXY), which hands inference.local to the router and gateway.local to the gateway.
//
// Chat commands (for operators trying the system):
//   /fetch URL   fetch a URL through the egress gate and report the status (shows approvals)
//   /reset       forget this conversation's history
//
// Environment: CORDON_GATEWAY_URL (default http://gateway.local), CORDON_INFERENCE_URL (default
// http://inference.local/v1), CORDON_AGENT_MODEL (default gpt-4o-mini), CORDON_AGENT_SYSTEM.
import { mkdirSync, readFileSync, writeFileSync, renameSync } from 'node:fs'
import { join } from 'node:path'
import OpenAI from 'openai'
import { EnvHttpProxyAgent, fetch as undiciFetch } from 'undici'

async function loadInbox() {
  try {
    return (await import('cordon/agent')).inbox
  } catch {
    // a development checkout without dist/: the TypeScript source (run with tsx's loader)
    return (await import('../../lib/agent/index.ts')).inbox
  }
}

const log = (level, msg, extra = {}) =>
  process.stdout.write(JSON.stringify({ level: { info: 30, warn: 40, error: 50 }[level] ?? 30, time: Date.now(), component: 'agent', msg, ...extra }) + '\n')

const dispatcher = new EnvHttpProxyAgent()
const model = process.env.CORDON_AGENT_MODEL || 'gpt-4o-mini'
const system = process.env.CORDON_AGENT_SYSTEM || 'You are a helpful assistant running inside a cordon sandbox. Answer briefly.'
const openai = new OpenAI({
  baseURL: process.env.CORDON_INFERENCE_URL || 'http://inference.local/v1',
  apiKey: 'cordon-no-key-here', // the router strips it and adds the real one
  fetch: undiciFetch,
  fetchOptions: { dispatcher },
  // retries are ours (below): the client's own would also retry the router's deliberate answers
  // (503 "no API key set"), honouring their Retry-After, and keep the user waiting for minutes
  maxRetries: 0,
  timeout: 120_000,
})

// per-conversation history, kept in the workspace so an agent restart keeps context
const stateDir = join(process.env.HOME || process.cwd(), 'conversations')
mkdirSync(stateDir, { recursive: true })
const file = (conv) => join(stateDir, `${Buffer.from(conv).toString('base64url')}.json`)
function history(conv) {
  try {
    return JSON.parse(readFileSync(file(conv), 'utf8'))
  } catch {
    return []
  }
}
function save(conv, h) {
  const f = file(conv)
  writeFileSync(`${f}.tmp`, JSON.stringify(h.slice(-20)))
  renameSync(`${f}.tmp`, f)
}

// The router or the gate restarting (kill -9: back within seconds) shows as a connection error
// or a 502/504 from the gate: retry those for about 30 s. Anything the router itself answered
// (a missing key, a limit, a bad model) is relayed at once.
async function withRetry(fn, rid) {
  let delay = 250
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn()
    } catch (e) {
      const transient = e?.status === undefined || e?.status === 502 || e?.status === 504
      if (!transient || attempt >= 9) throw e
      log('warn', 'inference unreachable, retrying', { request_id: rid, attempt, status: e?.status, err: String(e?.message ?? e) })
      await new Promise((r) => setTimeout(r, delay))
      delay = Math.min(delay * 2, 5000)
    }
  }
}

async function answer(msg) {
  const rid = msg.request_id || msg.id
  const text = msg.text.trim()
  if (text === '/reset') {
    save(msg.conversation, [])
    return 'History cleared.'
  }
  const m = /^\/fetch\s+(\S+)/.exec(text)
  if (m) {
    try {
      const r = await undiciFetch(m[1], { dispatcher, headers: { 'x-cordon-request-id': rid }, signal: AbortSignal.timeout(120_000) })
      const body = (await r.text()).slice(0, 200)
      log('info', 'fetched', { request_id: rid, url: m[1], status: r.status })
      return `GET ${m[1]} -> ${r.status}\n${body}`
    } catch (e) {
      log('warn', 'fetch failed', { request_id: rid, url: m[1], err: String(e?.cause?.message ?? e?.message ?? e) })
      return `GET ${m[1]} failed: ${e?.cause?.message ?? e?.message ?? e}`
    }
  }
  const h = history(msg.conversation)
  h.push({ role: 'user', content: text })
  const t0 = Date.now()
  try {
    const r = await withRetry(() => openai.chat.completions.create({ model, messages: [{ role: 'system', content: system }, ...h] }, { headers: { 'x-cordon-request-id': rid } }), rid)
    const reply = r.choices?.[0]?.message?.content ?? '(empty answer)'
    h.push({ role: 'assistant', content: reply })
    save(msg.conversation, h)
    log('info', 'answered', { request_id: rid, conversation: msg.conversation, model: r.model, ms: Date.now() - t0, tokens_in: r.usage?.prompt_tokens, tokens_out: r.usage?.completion_tokens })
    return reply
  } catch (e) {
    // relay the router's error (e.g. "no API key set for route openai: run `cordon keys set openai`")
    const detail = e?.error?.message ?? e?.message ?? String(e)
    log('warn', 'inference failed', { request_id: rid, status: e?.status, err: detail })
    return `⚠ inference failed${e?.status ? ` (HTTP ${e.status})` : ''}: ${detail}`
  }
}

const inbox = await loadInbox()
const stop = new AbortController()
process.on('SIGTERM', () => stop.abort())
process.on('SIGINT', () => stop.abort())
log('info', 'reference agent ready', { model, gateway: process.env.CORDON_GATEWAY_URL || 'http://gateway.local' })
for await (const msg of inbox({ signal: stop.signal })) {
  const rid = msg.request_id || msg.id
  log('info', 'message', { request_id: rid, conversation: msg.conversation, channel: msg.channel, delivery: msg.delivery })
  const text = await answer(msg)
  await msg.reply(text)
  log('info', 'replied', { request_id: rid, conversation: msg.conversation })
}
log('info', 'reference agent stopped')
