/** The operator's commands against a running gateway: status, pair list/approve/deny, chat. */
import t from 'tap'
import { execFile } from 'node:child_process'
import { statSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { promisify } from 'node:util'
import { FakeTelegram } from './fakes/telegram.js'
import { ROOT, echoAgent, spawnGateway, tmpdir, waitOutput } from './helpers.js'

const run = promisify(execFile)
const TOKEN = '123456:TEST-telegram-token-cli'

function cordon(args: string[]) {
  return run(process.execPath, ['--import', 'tsx', path.join(ROOT, 'lib/cli/main.ts'), ...args], { cwd: ROOT, timeout: 90000 }).then(
    (r) => ({ code: 0, out: r.stdout, err: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout, err: e.stderr }),
  )
}

t.test('gateway status, pair list/approve/deny and chat through the CLI', async (t) => {
  const tg = await FakeTelegram.start(TOKEN)
  t.teardown(() => tg.close())
  const dir = tmpdir(t)
  const cfg = path.join(dir, 'gateway.yaml')
  const sock = path.join(dir, 'run', 'ctl.sock')
  writeFileSync(cfg, `channels:\n  - name: tg\n    type: telegram\n    token: { env: TG_TOKEN }\n    api_root: ${tg.apiRoot}\n    poll_timeout_s: 1\n`)
  const gw = spawnGateway(['--config', cfg, '--agent-listen', '127.0.0.1:0', '--control', sock, '--state', path.join(dir, 'state')], { TG_TOKEN: TOKEN })
  t.teardown(() => gw.kill('SIGKILL'))
  const url = (await waitOutput(gw, /agent endpoint (http:\/\/\S+),/, 60000))[1]!
  t.equal(statSync(sock).mode & 0o777, 0o600, 'control socket is owner-only')
  const agent = echoAgent(url)
  t.teardown(agent.stop)

  tg.message({ from: 7, text: 'hi', name: 'Alice' })
  tg.message({ from: 8, text: 'hi', name: 'Mallory' })
  await tg.waitSent(2, 20000)
  const codeOf = (chat: number) => /code is ([A-Z0-9]{8})/.exec(tg.sentTo(chat)[0]!.text)![1]!

  const [status, list] = await Promise.all([cordon(['gateway', 'status', '--control', sock]), cordon(['pair', 'list', '--control', sock])])
  t.equal(status.code, 0, status.err)
  t.match(status.out, /tg\s+telegram\s+healthy/)
  t.match(status.out, /pending pairings: 2/)
  t.match(list.out, new RegExp(`${codeOf(7)}\\s+tg\\s+7\\s+Alice`))
  t.match(list.out, new RegExp(`${codeOf(8)}\\s+tg\\s+8\\s+Mallory`))

  const [ok, no, bad] = await Promise.all([
    cordon(['pair', 'approve', codeOf(7), '--control', sock]),
    cordon(['pair', 'deny', codeOf(8), '--control', sock]),
    cordon(['pair', 'approve', 'ZZZZZZZZ', '--control', sock]),
  ])
  t.match(ok.out, /approved: Alice \(7\) on tg/)
  t.match(no.out, /denied: Mallory \(8\) on tg/)
  t.equal(bad.code, 4)
  t.match(bad.err, /no pending pairing with code ZZZZZZZZ/)

  tg.message({ from: 7, text: 'approved now' })
  tg.message({ from: 8, text: 'denied?' })
  const toAlice = await tg.waitSent(3, 20000, 7) // code, "you are approved", the echo
  t.equal(toAlice[2]!.text, 'echo: approved now')
  await new Promise((r) => setTimeout(r, 1000))
  t.ok(agent.seen.some((m) => m.text === 'approved now'), 'approved sender reaches the agent')
  t.notOk(agent.seen.some((m) => m.sender.id === '8'), 'denied sender does not')

  const chat = await cordon(['chat', '--control', sock, '-m', 'hello from the terminal', '--wait', '30'])
  t.equal(chat.code, 0, chat.err)
  t.equal(chat.out.trim(), 'echo: hello from the terminal')
  const off = await cordon(['gateway', 'status', '--control', path.join(dir, 'nope.sock')])
  t.equal(off.code, 2)
  t.match(off.err, /cannot reach the gateway's control API .*is "cordon gateway" running\?/)
})
