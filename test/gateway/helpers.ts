/** Test helpers: a gateway in this process (or a child), an echo agent on the real client. */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { pino } from 'pino'
import { Gateway, parseConfig } from '../../lib/gateway/index.js'
import { inbox, type Message } from '../../lib/agent/index.js'

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')

export function tmpdir(t: { teardown(fn: () => void): void }, prefix = 'cordon-gw-'): string {
  const d = mkdtempSync(path.join(os.tmpdir(), prefix))
  t.teardown(() => rmSync(d, { recursive: true, force: true }))
  return d
}

/** A logger that keeps lines in memory so tests can assert on them. */
export function memoryLogger() {
  const lines: Record<string, unknown>[] = []
  const stream = { write: (s: string) => void lines.push(JSON.parse(s)) }
  return { logger: pino({ level: 'debug' }, stream), lines, text: () => lines.map((l) => String(l.msg)).join('\n') }
}

export async function startGateway(t: { teardown(fn: () => unknown): void }, cfg: Record<string, unknown>, opts: { dir?: string; env?: NodeJS.ProcessEnv } = {}) {
  const dir = opts.dir ?? tmpdir(t)
  const file = path.join(dir, 'gateway.yaml')
  const text = JSON.stringify(cfg, null, 2)
  writeFileSync(file, text)
  const mem = memoryLogger()
  const gw = await Gateway.start({
    config: parseConfig(text, file),
    agentListen: '127.0.0.1:0',
    control: path.join(dir, 'control.sock'),
    stateDir: path.join(dir, 'state'),
    auditFile: path.join(dir, 'audit.jsonl'),
    env: opts.env ?? {},
    logger: mem.logger,
  })
  t.teardown(() => gw.stop())
  return { gw, dir, logs: mem, control: path.join(dir, 'control.sock'), audit: path.join(dir, 'audit.jsonl') }
}

/** An agent on the real client that answers every message with `reply(msg)`. */
export function echoAgent(url: string, reply: (m: Message) => string | null = (m) => `echo: ${m.text}`, opts: { wait?: number } = {}) {
  const ac = new AbortController()
  const seen: Message[] = []
  const done = (async () => {
    for await (const m of inbox({ url, wait: opts.wait ?? 1, signal: ac.signal })) {
      seen.push(m)
      const r = reply(m)
      if (r !== null) await m.reply(r)
    }
  })().catch((e) => {
    if (!ac.signal.aborted) throw e
  })
  return {
    seen,
    stop: async () => {
      ac.abort()
      await done
    },
  }
}

/** Run the gateway CLI in a child process (for kill -9 tests). */
export function spawnGateway(args: string[], env: NodeJS.ProcessEnv): ChildProcess & { output: () => string } {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'lib/cli/main.ts'), 'gateway', ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  child.stdout!.on('data', (d) => (out += d))
  child.stderr!.on('data', (d) => (out += d))
  return Object.assign(child, { output: () => out })
}

export async function waitOutput(child: { output(): string; exitCode: number | null }, re: RegExp, timeoutMs = 20000): Promise<RegExpExecArray> {
  const end = Date.now() + timeoutMs
  for (;;) {
    const m = re.exec(child.output())
    if (m) return m
    if (child.exitCode !== null) throw new Error(`gateway exited (${child.exitCode}) before ${re}: ${child.output()}`)
    if (Date.now() > end) throw new Error(`timed out waiting for ${re} in gateway output: ${child.output()}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

export { waitFor } from './fakes/util.js'
