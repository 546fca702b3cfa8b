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
  constructor(
    file: string | null,
    private readonly redactor: Redactor,
    dest?: Dest,
  ) {
    this.dest = dest ?? (file ? (pino.destination({ dest: file, sync: false, minLength: 0, mkdir: true }) as unknown as Dest) : null)
  }

  write(rec: AuditRecord): void {
    if (!this.dest) return
    this.dest.write(this.redactor.string(JSON.stringify(rec)) + '\n')
  }

  close(): void {
    try {
      this.dest?.flushSync?.()
    } catch {
      /* not yet open: nothing buffered */
    }
    this.dest?.end?.()
    this.dest = null
  }
}
