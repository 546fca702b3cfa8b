/**
 * Audit trail: one JSON line per call, written through a buffered SonicBoom (pino's destination)
 * and passed through the redactor, so not even an upstream error message copied into a record can
 * carry a key. Prompt text is recorded only when the config's audit.prompts is true.
 */
import pino from 'pino'
import type { Redactor } from './redact.js'

export interface AuditRecord {
  time: string
  sandbox: string
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

type Dest = { write(s: string): unknown; flushSync?: () => void; end?: () => void }

export class AuditLog {
  private dest: Dest | null
  private timer: NodeJS.Timeout | null = null
  constructor(
    file: string | null,
    private readonly redactor: Redactor,
    dest?: Dest,
  ) {
    // buffered: one write(2) per 8 KiB or per 200 ms, not one per call (the hot path is syscall-bound)
    this.dest = dest ?? (file ? (pino.destination({ dest: file, sync: false, minLength: 8192, mkdir: true }) as unknown as Dest) : null)
    if (!dest && file) {
      this.timer = setInterval(() => {
        try {
          ;(this.dest as { flush?: () => void } | null)?.flush?.()
        } catch {
          /* not open yet */
        }
      }, 200)
      this.timer.unref()
    }
  }

  write(rec: AuditRecord): void {
    if (!this.dest) return
    this.dest.write(this.redactor.string(JSON.stringify(rec)) + '\n')
  }

  close(): void {
    if (this.timer) clearInterval(this.timer)
    try {
      this.dest?.flushSync?.()
    } catch {
      /* not yet open: nothing buffered */
    }
    this.dest?.end?.()
    this.dest = null
  }
}
