/**
 * Key redaction for every byte that leaves the router towards a client or a log.
 *
 * The Redactor holds every key this process has ever loaded (a key rotated out by a reload is
 * still redacted), in the raw form and in the encoded forms an upstream could echo it in
 * (JSON-escaped, URL-encoded, hex, and base64 / base64url: an echoed `Authorization: Basic` or a
 * debug dump). StreamRedactor handles a key split across chunks: it holds back only the tail of a
 * chunk that is a proper prefix of some key, so ordinary SSE events (ending in "\n\n") pass
 * through without delay.
 *
 * Base64 of a text that contains the key depends on where the key starts modulo 3, so each of the
 * three alignments has its own run of characters that only the key's bytes determine: the
 * encoding of the key's whole 3-byte groups from offset 0, 2 or 1. Those runs are redacted; at
 * most the two characters at each end that mix in neighbouring bytes remain, too little to
 * rebuild a key. Keys shorter than MIN_ENCODED bytes get no encoded forms (their runs would be
 * short enough to occur by chance in ordinary base64 or hex text).
 */

const MIN_ENCODED = 16

/** The base64 runs that only the key's bytes determine, for each alignment (see above). */
function base64Cores(key: Buffer): string[] {
  const out: string[] = []
  for (const skip of [0, 2, 1]) {
    const whole = Math.floor((key.length - skip) / 3) * 3
    if (whole <= 0) continue
    const b64 = key.subarray(skip, skip + whole).toString('base64')
    out.push(b64, b64.replace(/\+/g, '-').replace(/\//g, '_'))
  }
  return out
}

export const REDACTED = '[REDACTED]'
const REDACTED_BUF = Buffer.from(REDACTED)

export class Redactor {
  private secrets: Buffer[] = []
  private strings: string[] = []
  private seen = new Set<string>()
  /** Longest secret length, for bounding the carry. */
  maxLen = 0

  add(key: string | null | undefined): void {
    if (!key || this.seen.has(key)) return
    this.seen.add(key)
    const forms = new Set<string>([key, JSON.stringify(key).slice(1, -1), encodeURIComponent(key)])
    const raw = Buffer.from(key)
    if (raw.length >= MIN_ENCODED) {
      for (const f of base64Cores(raw)) forms.add(f)
      forms.add(raw.toString('hex'))
      forms.add(raw.toString('hex').toUpperCase())
    }
    for (const f of forms) {
      if (!f) continue
      this.strings.push(f)
      this.secrets.push(Buffer.from(f))
      this.maxLen = Math.max(this.maxLen, Buffer.byteLength(f))
    }
    // longest first so a key that contains another key is replaced whole
    const order = this.strings.map((s, i) => i).sort((a, b) => this.strings[b]!.length - this.strings[a]!.length)
    this.strings = order.map((i) => this.strings[i]!)
    this.secrets = order.map((i) => this.secrets[i]!)
  }

  get size(): number {
    return this.seen.size
  }

  /** Replace every secret in a buffer; returns the same buffer when nothing matched. */
  buffer(buf: Buffer): Buffer {
    let out = buf
    for (const s of this.secrets) {
      let i = out.indexOf(s)
      if (i < 0) continue
      const parts: Buffer[] = []
      let from = 0
      while (i >= 0) {
        parts.push(out.subarray(from, i), REDACTED_BUF)
        from = i + s.length
        i = out.indexOf(s, from)
      }
      parts.push(out.subarray(from))
      out = Buffer.concat(parts)
    }
    return out
  }

  string(str: string): string {
    let out = str
    for (const s of this.strings) if (out.includes(s)) out = out.split(s).join(REDACTED)
    return out
  }

  /** Length of the longest tail of buf that is a proper prefix of some secret. */
  holdBack(buf: Buffer): number {
    const n = buf.length
    let hold = 0
    for (const s of this.secrets) {
      const L = s.length
      const first = s[0]!
      for (let start = Math.max(0, n - (L - 1)); start < n; start++) {
        if (n - start <= hold) break
        if (buf[start] !== first) continue
        if (buf.compare(s, 0, n - start, start, n) === 0) {
          hold = n - start
          break
        }
      }
    }
    return hold
  }

  stream(): StreamRedactor {
    return new StreamRedactor(this)
  }
}

export class StreamRedactor {
  private carry: Buffer | null = null
  constructor(private readonly r: Redactor) {}

  /** Feed a chunk; returns the bytes safe to send now (possibly empty). */
  push(chunk: Buffer): Buffer {
    let data = this.carry ? Buffer.concat([this.carry, chunk]) : chunk
    this.carry = null
    data = this.r.buffer(data)
    const hold = this.r.holdBack(data)
    if (hold > 0) {
      this.carry = Buffer.from(data.subarray(data.length - hold))
      return data.subarray(0, data.length - hold)
    }
    return data
  }

  /** End of stream: the held tail is not a whole key, so it can go. */
  end(): Buffer {
    const c = this.carry
    this.carry = null
    return c ? this.r.buffer(c) : Buffer.alloc(0)
  }
}
