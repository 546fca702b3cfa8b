/**
 * Every credential the gateway loads is registered here; redact() replaces each occurrence (and
 * its URL-encoded form) in any string before it reaches a log line, an audit line, an HTTP answer
 * or an error message. Channel libraries put tokens in URLs (Telegram: /bot<token>/method), so
 * errors from them are passed through redact() too.
 */
const secrets = new Set<string>()

export function registerSecret(v: string): void {
  if (v.length >= 4) {
    secrets.add(v)
    const enc = encodeURIComponent(v)
    if (enc !== v) secrets.add(enc)
  }
}

export function redact(s: string): string {
  let out = s
  for (const v of secrets) if (out.includes(v)) out = out.split(v).join('[REDACTED]')
  return out
}

/** Deep-redact any value headed for a log. */
export function redactValue(v: unknown, depth = 0): unknown {
  if (typeof v === 'string') return redact(v)
  if (depth > 6 || v === null || typeof v !== 'object') return v
  if (v instanceof Error) return { type: v.name, message: redact(v.message), code: (v as NodeJS.ErrnoException).code }
  if (Array.isArray(v)) return v.map((x) => redactValue(x, depth + 1))
  const o: Record<string, unknown> = {}
  for (const [k, x] of Object.entries(v)) o[k] = redactValue(x, depth + 1)
  return o
}

export function errorText(e: unknown): string {
  return redact(e instanceof Error ? e.message : String(e))
}
