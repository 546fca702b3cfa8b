/**
 * The gateway's JSONL audit trail: one line per inbound message (with its outcome), reply and
 * pairing decision. Message text only when the operator sets audit.include_text. Lines go through
 * redact(). Appended with O_APPEND; not fsync'd per line (the queues are the durable record).
 */
import { createWriteStream, mkdirSync, type WriteStream } from 'node:fs'
import path from 'node:path'
import { redactValue } from './redact.js'

export type InboundOutcome = 'delivered' | 'duplicate' | 'pairing' | 'refused' | 'rate-limited' | 'too-large' | 'ignored' | 'malformed'

export class Audit {
  private out: WriteStream | null = null
  readonly recent: Record<string, unknown>[] = []
  constructor(file: string | undefined, readonly includeText: boolean) {
    if (file) {
      mkdirSync(path.dirname(path.resolve(file)), { recursive: true })
      this.out = createWriteStream(file, { flags: 'a', mode: 0o600 })
    }
  }

  write(event: string, fields: Record<string, unknown>): void {
    const line = redactValue({ ts: new Date().toISOString(), component: 'gateway', event, ...fields }) as Record<string, unknown>
    if (!this.includeText) delete line.text
    this.recent.push(line)
    if (this.recent.length > 200) this.recent.shift()
    this.out?.write(JSON.stringify(line) + '\n')
  }

  close(): Promise<void> {
    return new Promise((resolve) => (this.out ? this.out.end(resolve) : resolve()))
  }
}
