/**
 * The engine's audit log: the in-memory ring keeps the last N lines in order after it wraps, and
 * connection-end records (appendSoon) reach the file with the next record, within 20 ms, or on
 * close, always before the record written after them.
 */
import t from 'tap'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { AuditLog } from '../../lib/engine/audit.js'

const setup = (t: { teardown(f: () => void): void }, ring = 5) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cordon-audit-log-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'audit.jsonl')
  const log = new AuditLog(file, 'none', ring)
  const lines = () => fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l))
  return { log, lines, file }
}

t.test('the ring keeps the last lines in order after wrapping', async (t) => {
  const { log } = setup(t, 5)
  for (let i = 0; i < 13; i++) log.append({ type: 'decision', n: i })
  t.same(log.tail(5).map((l) => JSON.parse(l).n), [8, 9, 10, 11, 12])
  t.same(log.tail(3).map((l) => JSON.parse(l).n), [10, 11, 12])
  t.same(log.tail(50).map((l) => JSON.parse(l).n), [...Array(13).keys()], 'beyond the ring: read from the file')
  log.close()
})

t.test('end records go out with the next record, in order', async (t) => {
  const { log, lines } = setup(t)
  log.append({ type: 'decision', n: 1 })
  log.appendSoon({ type: 'end', n: 2 })
  t.same(lines().map((l) => l.n), [1], 'the end record waits')
  const seen: number[] = []
  log.follow((_l, r) => seen.push(r.n as number))
  log.appendSoon({ type: 'end', n: 3 })
  t.same(seen, [3], 'followers see it at once')
  await log.commit({ type: 'decision', n: 4 })
  t.same(lines().map((l) => l.n), [1, 2, 3, 4], 'written with the next record, before it')
  log.close()
})

t.test('end records reach the file within 20 ms on their own, and on close', async (t) => {
  const { log, lines } = setup(t)
  log.appendSoon({ type: 'end', n: 1 })
  await new Promise((r) => setTimeout(r, 80))
  t.same(lines().map((l) => l.n), [1], 'flushed by the timer')
  log.appendSoon({ type: 'end', n: 2 })
  log.close()
  t.same(lines().map((l) => l.n), [1, 2], 'flushed by close')
})

t.test('reopen after a rotation: every record lands in the old file or the new one, none twice, none lost', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cordon-audit-rotate-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'audit.jsonl')
  const log = new AuditLog(file, 'always')
  const commits: Array<Promise<void>> = []
  for (let i = 0; i < 50; i++) commits.push(log.commit({ type: 'decision', n: i }))
  log.appendSoon({ type: 'end', n: 50 }) // pending when the rotation comes
  fs.renameSync(file, `${file}.1`) // what logrotate does, before it signals
  t.ok(log.reopen(), 'reopened')
  for (let i = 51; i < 100; i++) commits.push(log.commit({ type: 'decision', n: i }))
  await Promise.all(commits)
  log.close()
  const read = (f: string) => fs.readFileSync(f, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l).n as number)
  const old = read(`${file}.1`)
  const now = read(file)
  t.same(old, [...Array(51).keys()], 'the rotated file holds everything made before the reopen, the pending end record included')
  t.same(now, Array.from({ length: 49 }, (_, i) => i + 51), 'the new file holds the rest')
  t.equal((fs.statSync(file).mode & 0o777).toString(8), '600', 'the new file is created 0600')
})

t.test('reopen keeps the old file when the path cannot be opened', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cordon-audit-rotate-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'audit.jsonl')
  const log = new AuditLog(file, 'none')
  log.append({ type: 'decision', n: 1 })
  fs.renameSync(file, `${file}.1`)
  fs.mkdirSync(file) // a directory where the file should be: open fails
  t.notOk(log.reopen(), 'reopen says it failed')
  log.append({ type: 'decision', n: 2 })
  log.close()
  t.same(fs.readFileSync(`${file}.1`, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l).n), [1, 2], 'records go on to the old file: none lost')
})
