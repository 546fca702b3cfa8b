/**
 * Append-only JSONL audit log.
 *
 * Every record is written with writeSync on an O_APPEND descriptor the moment it is made, so it is
 * in the kernel's page cache (and survives the engine being killed) before the gate acts on it.
 * Decisions are also made durable against a machine crash before they take effect: `commit()`
 * returns a promise that resolves after fdatasync. fdatasync costs ~0.25 ms on this class of disk,
 * so commits are grouped: every record written while one fdatasync is in flight is covered by the
 * next one (group commit), and a burst of N decisions costs two fdatasyncs, not N.
 * `append()` writes without waiting (repeats of a decision already made durable on the same
 * connection, reloads, approvals); a timer fdatasyncs those within `lazyMs`.
 * `appendSoon()` is for connection-end records (bytes and duration): they are not decisions, so
 * they are not worth a write(2) of their own on the request path; they go to the file with the
 * next record written or within `soonMs` (20 ms), whichever comes first, and on close. A kill -9
 * can lose at most that window of end records, never a decision.
 */
import fs from 'node:fs'
import path from 'node:path'

export type AuditRecord = Record<string, unknown> & { type: string }

export type SyncMode = 'always' | 'none'

export class AuditLog {
  private fd: number | null = null
  private inFlight = false
  private waiting: Array<() => void> = []
  private nextRound: Array<() => void> = []
  private dirty = false
  private lazyTimer: NodeJS.Timeout | null = null
  /** the last ringSize lines, circular: ring[(ringHead + i) % ringSize] */
  private readonly ring: string[] = []
  private ringHead = 0
  private soon: string[] = []
  private soonTimer: NodeJS.Timeout | null = null
  private readonly soonMs = 20
  private readonly followers = new Set<(line: string, rec: AuditRecord) => void>()
  fsyncs = 0
  records = 0

