/** Splitting long replies at a channel's limit and converting Markdown to its dialect. */

/** Per-channel message length limits (UTF-16 code units, which is what Telegram and Discord count conservatively). */
export const LIMITS: Record<string, number> = { telegram: 4096, discord: 2000, slack: 4000, webhook: 1_000_000, local: 1_000_000 }

/** Split text into parts of at most `limit` UTF-16 units, preferring paragraph, line, then word breaks. */
export function splitText(text: string, limit: number): string[] {
  if (text.length <= limit) return [text]
  const parts: string[] = []
  let rest = text
  while (rest.length > limit) {
    let cut = -1
    for (const sep of ['\n\n', '\n', ' ']) {
      const i = rest.lastIndexOf(sep, limit)
      if (i > limit / 2) {
        cut = i + sep.length
        break
      }
    }
    if (cut < 0) {
      cut = limit
      // never split a surrogate pair
      const c = rest.charCodeAt(cut - 1)
      if (c >= 0xd800 && c <= 0xdbff) cut--
    }
    parts.push(rest.slice(0, cut).replace(/\s+$/, '') || rest.slice(0, cut))
    rest = rest.slice(cut)
  }
  if (rest.length) parts.push(rest)
  return parts
}

/** Markdown -> Slack mrkdwn: bold, strike, links, headings. Code spans and blocks are kept. */
export function toSlack(md: string): string {
  return md
    .split(/(```[\s\S]*?```|`[^`\n]*`)/)
    .map((seg, i) => {
      if (i % 2 === 1) return seg
      return seg
        .replace(/^#{1,6}\s+(.+)$/gm, '*$1*')
        .replace(/\*\*(.+?)\*\*/g, '*$1*')
        .replace(/__(.+?)__/g, '*$1*')
        .replace(/~~(.+?)~~/g, '~$1~')
        .replace(/\[([^\]]+)\]\((https?:[^)\s]+)\)/g, '<$2|$1>')
        .replace(/&/g, '&amp;')
        .replace(/<(?!https?:)/g, '&lt;')
    })
    .join('')
}

/**
 * Telegram: sent as plain text (no parse_mode). Telegram's MarkdownV2 rejects a whole message for
 * one unescaped character, which would turn a formatting nicety into a lost reply; plain text always
 * arrives. Links and code stay readable.
 */
export function toTelegram(md: string): string {
  return md.replace(/\*\*(.+?)\*\*/g, '$1').replace(/^#{1,6}\s+/gm, '').replace(/\[([^\]]+)\]\((https?:[^)\s]+)\)/g, '$1 ($2)')
}

/** Discord renders Markdown itself; only mass mentions are defused. */
export function toDiscord(md: string): string {
  return md.replace(/@(everyone|here)/g, '@\u200b$1')
}
