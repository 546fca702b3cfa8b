/**
 * The router's audit file: when a call's `done` runs relative to write(2) and fdatasync.
 *  - default (sync_ms 100): the record is in the file when done runs (records of one event-loop
 *    turn share a write; a kill -9 cannot lose them: durability.test.ts kills a real router to
 *    prove it), fdatasync follows within the window, one per burst;
 *  - strict (sync_ms 0): done runs only after the fdatasync that covers the record, and a burst
 *    of concurrent calls shares fdatasyncs (group commit);
 *  - close() fdatasyncs and releases every waiter; keys are redacted in the file.
 */
import t from 'tap'
import { mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { AuditLog, type AuditRecord } from '../../lib/router/audit.js'
import { Redactor } from '../../lib/router/redact.js'

const rec = (i: number, extra: Partial<AuditRecord> = {}): AuditRecord => ({
  time: new Date().toISOString(),
  sandbox: 's',
  route: 'r',
  model: 'm',
  upstream_model: 'u',
  target: 't',
  path: '/chat/completions',
  stream: false,
  status: 200,
  tokens_in: i,
  tokens_out: 1,
  cost_usd: 0,
  ttfb_ms: 1,
  total_ms: 2,
  fallback: [],
  ...extra,
})

function setup(t: { teardown(f: () => void): void }) {
  const dir = mkdtempSync(join(tmpdir(), 'cordon-router-audit-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'a', 'audit.jsonl')
  const red = new Redactor()
  red.add('sk-audit-secret-0123456789abcdef')
  return { file, log: new AuditLog(file, red), lines: () => readFileSync(file, 'utf8').split('\n').filter(Boolean) }
}

t.test('default: written before done, fdatasync within the window, one per burst', async (t) => {
  const { log, lines } = setup(t)
  t.equal(log.syncMs, 100)
  let done = 0
  const inFileAtDone: number[] = []
  const all = Array.from({ length: 50 }, (_, i) => new Promise<void>((resolve) => log.commit(rec(i), () => {
    inFileAtDone.push(lines().filter((l) => JSON.parse(l).tokens_in === i).length)
    done++
    resolve()
  })))
  t.equal(done, 0, 'done waits for the write (end of this turn of the event loop)')
  await Promise.all(all)
  t.equal(done, 50, 'every done ran, without waiting for a disk flush')
  t.same(inFileAtDone, Array(50).fill(1), "each record was in the file when its call's done ran")
  t.equal(log.fsyncs, 0, 'no fdatasync yet')
  await new Promise((r) => setTimeout(r, 300))
  t.equal(log.fsyncs, 1, 'one fdatasync covered the burst, within the window')
  await log.close()
})

t.test('strict (sync_ms 0): done only after the fdatasync covering it; a burst shares fdatasyncs', async (t) => {
  const { log, lines } = setup(t)
  log.syncMs = 0
  const order: string[] = []
  const all = Array.from({ length: 40 }, (_, i) => new Promise<void>((resolve) => log.commit(rec(i), () => {
    order.push(`done ${i} after ${log.fsyncs} fdatasync(s)`)
    resolve()
  })))
  t.equal(order.length, 0, 'no done before a fdatasync completed')
  await new Promise((r) => setImmediate(r))
  t.equal(lines().length, 40, 'all records written in one turn')
  await Promise.all(all)
  t.ok(order.every((o) => !o.endsWith('after 0 fdatasync(s)')), 'every done ran after a fdatasync')
  t.ok(log.fsyncs >= 1 && log.fsyncs <= 2, `40 concurrent commits took ${log.fsyncs} fdatasync(s) (group commit)`)
  await log.close()
})

t.test('close() releases waiters, later commits have no file; keys are redacted', async (t) => {
  const { log, lines } = setup(t)
  log.syncMs = 0
  let released = false
  log.commit(rec(1, { error: 'upstream said: invalid key sk-audit-secret-0123456789abcdef' }), () => (released = true))
  await log.close()
  t.ok(released, 'the waiter was released by close()')
  const l = lines()
  t.equal(l.length, 1)
  t.notMatch(l[0]!, /sk-audit-secret/, 'the key never reaches the audit file')
  t.match(l[0]!, /invalid key/)
  let after = false
  log.commit(rec(2), () => (after = true))
  t.ok(after, 'a commit after close completes (nothing to write to)')
})

t.test('audit.sync_ms in router.yaml: default 100, 0 accepted, bad values rejected with file:line', async (t) => {
  const { compileConfig, ConfigError } = await import('../../lib/router/config.js')
  const routes = `routes:\n  - name: m\n    targets: [{ provider: openai, base_url: "http://127.0.0.1:9/v1", model: up, key: { env: NONE } }]\n`
  t.equal(compileConfig(routes, 'router.yaml', { env: {} }).auditSyncMs, 100)
  t.equal(compileConfig(`audit: { sync_ms: 0 }\n${routes}`, 'router.yaml', { env: {} }).auditSyncMs, 0)
  for (const bad of ['-1', '"fast"', '1.5']) {
    let err: unknown = null
    try {
      compileConfig(`audit: { sync_ms: ${bad} }\n${routes}`, 'router.yaml', { env: {} })
    } catch (e) {
      err = e
    }
    t.ok(err instanceof ConfigError, `sync_ms: ${bad} rejected`)
    t.match((err as Error)?.message, /router\.yaml:1:\d+: .*sync_ms/, 'with file:line and the field')
  }
})

for (const syncMs of [100, 0]) {
  t.test(`reopen after a rotation (sync_ms ${syncMs}): each record in exactly one file, none lost, no error reported`, async (t) => {
    const { file, log } = setup(t)
    log.syncMs = syncMs
    const errors: string[] = []
    log.onError = (e) => errors.push(e.message)
    const commit = (i: number) => new Promise<void>((resolve) => log.commit(rec(i), resolve))
    const before = Array.from({ length: 30 }, (_, i) => commit(i)) // still in this turn's batch
    renameSync(file, `${file}.1`)
    t.ok(log.reopen(), 'reopened')
    const after = Array.from({ length: 30 }, (_, i) => commit(30 + i))
    await Promise.all([...before, ...after])
    await log.close()
    const ns = (f: string) => readFileSync(f, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l).tokens_in as number)
    t.same(ns(`${file}.1`), [...Array(30).keys()], 'the rotated file has the records committed before')
    t.same(ns(file), Array.from({ length: 30 }, (_, i) => 30 + i), 'the new file the rest')
    t.same(errors, [], 'the fdatasync still in flight on the old file is not reported as a failure')
  })
}
