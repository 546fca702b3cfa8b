import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { spawn } from 'node:child_process'

export const ROOT = resolve(import.meta.dirname, '..', '..')
export const STANDIN = join(ROOT, 'test', 'supervisor', 'fixtures', 'standin.mjs')
export const CLI = [process.execPath, '--import', 'tsx', join(ROOT, 'lib', 'cli', 'main.ts')]

let port = 20000 + (process.pid % 20000)
export const nextPort = () => ++port

/** A temp dir with a cordon.yaml whose components are stand-ins. */
export function standinSetup(extra: { agent?: Record<string, unknown>; env?: Record<string, string>; healthFailures?: number } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'cordon-sup-'))
  const svc = (name: string) => ({
    exec: [process.execPath, STANDIN],
    confine: false,
    env: { STANDIN_NAME: name, ...(extra.env ?? {}) },
    health_interval: 0.2,
    health_failures: extra.healthFailures ?? 2,
    start_timeout: 10,
  })
  const cfg = {
    version: 1,
    runtime_dir: join(dir, 'run'),
    state_dir: join(dir, 'state'),
    log_dir: join(dir, 'logs'),
    policy: join(dir, 'agent.yaml'),
    engine: { ...svc('engine'), listen: `127.0.0.1:${nextPort()}` },
    router: { ...svc('router'), listen: `127.0.0.1:${nextPort()}` },
    gateway: { ...svc('gateway'), agent_listen: `127.0.0.1:${nextPort()}` },
    agent: { command: [process.execPath, STANDIN], confine: false, env: { STANDIN_NAME: 'agent' }, ...(extra.agent ?? {}) },
  }
  writeFileSync(join(dir, 'agent.yaml'), 'version: 1\nnetwork: none\n')
  const file = join(dir, 'cordon.yaml')
  writeFileSync(file, JSON.stringify(cfg, null, 2))
  return { dir, file, runtime: cfg.runtime_dir, state: cfg.state_dir, logs: cfg.log_dir }
}

export function cli(args: string[], env: Record<string, string> = {}, timeoutMs = 60_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const base: Record<string, string | undefined> = { ...process.env }
    delete base.CORDON_RUNTIME_DIR
    const env2 = { ...base, ...env }
    const p = spawn(CLI[0]!, [...CLI.slice(1), ...args], { env: env2 as NodeJS.ProcessEnv, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    p.stdout.on('data', (d) => (stdout += d))
    p.stderr.on('data', (d) => (stderr += d))
    const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs)
    p.on('close', (code) => {
      clearTimeout(t)
      resolve({ code, stdout, stderr })
    })
  })
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export async function until<T>(fn: () => T | Promise<T>, timeoutMs: number, what: string): Promise<T> {
  const end = Date.now() + timeoutMs
  let last: unknown
  while (Date.now() < end) {
    try {
      const v = await fn()
      if (v) return v
    } catch (e) {
      last = e
    }
    await sleep(20)
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`)
}
