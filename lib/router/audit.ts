/**
 * Audit trail: one JSON line per call, passed through the redactor, so not even an upstream error
 * message copied into a record can carry a key. Prompt text is recorded only when the config's
 * audit.prompts is true.
 *
 * Durability: a call's record is on disk (write + fdatasync) before the router finishes the
 * response to the client, so a call the client saw complete is never missing after a kill -9 or
 * a power cut. To keep this cheap the file is written by group commit: records that arrive while
 * a write+fdatasync is in flight are gathered and committed together by the next one (one
 * write(2) and one fdatasync(2) per batch, on the libuv threadpool, not per call on the event
 * loop). The server holds each response's end() until its record's batch is committed.
 */
import { closeSync, fdatasync, fdatasyncSync, mkdirSync, openSync, write, writeSync } from 'node:fs'
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
  private pending: string[] = []
  private waiters: Array<() => void> = []
  private flushing = false
  private idle: Array<() => void> = []
  /** Set by the server: where a failed audit write is reported (the call itself still completes). */
  onError: (e: Error) => void = () => {}

  constructor(
    file: string | null,
    private readonly redactor: Redactor,
    private readonly dest?: Dest,
  ) {
    if (!dest && file) {
      mkdirSync(dirname(file), { recursive: true })
      this.fd = openSync(file, 'a', 0o600)
    }
  }

  /**
   * Append a record; `done` runs once it is durable (at once when there is no audit file or the
   * sink is an in-memory test destination).
   */
  commit(rec: AuditRecord, done: () => void): void {
    const line = this.redactor.string(JSON.stringify(rec)) + '\n'
    if (this.fd === null) {
      this.dest?.write(line)
      done()
      return
    }
    this.pending.push(line)
    this.waiters.push(done)
    if (!this.flushing) this.flush()
  }

  /** Append a record without waiting (compatibility); it is committed with the next batch. */
  write(rec: AuditRecord): void {
    this.commit(rec, () => {})
  }

  private flush(): void {
    const fd = this.fd
    if (fd === null || !this.pending.length) {
      this.flushing = false
      for (const f of this.idle.splice(0)) f()
      return
    }
    this.flushing = true
    const buf = Buffer.from(this.pending.join(''))
    const waiters = this.waiters
    this.pending = []
    this.waiters = []
    const finish = (err: Error | null) => {
      if (err) this.onError(err)
      for (const w of waiters) w()
      this.flush()
    }
    const writeFrom = (off: number) => {
      write(fd, buf, off, buf.length - off, null, (err, n) => {
        if (err) return finish(err)
        if (off + n < buf.length) return writeFrom(off + n)
        fdatasync(fd, (e) => finish(e))
      })
    }
    writeFrom(0)
  }

  /** Commit what is pending and close the file. */
  async close(): Promise<void> {
    if (this.flushing) await new Promise<void>((r) => this.idle.push(r))
    const fd = this.fd
    this.fd = null
    if (fd === null) return
    try {
      if (this.pending.length) {
        const buf = Buffer.from(this.pending.join(''))
        let off = 0
        while (off < buf.length) off += writeSync(fd, buf, off)
        fdatasyncSync(fd)
      }
    } finally {
      for (const w of this.waiters.splice(0)) w()
      this.pending = []
      closeSync(fd)
    }
  }
}
