/**
 * DurableLog: an fsync'd append-only JSON-lines log, one per queue.
 *
 * Why not SQLite: node:sqlite needs Node >= 22.5 and cordon supports Node 20; better-sqlite3 is a
 * native module with its own prebuild matrix, and the gateway is meant to carry no native code.
 * The gateway's queues need only "append a record durably, replay on start, compact now and then",
 * which an append-only log with fdatasync does in ~150 lines with nothing to install.
 *
 * Guarantees:
 *  - append() resolves only after the bytes are on disk (write + fdatasync). Appends that arrive
 *    while a flush is in progress are written together by the next flush (group commit), so one
 *    fsync serves many messages under load.
 *  - A crash can leave a torn last line (no trailing newline, or unparsable). open() drops it and
 *    truncates the file back to the last complete record: a torn record was never acknowledged to
 *    anyone, because append() had not resolved.
 *  - compact() writes the live records to a temp file, fsyncs it, renames it over the log and
 *    fsyncs the directory, so a crash during compaction leaves either the old or the new log.
 */
import { promises as fsp, openSync, closeSync, fsyncSync } from 'node:fs'
import path from 'node:path'

export type LogRecord = Record<string, unknown> & { t: string }

export class DurableLog {
  readonly file: string
  private fh: fsp.FileHandle | null = null
  private pending: { buf: string; resolve: () => void; reject: (e: Error) => void }[] = []
  private flushing: Promise<void> | null = null
  private compacting = false
  /** Number of records in the file (for compaction decisions). */
  records = 0
  private size = 0

  constructor(file: string) {
    this.file = file
  }

  /** Open (creating if needed), replay every complete record, drop a torn tail. */
  async open(): Promise<LogRecord[]> {
    await fsp.mkdir(path.dirname(this.file), { recursive: true, mode: 0o700 })
    let text = ''
    try {
      text = await fsp.readFile(this.file, 'utf8')
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e
    }
    const out: LogRecord[] = []
    let good = 0 // byte offset after the last good record
    let pos = 0
    while (pos < text.length) {
      const nl = text.indexOf('\n', pos)
      if (nl < 0) break // torn tail: no newline
      const line = text.slice(pos, nl)
      let rec: LogRecord | null = null
      try {
        const v = JSON.parse(line) as unknown
        if (v && typeof v === 'object' && typeof (v as LogRecord).t === 'string') rec = v as LogRecord
      } catch {
        rec = null
      }
      if (!rec) break // corrupt record: everything after it is suspect
      out.push(rec)
      pos = nl + 1
      good = Buffer.byteLength(text.slice(0, pos))
    }
    const fullSize = Buffer.byteLength(text)
    this.fh = await fsp.open(this.file, 'a+', 0o600)
    if (good < fullSize) {
      await this.fh.truncate(good)
      await this.fh.datasync()
    }
    this.records = out.length
    this.size = good
    return out
  }

  get bytes(): number {
    return this.size
  }

  /** Append records; resolves once they are durable. */
  append(...recs: LogRecord[]): Promise<void> {
    if (!this.fh) return Promise.reject(new Error(`log ${this.file} is not open`))
    const buf = recs.map((r) => JSON.stringify(r) + '\n').join('')
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ buf, resolve, reject })
      this.records += recs.length
      if (!this.flushing && !this.compacting) this.flushing = this.flush()
    })
  }

  private async flush(): Promise<void> {
    while (this.pending.length) {
      const batch = this.pending
      this.pending = []
      const data = batch.map((b) => b.buf).join('')
      try {
        const fh = this.fh
        if (!fh) throw new Error(`log ${this.file} was closed`)
        await fh.write(data)
        await fh.datasync()
        this.size += Buffer.byteLength(data)
        for (const b of batch) b.resolve()
      } catch (e) {
        for (const b of batch) b.reject(e as Error)
      }
    }
    this.flushing = null
  }

  /** Replace the log with exactly these records, atomically. */
  async compact(recs: LogRecord[]): Promise<void> {
    while (this.flushing) await this.flushing
    if (this.compacting) throw new Error(`log ${this.file}: compaction already running`)
    this.compacting = true
    try {
      await this.rewrite(recs)
    } finally {
      this.compacting = false
      if (this.pending.length && !this.flushing) this.flushing = this.flush()
    }
  }

  private async rewrite(recs: LogRecord[]): Promise<void> {
    const tmp = `${this.file}.compact`
    const data = recs.map((r) => JSON.stringify(r) + '\n').join('')
    const h = await fsp.open(tmp, 'w', 0o600)
    try {
      await h.write(data)
      await h.sync()
    } finally {
      await h.close()
    }
    await fsp.rename(tmp, this.file)
    try {
      const dfd = openSync(path.dirname(this.file), 'r')
      try {
        fsyncSync(dfd)
      } finally {
        closeSync(dfd)
      }
    } catch {
      /* some filesystems refuse fsync on a directory; the rename is still atomic */
    }
    const old = this.fh
    this.fh = await fsp.open(this.file, 'a+', 0o600)
    await old?.close()
    this.records = recs.length + this.pending.length
    this.size = Buffer.byteLength(data)
  }

  async close(): Promise<void> {
    while (this.flushing) await this.flushing
    const fh = this.fh
    this.fh = null
    await fh?.close()
  }
}
