// The real `cordon term` in a real terminal (tmux): a request waits in the engine, the operator
// presses `a` on it, the request goes through; capture-pane reads what the screen showed.
// The engine is the real one; router, gateway and agent are stand-ins (fast to start).
// Hermetic on purpose: a tmux server of its own (-L, no config file), the pane's environment and
// working directory given explicitly (a tmux server that already runs on the machine would
// otherwise hand the pane its own environment), and the waiting client is Node's http (curl
// obeys NO_PROXY/no_proxy from the environment and could bypass the gate). On a timeout the
// failure carries the screen, the client's state and the tail of the engine's log.
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { CLI, ROOT, cli, standinSetup, until } from './helpers.js'

let tmux = true
try {
  execFileSync('tmux', ['-V'])
} catch {
  tmux = false
}

t.test('approve a pending request with one key in cordon term', { skip: tmux ? false : 'tmux is not installed', timeout: 400_000 }, async (t) => {
  const upstream = http.createServer((_q, r) => r.end('through'))
  upstream.listen(0, '127.0.0.1')
  await once(upstream, 'listening')
  const port = (upstream.address() as AddressInfo).port
  t.teardown(() => upstream.close())

  const s = standinSetup()
  const raw = JSON.parse(readFileSync(s.file, 'utf8'))
  writeFileSync(raw.policy, `version: 1\nfilesystem:\n  workspace: ${s.dir}\nnetwork:\n  mode: proxy\n  unlisted: ask\n  allow:\n    - { cidr: 127.0.0.1/32, ports: [${port}] }\n`)
  raw.engine = { listen: raw.engine.listen, confine: false, args: ['--resolve', 'upstream.test=127.0.0.1', '--ask-timeout', '170'], start_timeout: 60 }
  writeFileSync(s.file, JSON.stringify(raw))
  const up = await cli(['up', '-f', s.file, '--detach'], {}, 120_000)
  t.equal(up.code, 0, up.stderr)
  t.teardown(() => cli(['down', '-f', s.file]))

  // a client asks for an unlisted host through the gate (absolute URL, proxy style): it waits
  const [gateHost, gatePort] = (raw.engine.listen as string).split(':')
  let body = ''
  let clientState = 'sent, waiting for an answer'
  const done = new Promise<void>((resolve) => {
    const req = http.get({ host: gateHost, port: Number(gatePort), path: `http://upstream.test:${port}/`, headers: { host: `upstream.test:${port}` }, agent: false }, (res) => {
      clientState = `answered ${res.statusCode}`
      res.setEncoding('utf8')
      res.on('data', (d) => (body += d))
      res.on('end', () => resolve())
    })
    req.setTimeout(170_000, () => req.destroy(new Error('client timeout')))
    req.on('error', (e) => {
      clientState = `failed: ${e.message}`
      resolve()
    })
  })

  const server = `cordon-test-${process.pid}`
  const session = 'term'
  const tm = (...args: string[]) => execFileSync('tmux', ['-L', server, '-f', '/dev/null', ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  const env: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/root', LANG: 'C.UTF-8', TERM: 'tmux-256color' }
  const cmd = ['env', '-i', ...Object.entries(env).map(([k, v]) => `${k}=${v}`), ...CLI, 'term', '-f', s.file].map((a) => `'${a}'`).join(' ')
  tm('new-session', '-d', '-s', session, '-x', '160', '-y', '48', '-c', ROOT, cmd)
  t.teardown(() => {
    try {
      tm('kill-server')
    } catch {
      /* gone */
    }
  })
  const screen = () => tm('capture-pane', '-p', '-t', session)
  const diagnose = async <T>(p: Promise<T>): Promise<T | undefined> => {
    try {
      return await p
    } catch (e) {
      let shot = '(no screen)'
      try {
        shot = screen()
      } catch (err) {
        shot = `(capture-pane failed: ${(err as Error).message})`
      }
      const logs = existsSync(s.logs) ? readdirSync(s.logs).filter((f) => f.startsWith('engine')) : []
      const tail = logs.map((f) => `--- ${f}\n${readFileSync(join(s.logs, f), 'utf8').split('\n').slice(-15).join('\n')}`).join('\n')
      // the extra fields land in the failure's YAML, which scripts/tap-summary.mjs prints
      t.fail((e as Error).message, { screen: shot, client: clientState, engineLog: tail })
      return undefined
    }
  }
  const shown = await diagnose(until(() => /› \S+\s+upstream\.test:\d+/.test(screen()) && screen(), 150_000, 'the pending request on screen'))
  if (!shown) return
  t.match(shown, /Pending approvals \(1\)/)
  t.match(shown, /engine\s+healthy/)
  tm('send-keys', '-t', session, 'a')
  const after = await diagnose(until(() => /approved \S+ \(upstream\.test:\d+\) for this session/.test(screen()) && screen(), 20_000, 'the approval on screen'))
  if (!after) return
  t.match(after, /Pending approvals \(0\)/)
  await done
  t.equal(body, 'through', `the waiting request went through after the key press (client ${clientState})`)
  tm('send-keys', '-t', session, '?')
  const help = await diagnose(until(() => /approve and persist/.test(screen()) && screen(), 10_000, 'help'))
  if (!help) return
  t.match(help, /cordon approve ID --persist/)
  tm('send-keys', '-t', session, 'x')
  tm('send-keys', '-t', session, 'q')
  await until(() => {
    try {
      tm('has-session', '-t', session)
      return false
    } catch {
      return true
    }
  }, 10_000, 'cordon term to quit on q')
  t.pass('q quits')
})
