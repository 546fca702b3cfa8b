/**
 * Token usage from provider responses, plain JSON and SSE streams:
 * - OpenAI chat/completions/embeddings: usage.{prompt_tokens, completion_tokens}; in streams the
 *   last chunk when stream_options.include_usage is set (the router sets it, see server.ts).
 * - OpenAI responses: usage.{input_tokens, output_tokens}; in streams the response.completed event.
 * - Anthropic messages: usage.{input_tokens, output_tokens, cache_*_input_tokens}; in streams
 *   message_start (input) and message_delta (cumulative output).
 */
import { StringDecoder } from 'node:string_decoder'

export interface Usage {
  input: number
  output: number
}

function n(x: unknown): number {
  return typeof x === 'number' && Number.isFinite(x) && x >= 0 ? x : 0
}

function fromUsageObject(u: unknown): Usage | null {
  if (!u || typeof u !== 'object') return null
  const o = u as Record<string, unknown>
  if ('prompt_tokens' in o || 'completion_tokens' in o) return { input: n(o.prompt_tokens), output: n(o.completion_tokens) }
  if ('input_tokens' in o || 'output_tokens' in o) {
    return { input: n(o.input_tokens) + n(o.cache_creation_input_tokens) + n(o.cache_read_input_tokens), output: n(o.output_tokens) }
  }
  return null
}

export function usageFromJson(obj: unknown): Usage | null {
  if (!obj || typeof obj !== 'object') return null
  const o = obj as Record<string, unknown>
  return (
    fromUsageObject(o.usage) ??
    fromUsageObject((o.response as Record<string, unknown> | undefined)?.usage) ??
    fromUsageObject((o.message as Record<string, unknown> | undefined)?.usage)
  )
}

/**
 * Usage from a whole JSON response without parsing all of it: find the last top-level-looking
 * `"usage":{...}` object and parse just that (answers can be large; usage is small and near the end).
 */
export function usageFromJsonBuffer(buf: Buffer): Usage | null {
  const text = buf.toString('latin1')
  let i = text.lastIndexOf('"usage"')
  while (i >= 0) {
    const start = text.indexOf('{', i + 7)
    if (start < 0) return null
    // only whitespace and a colon between the key and the object
    if (/^\s*:\s*$/.test(text.slice(i + 7, start))) {
      let depth = 0
      let inStr = false
      for (let j = start; j < text.length; j++) {
        const c = text.charCodeAt(j)
        if (inStr) {
          if (c === 92) j++
          else if (c === 34) inStr = false
        } else if (c === 34) inStr = true
        else if (c === 123) depth++
        else if (c === 125 && --depth === 0) {
          try {
            return fromUsageObject(JSON.parse(text.slice(start, j + 1)))
          } catch {
            return null
          }
        }
      }
      return null
    }
    i = text.lastIndexOf('"usage"', i - 1)
  }
  return null
}

/** Scans SSE bytes for usage without holding them back: the caller forwards its chunks as is. */
export class SseUsageScanner {
  input = 0
  output = 0
  seen = false
  private partial = ''
  private decoder = new StringDecoder('utf8')

  push(chunk: Buffer): void {
    const text = this.partial + this.decoder.write(chunk)
    let start = 0
    for (;;) {
      const nl = text.indexOf('\n', start)
      if (nl < 0) break
      this.line(text, start, nl)
      start = nl + 1
    }
    this.partial = text.slice(start)
    // an absurdly long line without newline: keep scanning bounded
    if (this.partial.length > 4 * 1024 * 1024) this.partial = ''
  }

  private line(text: string, s: number, e: number): void {
    if (!text.startsWith('data:', s)) return
    const line = text.slice(s + 5, e).trim()
    if (!line.includes('"usage"')) return
    this.take(line)
  }

  take(json: string): void {
    try {
      const u = usageFromJson(JSON.parse(json))
      if (u) {
        this.seen = true
        this.input = Math.max(this.input, u.input)
        this.output = Math.max(this.output, u.output)
      }
    } catch {
      /* not JSON: not ours to judge */
    }
  }

  get usage(): Usage | null {
    return this.seen ? { input: this.input, output: this.output } : null
  }
}

/**
 * Frames SSE into whole events, so the router can drop the usage-only chunk it asked for on the
 * client's behalf (an OpenAI chat stream with `choices: []`), which clients that did not ask for
 * it may not expect. Used only on streams where the router injected include_usage.
 */
export class SseEventFilter {
  private buf = ''
  private decoder = new StringDecoder('utf8')
  constructor(private readonly scanner: SseUsageScanner) {}

  push(chunk: Buffer): string {
    this.buf += this.decoder.write(chunk)
    let out = ''
    for (;;) {
      const m = /\r?\n\r?\n/.exec(this.buf)
      if (!m) break
      const end = m.index + m[0].length
      const ev = this.buf.slice(0, end)
      this.buf = this.buf.slice(end)
      if (!this.dropped(ev)) out += ev
    }
    if (this.buf.length > 1024 * 1024) {
      out += this.buf
      this.buf = ''
    }
    return out
  }

  private dropped(ev: string): boolean {
    if (!ev.includes('"usage"')) return false
    const data = ev
      .split(/\r?\n/)
      .filter((l) => l.startsWith('data:'))
      .map((l) => l.slice(5).trim())
      .join('\n')
    try {
      const obj = JSON.parse(data) as { choices?: unknown[]; usage?: unknown }
      this.scanner.take(data)
      return Array.isArray(obj.choices) && obj.choices.length === 0 && !!obj.usage
    } catch {
      return false
    }
  }

  end(): string {
    const rest = this.buf + this.decoder.end()
    this.buf = ''
    return rest
  }
}
