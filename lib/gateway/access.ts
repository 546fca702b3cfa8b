/**
 * Who may talk to the agent: per-channel allowlists from gateway.yaml, senders approved through
 * pairing (persisted in STATE/access.json, written atomically with fsync), pending pairing codes,
 * and a per-sender rate limit.
 */
import { randomInt } from 'node:crypto'
import { promises as fsp } from 'node:fs'
import path from 'node:path'

export interface PendingPairing {
  code: string
  channel: string
  sender: string
  name: string
  conversation: string
  created_at: string
  expires_at: string
}

interface AccessFile {
  approved: Record<string, string[]> // channel -> sender ids
  denied: Record<string, string[]>
  pending: PendingPairing[]
}

// no 0/O/1/I/L: codes are read aloud and typed
const ALPHABET = 'ABCDEFGHJKMNPQRSTUVWXYZ23456789'

export class Access {
  private data: AccessFile = { approved: {}, denied: {}, pending: [] }
  private file: string
  private buckets = new Map<string, { tokens: number; at: number }>()
  private writing: Promise<void> = Promise.resolve()

  constructor(
    stateDir: string,
    private allow: Map<string, Set<string>>,
    private ttlS: number,
    private maxPending: number,
  ) {
    this.file = path.join(stateDir, 'access.json')
  }

  async open(): Promise<void> {
    try {
      this.data = { approved: {}, denied: {}, pending: [], ...JSON.parse(await fsp.readFile(this.file, 'utf8')) }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`cannot read ${this.file}: ${(e as Error).message}`)
    }
  }

  private save(): Promise<void> {
    const snapshot = JSON.stringify(this.data, null, 2)
    this.writing = this.writing.then(async () => {
      const tmp = `${this.file}.tmp`
      const h = await fsp.open(tmp, 'w', 0o600)
      try {
        await h.write(snapshot)
        await h.sync()
      } finally {
        await h.close()
      }
      await fsp.rename(tmp, this.file)
    })
    return this.writing
  }

  isAllowed(channel: string, sender: string): boolean {
    return Boolean(this.allow.get(channel)?.has(sender) || this.data.approved[channel]?.includes(sender))
  }

  isDenied(channel: string, sender: string): boolean {
    return Boolean(this.data.denied[channel]?.includes(sender))
  }

  private prune(): void {
    const now = Date.now()
    this.data.pending = this.data.pending.filter((p) => Date.parse(p.expires_at) > now)
  }

  /**
   * A pairing code for this sender: the existing one if pending (so repeated messages do not mint
   * codes), a new one otherwise, or null when too many pairings are pending (flood guard).
   */
  async pairingFor(channel: string, sender: string, name: string, conversation: string): Promise<{ code: string; fresh: boolean } | null> {
    this.prune()
    const have = this.data.pending.find((p) => p.channel === channel && p.sender === sender)
    if (have) return { code: have.code, fresh: false }
    if (this.data.pending.length >= this.maxPending) return null
    let code = ''
    do {
      code = Array.from({ length: 8 }, () => ALPHABET[randomInt(ALPHABET.length)]).join('')
    } while (this.data.pending.some((p) => p.code === code))
    const now = Date.now()
    this.data.pending.push({
      code,
      channel,
      sender,
      name,
      conversation,
      created_at: new Date(now).toISOString(),
      expires_at: new Date(now + this.ttlS * 1000).toISOString(),
    })
    await this.save()
    return { code, fresh: true }
  }

  listPending(): PendingPairing[] {
    this.prune()
    return [...this.data.pending]
  }

  /** Approve or deny a pending code. Returns the pairing, or null if no such code is pending. */
  async decide(code: string, approve: boolean): Promise<PendingPairing | null> {
    this.prune()
    const c = code.trim().toUpperCase()
    const p = this.data.pending.find((x) => x.code === c)
    if (!p) return null
    this.data.pending = this.data.pending.filter((x) => x !== p)
    const key = approve ? 'approved' : 'denied'
    const list = (this.data[key][p.channel] ??= [])
    if (!list.includes(p.sender)) list.push(p.sender)
    if (approve) this.data.denied[p.channel] = (this.data.denied[p.channel] ?? []).filter((s) => s !== p.sender)
    await this.save()
    return p
  }

  approvedCount(channel: string): number {
    return (this.data.approved[channel]?.length ?? 0) + (this.allow.get(channel)?.size ?? 0)
  }

  /** Token bucket per (channel, sender): `perMinute` messages, burst of the same size. */
  takeToken(channel: string, sender: string, perMinute: number): boolean {
    if (perMinute <= 0) return true
    const k = `${channel}\u0000${sender}`
    const now = Date.now()
    const b = this.buckets.get(k) ?? { tokens: perMinute, at: now }
    b.tokens = Math.min(perMinute, b.tokens + ((now - b.at) / 60000) * perMinute)
    b.at = now
    const ok = b.tokens >= 1
    if (ok) b.tokens -= 1
    this.buckets.set(k, b)
    return ok
  }

  async flush(): Promise<void> {
    await this.writing
  }
}
