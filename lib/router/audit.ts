/**
 * Audit trail: one JSON line per call, passed through the redactor, so not even an upstream error
 * message copied into a record can carry a key. Prompt text is recorded only when the config's
 * audit.prompts is true.
 *
 * Durability, in two steps:
 *  - a call's record is written (write(2), O_APPEND) before the router finishes the response to the
 *    client. From then on it is in the kernel's page cache: a `kill -9` of the router, or any other
 *    death of the process, cannot lose it. A call the client saw complete is always in the audit.
 *  - fdatasync (against a power cut or a kernel crash) runs off the event loop on a bounded
 *    interval (`audit.sync_ms`, default 100 ms): at most that window of records can be lost to a
 *    power cut. `sync_ms: 0` makes every response wait for the fdatasync that covers its record;
 *    concurrent calls share one fdatasync (group commit), so the strict mode costs one fdatasync
 *    per batch, not per call.
 * The write is synchronous on purpose (a small append to the page cache costs less than a round
 * trip to the threadpool) and batched per turn of the event loop: the records of every call that
 * completed in the same poll phase go out in one write(2) before any of those calls' responses
 * end. No completed call's record exists only in this process's memory.
 */
import { closeSync, fdatasync, fdatasyncSync, mkdirSync, openSync, writeSync } from 'node:fs'
import { dirname } from 'node:path'
import type { Redactor } from './redact.js'

export interface AuditRecord {
  time: string
  sandbox: string
  request_id?: string
  route: string | null
  model: string | null
  upstream_model: string | null
  target: string | null
  path: string
  stream: boolean
  status: number
  tokens_in: number | null
  tokens_out: number | null
  cost_usd: number | null
  ttfb_ms: number | null
  total_ms: number
  fallback: Array<{ target: string; reason: string; status?: number }>
  error?: string
  client_aborted?: boolean
  prompt?: unknown
}

type Dest = { write(s: string): unknown }

export class AuditLog {
  private fd: number | null = null
  /** fdatasync interval in ms; 0 = every commit waits for the fdatasync covering its record */
  syncMs = 100
  private syncing = false
  private dirty = false
  private timer: NodeJS.Timeout | null = null
  /** commits waiting for the fdatasync in flight (strict mode) / for the one after it */
  private waiting: Array<() => void> = []
  private nextRound: Array<() => void> = []
  private idle: Array<() => void> = []
  /** records committed in this turn of the event loop, written together (writeBatch) */
  private batch: string[] = []
  private batchDone: Array<() => void> = []
  private batchScheduled = false
  fsyncs = 0
  /** Set by the server: where a failed audit write is reported (the call itself still completes). */
  onError: (e: Error) => void = () => {}

  constructor(
    private readonly file: string | null,
    private readonly redactor: Redactor,
    private readonly dest?: Dest,
  ) {
    if (!dest && file) {
      mkdirSync(dirname(file), { recursive: true })
      this.fd = openSync(file, 'a', 0o600)
    }
  }

  /**
   * Append a record; `done` runs once it is written (and, with syncMs 0, on stable storage). With
   * no audit file, or an in-memory test destination, `done` runs at once.
   */
  commit(rec: AuditRecord, done: () => void): void {
    const line = this.redactor.string(JSON.stringify(rec)) + '\n'
    if (this.fd === null) {
      this.dest?.write(line)
      done()
      return
    }
    this.batch.push(line)
    this.batchDone.push(done)
    if (!this.batchScheduled) {
      this.batchScheduled = true
      setImmediate(() => this.writeBatch())
    }
  }

  /**
   * One write(2) for every record committed in this turn of the event loop (calls that completed
   * in the same poll phase), then their `done`s: at 200 concurrent calls this saves most of the
   * per-call syscalls, and it delays a response's end by less than a loop turn.
   */
  private writeBatch(): void {
    this.batchScheduled = false
    if (!this.batch.length) return
    const buf = Buffer.from(this.batch.join(''))
    const dones = this.batchDone
    this.batch = []
    this.batchDone = []
    const fd = this.fd
    if (fd === null) {
      // committed while close() waited for an fdatasync: the file is closed now
      for (const d of dones) d()
      return
    }
    try {
      let off = 0
      while (off < buf.length) off += writeSync(fd, buf, off)
      this.dirty = true
    } catch (e) {
      this.onError(e as Error)
    }
    if (this.syncMs > 0) {
      for (const d of dones) d()
      if (!this.syncing) this.schedule()
      return
    }
    if (this.syncing) this.nextRound.push(...dones)
    else {
      this.waiting.push(...dones)
      this.sync()
    }
  }

  /** fdatasync what was written so far; records written meanwhile go to the next round. */
  private sync(): void {
    const fd = this.fd
    if (fd === null || (!this.dirty && !this.waiting.length)) {
      for (const f of this.idle.splice(0)) f()
      return
    }
    this.syncing = true
    this.dirty = false
    const batch = this.waiting
    this.waiting = []
    this.fsyncs++
    fdatasync(fd, (err) => {
      this.syncing = false
      if (err && fd === this.fd) this.onError(err) // not for a file reopen() already synced and closed
      for (const w of batch) w()
      if (this.nextRound.length) {
        this.waiting = this.nextRound
        this.nextRound = []
        this.sync()
      } else if (this.idle.length) {
        for (const f of this.idle.splice(0)) f()
      } else if (this.dirty && this.syncMs > 0) this.schedule()
    })
  }

  private schedule(): void {
    if (this.timer) return
    this.timer = setTimeout(() => {
      this.timer = null
      this.sync()
    }, this.syncMs)
    this.timer.unref()
  }

  /**
   * Log rotation (logrotate renames the file, then signals): what is committed goes to the file we
   * hold, which is made durable, then records continue in a file opened anew at the configured
   * path. Returns false (and keeps the old file) when the path cannot be opened.
   */
  reopen(): boolean {
    if (this.fd === null || !this.file) return false
    let next: number
    try {
      mkdirSync(dirname(this.file), { recursive: true })
      next = openSync(this.file, 'a', 0o600)
    } catch (e) {
      this.onError(e as Error)
      return false
    }
    this.writeBatch()
    const old = this.fd
    try {
      fdatasyncSync(old) // covers every record an fdatasync in flight on it would have
    } catch (e) {
      this.onError(e as Error)
    }
    this.fd = next
    closeSync(old)
    return true
  }

  /** fdatasync what is written and close the file. */
  async close(): Promise<void> {
    this.writeBatch()
    if (this.timer) clearTimeout(this.timer)
    this.timer = null
    if (this.syncing) await new Promise<void>((r) => this.idle.push(r))
    const fd = this.fd
    this.fd = null
    if (fd === null) return
    try {
      fdatasyncSync(fd)
    } catch (e) {
      this.onError(e as Error)
    } finally {
      for (const w of [...this.waiting.splice(0), ...this.nextRound.splice(0)]) w()
      closeSync(fd)
    }
  }
}
