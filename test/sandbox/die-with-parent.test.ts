/**
 * A sandbox never outlives `cordon run`: when the CLI is killed, even with SIGKILL (which it
 * cannot forward), the confined program is killed too (PR_SET_PDEATHSIG set by cordon-exec).
 * Without it an orphaned agent would keep running, unsupervised, with its workspace.
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..')
// one process (not tsx's cli.mjs, which runs the CLI in a child of its own): the kill must hit cordon run itself
const cli = ['--import', import.meta.resolve('tsx'), join(root, 'lib', 'cli', 'main.ts')]
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (cond()) return true
    await sleep(50)
  }
  return cond()
}

const alive = (pid: number) => {
  try {
    // a zombie still has /proc/<pid>; count it dead
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'))
  } catch {
    return false
  }
}

t.test('SIGKILL of cordon run kills the confined program', async (t) => {
  const ws = mkdtempSync(join('/var/tmp', 'cordon-dwp-'))
  const c = spawn(process.execPath, [...cli, 'run', '--workspace', ws, '--', 'sh', '-c', 'echo $$ > pid; exec sleep 300'], { cwd: ws, stdio: 'ignore' })
  const pidFile = join(ws, 'pid')
  t.ok(await until(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() !== '', 60_000), 'the confined program started')
  const pid = Number(readFileSync(pidFile, 'utf8'))
  t.ok(alive(pid), `confined program ${pid} is running`)
  c.kill('SIGKILL')
  t.ok(await until(() => !alive(pid), 10_000), 'it is gone after the CLI was killed')
  if (alive(pid)) process.kill(pid, 'SIGKILL')
})
