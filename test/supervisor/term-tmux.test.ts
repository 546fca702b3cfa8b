// The real `cordon term` in a real terminal (tmux): a request waits in the engine, the operator
// presses `a` on it, the request goes through; capture-pane reads what the screen showed.
// The engine is the real one; router, gateway and agent are stand-ins (fast to start).
// (generous waits: on a loaded 2-core CI box starting cordon up and cordon term through tsx takes tens of seconds)
import t from 'tap'
import { execFileSync, spawn } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { CLI, cli, standinSetup, until } from './helpers.js'

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

  // a client asks for an unlisted host through the gate: it waits
  const gate = raw.engine.listen as string
  const client = spawn('curl', ['-s', '-m', '170', '-x', `http://${gate}`, `http://upstream.test:${port}/`], { stdio: ['ignore', 'pipe', 'pipe'] })
  let body = ''
  client.stdout.on('data', (d) => (body += d))
  const done = once(client, 'close')

  const session = `cordon-term-${process.pid}`
  const cmd = [...CLI, 'term', '-f', s.file].map((a) => `'${a}'`).join(' ')
  execFileSync('tmux', ['new-session', '-d', '-s', session, '-x', '160', '-y', '48', cmd])
  t.teardown(() => {
    try {
      execFileSync('tmux', ['kill-session', '-t', session])
    } catch {
      /* gone */
    }
  })
  const screen = () => execFileSync('tmux', ['capture-pane', '-p', '-t', session], { encoding: 'utf8' })
  const shown = await until(() => /› \S+\s+upstream\.test:\d+/.test(screen()) && screen(), 150_000, 'the pending request on screen')
  t.match(shown, /Pending approvals \(1\)/)
  t.match(shown, /engine\s+healthy/)
  execFileSync('tmux', ['send-keys', '-t', session, 'a'])
  const after = await until(() => /approved \S+ \(upstream\.test:\d+\) for this session/.test(screen()) && screen(), 20_000, 'the approval on screen')
  t.match(after, /Pending approvals \(0\)/)
  await done
  t.equal(body, 'through', 'the waiting request went through after the key press')
  execFileSync('tmux', ['send-keys', '-t', session, '?'])
  t.match(await until(() => /approve and persist/.test(screen()) && screen(), 10_000, 'help'), /cordon approve ID --persist/)
  execFileSync('tmux', ['send-keys', '-t', session, 'x'])
  execFileSync('tmux', ['send-keys', '-t', session, 'q'])
  await until(() => {
    try {
      execFileSync('tmux', ['has-session', '-t', session], { stdio: 'ignore' })
      return false
    } catch {
      return true
    }
  }, 10_000, 'cordon term to quit on q')
  t.pass('q quits')
})