  constructor(
    readonly file: string | null,
    readonly sync: SyncMode = 'always',
    private readonly ringSize = 1000,
    private readonly lazyMs = 200,
  ) {
    if (file) {
      fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 })
      this.fd = fs.openSync(file, 'a', 0o600)
    }
  }

  private write(rec: AuditRecord, soon = false): string {
    const line = JSON.stringify(rec)
    if (this.fd !== null) {
      if (soon) {
        this.soon.push(line)
        if (!this.soonTimer) {
          this.soonTimer = setTimeout(() => this.writeSoon(), this.soonMs)
          this.soonTimer.unref()
        }
      } else {
        // records waiting for a write go first, in the order they were made
        const text = this.soon.length ? this.takeSoon() + line + '\n' : line + '\n'
        fs.writeSync(this.fd, text)
        this.dirty = true
      }
    }
    this.records++
    if (this.ring.length < this.ringSize) this.ring.push(line)
    else {
      this.ring[this.ringHead] = line
      this.ringHead = (this.ringHead + 1) % this.ringSize
    }
    this.emit(line, rec)
    return line
  }

  private takeSoon(): string {
    const text = this.soon.join('\n') + '\n'
    this.soon = []
    if (this.soonTimer) clearTimeout(this.soonTimer)
    this.soonTimer = null
    return text
  }

  private writeSoon(): void {
    this.soonTimer = null
    if (this.fd === null || !this.soon.length) return
    fs.writeSync(this.fd, this.takeSoon())
    this.dirty = true
    this.scheduleLazy()
  }

  private emit(line: string, rec: AuditRecord): void {
    for (const f of this.followers) {
      try {
        f(line, rec)
      } catch {
        /* a broken follower must not break auditing */
      }
    }
  }

  /** Write now; resolve once the record is on stable storage (group commit). */
  commit(rec: AuditRecord): Promise<void> {
    this.write(rec)
    if (this.fd === null || this.sync === 'none') return Promise.resolve()
    return new Promise<void>((resolve) => {
      if (this.inFlight) this.nextRound.push(resolve)
      else {
        this.waiting.push(resolve)
        this.flush()
      }
    })
  }

  /** Write now (survives an engine crash); fdatasync lazily. */
  append(rec: AuditRecord): void {
    this.write(rec)
    this.scheduleLazy()
  }

  /** Write with the next record or within soonMs (connection-end records); fdatasync lazily. */
  appendSoon(rec: AuditRecord): void {
    this.write(rec, true)
  }

  private scheduleLazy(): void {
    if (this.fd !== null && this.sync !== 'none' && !this.lazyTimer) {
      this.lazyTimer = setTimeout(() => {
        this.lazyTimer = null
        if (!this.inFlight && this.dirty) this.flush()
      }, this.lazyMs)
      this.lazyTimer.unref()
    }
  }

  private flush(): void {
    if (this.fd === null) return
    this.inFlight = true
    this.dirty = false
    const batch = this.waiting
    this.waiting = []
    this.fsyncs++
    fs.fdatasync(this.fd, () => {
      // an fdatasync error (EIO) cannot be retried meaningfully; the records were written and
      // the next fdatasync will report again. Resolve so the gate does not hang.
      this.inFlight = false
      for (const r of batch) r()
      if (this.nextRound.length) {
        this.waiting = this.nextRound
        this.nextRound = []
        this.flush()
      } else if (this.dirty) {
        this.scheduleLazy()
      }
    })
  }

  tail(n: number): string[] {
    if (n <= this.ring.length || this.fd === null || !this.file) {
      const ordered = this.ring.length < this.ringSize ? this.ring : [...this.ring.slice(this.ringHead), ...this.ring.slice(0, this.ringHead)]
      return ordered.slice(-n)
    }
    if (this.soon.length) this.writeSoon()
    return tailFile(this.file, n)
  }

  follow(f: (line: string, rec: AuditRecord) => void): () => void {
    this.followers.add(f)
    return () => this.followers.delete(f)
  }

  /**
   * Log rotation (logrotate's default `create` mode renames the file, then signals us): write
   * what is pending to the file we hold, make it durable, then continue in a file opened anew at
   * the configured path. Nothing is lost between the two: every record is written to one of them.
   * Returns false (and keeps the old file) when the path cannot be opened.
   */
  reopen(): boolean {
    if (this.fd === null || !this.file) return false
    let next: number
    try {
      fs.mkdirSync(path.dirname(this.file), { recursive: true, mode: 0o700 })
      next = fs.openSync(this.file, 'a', 0o600)
    } catch {
      return false
    }
    const old = this.fd
    if (this.soon.length) fs.writeSync(old, this.takeSoon())
    try {
      fs.fdatasyncSync(old) // covers every record an fdatasync in flight on it would have
    } catch {
      /* the records were written; an EIO here would repeat on any retry */
    }
    this.fd = next
    fs.closeSync(old)
    return true
  }

  close(): void {
    if (this.lazyTimer) clearTimeout(this.lazyTimer)
    if (this.fd !== null && this.soon.length) fs.writeSync(this.fd, this.takeSoon())
    if (this.fd !== null) {
      try {
        fs.fdatasyncSync(this.fd)
      } catch {
        /* closing anyway */
      }
      fs.closeSync(this.fd)
      this.fd = null
    }
  }
}

/** The last n lines of a JSONL file (reads at most the last 8 MiB). */
export function tailFile(file: string, n: number): string[] {
  let fd: number
  try {
    fd = fs.openSync(file, 'r')
  } catch {
    return []
  }
  try {
    const size = fs.fstatSync(fd).size
    const want = Math.min(size, 8 * 1024 * 1024)
    const buf = Buffer.alloc(want)
    fs.readSync(fd, buf, 0, want, size - want)
    const lines = buf.toString('utf8').split('\n').filter((l) => l.length > 0)
    if (want < size) lines.shift() // first line may be cut
    return lines.slice(-n)
  } finally {
    fs.closeSync(fd)
  }
}
