/**
 * Gateway benchmark: a fake Telegram on loopback, an echo agent, and the message round trip.
 *   baseline: the echo agent talks to the fake Telegram directly (getUpdates + sendMessage)
 *   gateway:  fake Telegram -> gateway (durable queues, fsync) -> agent client -> gateway -> fake
 * Prints throughput (messages/s, a burst of N) and per-message latency (p50/p99, one at a time),
 * both measured in this run, and the ratios / the latency the gateway adds.
 * Run: npx tsx bench/gateway.ts [burst=300] [sequential=100]
 */
import { closeSync, fdatasyncSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Api } from 'grammy'
import { pino } from 'pino'
import { FakeTelegram } from '../test/gateway/fakes/telegram.js'
import { Gateway, parseConfig } from '../lib/gateway/index.js'
import { inbox } from '../lib/agent/index.js'

const BURST = Number(process.argv[2] ?? 300)
const SEQ = Number(process.argv[3] ?? 100)
const SENDERS = 30 // the burst comes from this many private chats (replies within one chat go in order)
const TOKEN = '123456:BENCH-token'

interface Echo {
  stop(): Promise<void>
}

/** The baseline: an echo bot on the channel API itself. */
function directEcho(tg: FakeTelegram): Echo {
  const api = new Api(TOKEN, { apiRoot: tg.apiRoot })
  const ac = new AbortController()
  const done = (async () => {
    let offset = 0
    while (!ac.signal.aborted) {
      const ups = await api.getUpdates({ offset, timeout: 30 }, ac.signal as never).catch(() => [])
      for (const u of ups) {
        offset = u.update_id + 1
        if (u.message?.text) await api.sendMessage(u.message.chat.id, `echo: ${u.message.text}`)
      }
    }
  })()
  return { stop: async () => (ac.abort(), await done) }
}

function gatewayEcho(url: string): Echo {
  const ac = new AbortController()
  const done = (async () => {
    for await (const m of inbox({ url, wait: 30, max: 50, signal: ac.signal })) await m.reply(`echo: ${m.text}`)
  })().catch(() => {})
  return { stop: async () => (ac.abort(), await done) }
}

async function measure(tg: FakeTelegram, label: string) {
  // warm-up
  const base = tg.sent.length
  for (let i = 0; i < 20; i++) tg.message({ from: 1001, text: `warm ${i}` })
  await waitCount(tg, base + 20)
  // throughput: a burst
  const b0 = tg.sent.length
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  for (let i = 0; i < BURST; i++) tg.message({ from: 1001 + (i % SENDERS), text: `burst ${i}` })
  await waitCount(tg, b0 + BURST)
  const secs = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  const cpuMs = (cpu.user + cpu.system) / 1000 / BURST
  // latency: one message at a time
  const lat: number[] = []
  for (let i = 0; i < SEQ; i++) {
    const n = tg.sent.length
    const s = performance.now()
    tg.message({ from: 1001, text: `seq ${i}` })
    await waitCount(tg, n + 1)
    lat.push(performance.now() - s)
  }
  lat.sort((a, b) => a - b)
  const q = (p: number) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))]!
  const r = { label, rate: BURST / secs, p50: q(0.5), p99: q(0.99), cpuMs }
  console.log(`${label.padEnd(9)} ${r.rate.toFixed(0).padStart(6)} msg/s (burst of ${BURST} from ${SENDERS} chats, ${cpuMs.toFixed(2)} ms CPU/msg for everything in this process)   latency p50 ${r.p50.toFixed(2)} ms  p99 ${r.p99.toFixed(2)} ms  (${SEQ} sequential)`)
  return r
}

function waitCount(tg: FakeTelegram, n: number): Promise<void> {
  return new Promise((resolve) => {
    if (tg.sent.length >= n) return resolve()
    tg.onSent = () => {
      if (tg.sent.length >= n) {
        tg.onSent = undefined
        resolve()
      }
    }
  })
}

function fsyncCost(dir: string) {
  const fd = openSync(path.join(dir, 'fsync-probe'), 'a')
  const d: number[] = []
  for (let i = 0; i < 50; i++) {
    const t = performance.now()
    writeSync(fd, 'x'.repeat(300) + '\n')
    fdatasyncSync(fd)
    d.push(performance.now() - t)
  }
  closeSync(fd)
  d.sort((a, b) => a - b)
  return { p50: d[25]!, p90: d[45]! }
}

async function main() {
  console.log(`gateway benchmark: ${os.cpus().length} CPUs, load ${os.loadavg()[0]!.toFixed(2)}, node ${process.version}`)
  // baseline
  const tg1 = await FakeTelegram.start(TOKEN)
  const d = directEcho(tg1)
  const direct = await measure(tg1, 'direct')
  await d.stop()
  await tg1.close()

  // through the gateway
  const tg2 = await FakeTelegram.start(TOKEN)
  const dir = mkdtempSync(path.join(os.tmpdir(), 'cordon-gw-bench-'))
  const file = path.join(dir, 'gateway.yaml')
  const text = JSON.stringify({ limits: { rate_per_minute: 0 }, agent: { max_batch: 50 }, channels: [{ name: 'tg', type: 'telegram', token: { env: 'T' }, api_root: tg2.apiRoot, poll_timeout_s: 30, allow: Array.from({ length: SENDERS }, (_, i) => 1001 + i) }] })
  writeFileSync(file, text)
  const gw = await Gateway.start({ config: parseConfig(text, file), agentListen: '127.0.0.1:0', stateDir: path.join(dir, 'state'), env: { T: TOKEN }, logger: pino({ level: 'warn' }) })
  const a = gatewayEcho(gw.agentUrl)
  const through = await measure(tg2, 'gateway')
  await a.stop()
  await gw.stop()
  await tg2.close()
  const fs = fsyncCost(dir)
  rmSync(dir, { recursive: true, force: true })

  console.log('')
  console.log(`throughput ratio gateway/direct: ${(through.rate / direct.rate).toFixed(2)}x; CPU per message ratio: ${(through.cpuMs / direct.cpuMs).toFixed(2)}x`)
  console.log(`latency added by the gateway: p50 +${(through.p50 - direct.p50).toFixed(2)} ms (${(through.p50 / direct.p50).toFixed(2)}x), p99 +${(through.p99 - direct.p99).toFixed(2)} ms (${(through.p99 / direct.p99).toFixed(2)}x)`)
  console.log(`(the gateway path fsyncs each message, reply and ack to its queues; the direct path stores nothing;`)
  console.log(` fdatasync on this disk right now: p50 ${fs.p50.toFixed(2)} ms, p90 ${fs.p90.toFixed(2)} ms)`)
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e)
    process.exit(1)
  },
)
