/**
 * The gateway's two durable queues, each on its own DurableLog:
 *  - Inbox: messages from channels waiting for the agent. Stored (fsync) before the channel is
 *    acknowledged; handed to the agent under a lease; removed only when the agent acks. What is
 *    leased but not acked goes back to the queue when the lease runs out or the gateway restarts.
 *  - Outbox: replies from the agent waiting for the channel. Stored before the agent is answered;
 *    each part of a split reply is marked sent as the channel accepts it, so a crash resends only
 *    the parts the channel had not accepted. Reply ids are remembered so a retried POST or a
 *    re-run agent does not send the same reply twice.
 */
import path from 'node:path'
import { DurableLog, type LogRecord } from './log.js'
import type { OutboundReply, Route, StoredInbound } from './types.js'
import { requestIdFor } from './requestid.js'

/** A set that forgets its oldest members past a cap (dedupe windows). */
export class RecentSet {
  private s = new Set<string>()
  constructor(private cap: number) {}
  add(k: string): void {
    if (this.s.has(k)) return
    this.s.add(k)
    if (this.s.size > this.cap) {
      const first = this.s.values().next().value
      if (first !== undefined) this.s.delete(first)
    }
  }
  has(k: string): boolean {
    return this.s.has(k)
  }
  values(): string[] {
    return [...this.s]
  }
}

interface Pending {
  s: StoredInbound
  leaseUntil: number
  deliveries: number
}

export interface Conversation {
  id: string
  channel: string
  route: Route
  last: number
  messages: number
}

const COMPACT_MIN_RECORDS = 2000

export class Inbox {
  private log: DurableLog
  private pending = new Map<string, Pending>()
  private acked = new RecentSet(50000)
  private recentRoutes = new Map<string, { conversation: string; route: Route }>()
  readonly conversations = new Map<string, Conversation>()
  private waiters = new Set<() => void>()
  private compacting = false

  constructor(dir: string) {
    this.log = new DurableLog(path.join(dir, 'inbound.log'))
  }

  async open(): Promise<void> {
    for (const r of await this.log.open()) this.apply(r)
  }

  private apply(r: LogRecord): void {
    if (r.t === 'in') {
      const s = r.s as StoredInbound
      s.msg.request_id ??= requestIdFor(s.msg.id) // stored by a gateway before request ids
      if (!this.acked.has(s.msg.id)) this.pending.set(s.msg.id, { s, leaseUntil: 0, deliveries: 0 })
      this.noteConversation(s)
    } else if (r.t === 'ack') {
      this.pending.delete(r.id as string)
      this.acked.add(r.id as string)
    } else if (r.t === 'seen') {
      for (const id of r.ids as string[]) this.acked.add(id)
    } else if (r.t === 'conv') {
      const c = r.c as Conversation
      this.conversations.set(c.id, c)
    }
  }

  private noteConversation(s: StoredInbound): void {
    const c = this.conversations.get(s.msg.conversation)
    const route = { chat: s.route.chat, ...(s.route.thread ? { thread: s.route.thread } : {}) }
    this.conversations.set(s.msg.conversation, {
      id: s.msg.conversation,
      channel: s.msg.channel,
      route,
      last: Date.parse(s.msg.received_at) || Date.now(),
      messages: (c?.messages ?? 0) + 1,
    })
    this.recentRoutes.set(s.msg.id, { conversation: s.msg.conversation, route: s.route })
    if (this.recentRoutes.size > 10000) {
      const first = this.recentRoutes.keys().next().value
      if (first !== undefined) this.recentRoutes.delete(first)
    }
  }

  /** Known already (pending or acked)? Channels use this to drop redeliveries. */
  seen(id: string): boolean {
    return this.pending.has(id) || this.acked.has(id)
  }

  /** Store durably; resolves after fsync. */
  async put(s: StoredInbound): Promise<'stored' | 'duplicate'> {
    if (this.seen(s.msg.id)) return 'duplicate'
    s.msg.request_id ??= requestIdFor(s.msg.id)
    this.pending.set(s.msg.id, { s, leaseUntil: 0, deliveries: 0 })
    this.noteConversation(s)
    try {
      await this.log.append({ t: 'in', s })
    } catch (e) {
      this.pending.delete(s.msg.id)
      throw e
    }
    for (const w of [...this.waiters]) w()
    return 'stored'
  }

  /** Hand out up to `max` messages not under lease, leasing them for leaseMs. */
  take(max: number, leaseMs: number): { s: StoredInbound; deliveries: number }[] {
    const now = Date.now()
    const out: { s: StoredInbound; deliveries: number }[] = []
    for (const p of this.pending.values()) {
      if (out.length >= max) break
      if (p.leaseUntil > now) continue
      p.leaseUntil = now + leaseMs
      p.deliveries++
      out.push({ s: p.s, deliveries: p.deliveries })
    }
    return out
  }

  /** Long-poll: wait until something can be taken, or waitMs passes, or signal aborts. */
  async waitTake(max: number, leaseMs: number, waitMs: number, signal?: AbortSignal) {
    const deadline = Date.now() + waitMs
    for (;;) {
      const got = this.take(max, leaseMs)
      if (got.length || Date.now() >= deadline || signal?.aborted) return got
      // wake on a new message, on the earliest lease expiry, or at the deadline
      let nextLease = Infinity
      for (const p of this.pending.values()) if (p.leaseUntil > 0) nextLease = Math.min(nextLease, p.leaseUntil)
      const until = Math.min(deadline, nextLease) - Date.now()
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer)
          this.waiters.delete(done)
          signal?.removeEventListener('abort', done)
          resolve()
        }
        const timer = setTimeout(done, Math.max(1, until))
        this.waiters.add(done)
        signal?.addEventListener('abort', done)
      })
    }
  }

  /** Give leased messages back at once (the poller went away before it got them). */
  release(ids: string[]): void {
    for (const id of ids) {
      const p = this.pending.get(id)
      if (p) {
        p.leaseUntil = 0
        p.deliveries = Math.max(0, p.deliveries - 1)
      }
    }
    if (ids.length) for (const w of [...this.waiters]) w()
  }

  async ack(id: string): Promise<'acked' | 'already' | 'unknown'> {
    if (this.acked.has(id)) return 'already'
    if (!this.pending.has(id)) return 'unknown'
    await this.log.append({ t: 'ack', id })
    this.pending.delete(id)
    this.acked.add(id)
    void this.maybeCompact()
    return 'acked'
  }

  get(id: string): StoredInbound | undefined {
    return this.pending.get(id)?.s
  }

  routeOf(id: string): { conversation: string; route: Route } | undefined {
    return this.recentRoutes.get(id)
  }

  stats() {
    let leased = 0
    const now = Date.now()
    for (const p of this.pending.values()) if (p.leaseUntil > now) leased++
    return { pending: this.pending.size, leased }
  }

  private async maybeCompact(): Promise<void> {
    if (this.compacting || this.log.records < COMPACT_MIN_RECORDS) return
    if (this.log.records < 4 * (this.pending.size + this.conversations.size + 10)) return
    this.compacting = true
    try {
      const recs: LogRecord[] = [{ t: 'seen', ids: this.acked.values() }]
      for (const c of this.conversations.values()) recs.push({ t: 'conv', c })
      for (const p of this.pending.values()) recs.push({ t: 'in', s: p.s })
      await this.log.compact(recs)
    } finally {
      this.compacting = false
    }
  }

  async close(): Promise<void> {
    for (const w of [...this.waiters]) w()
    await this.log.close()
  }
}

interface PendingReply {
  r: OutboundReply
  sent: Set<number>
}

export class Outbox {
  private log: DurableLog
  private pending = new Map<string, PendingReply>()
  private done = new RecentSet(50000)
  private waiters = new Set<() => void>()
  private compacting = false

  constructor(dir: string) {
    this.log = new DurableLog(path.join(dir, 'outbound.log'))
  }

  async open(): Promise<void> {
    for (const r of await this.log.open()) {
      if (r.t === 'out') {
        const rep = r.r as OutboundReply
        if (!this.done.has(rep.id) && !this.pending.has(rep.id)) this.pending.set(rep.id, { r: rep, sent: new Set() })
      } else if (r.t === 'part') {
        this.pending.get(r.id as string)?.sent.add(r.n as number)
      } else if (r.t === 'done') {
        this.pending.delete(r.id as string)
        this.done.add(r.id as string)
      } else if (r.t === 'seen') {
        for (const id of r.ids as string[]) this.done.add(id)
      }
    }
  }

  known(id: string): boolean {
    return this.pending.has(id) || this.done.has(id)
  }

  async put(r: OutboundReply): Promise<'queued' | 'duplicate'> {
    if (this.known(r.id)) return 'duplicate'
    this.pending.set(r.id, { r, sent: new Set() })
    try {
      await this.log.append({ t: 'out', r })
    } catch (e) {
      this.pending.delete(r.id)
      throw e
    }
    for (const w of [...this.waiters]) w()
    return 'queued'
  }

  /** Replies waiting for a channel, oldest first. */
  list(channel?: string): PendingReply[] {
    const out: PendingReply[] = []
    for (const p of this.pending.values()) if (!channel || p.r.channel === channel) out.push(p)
    return out
  }

  async partSent(id: string, n: number): Promise<void> {
    const p = this.pending.get(id)
    if (!p) return
    p.sent.add(n)
    await this.log.append({ t: 'part', id, n })
  }

  async finish(id: string, error?: string): Promise<void> {
    if (!this.pending.has(id)) return
    await this.log.append(error ? { t: 'done', id, error } : { t: 'done', id })
    this.pending.delete(id)
    this.done.add(id)
    void this.maybeCompact()
  }

  /** Resolve when a new reply is queued (or after ms). */
  wait(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer)
        this.waiters.delete(done)
        resolve()
      }
      const timer = setTimeout(done, ms)
      this.waiters.add(done)
    })
  }

  stats() {
    return { pending: this.pending.size }
  }

  private async maybeCompact(): Promise<void> {
    if (this.compacting || this.log.records < COMPACT_MIN_RECORDS) return
    if (this.log.records < 4 * (this.pending.size + 10)) return
    this.compacting = true
    try {
      const recs: LogRecord[] = [{ t: 'seen', ids: this.done.values() }]
      for (const p of this.pending.values()) {
        recs.push({ t: 'out', r: p.r })
        for (const n of p.sent) recs.push({ t: 'part', id: p.r.id, n })
      }
      await this.log.compact(recs)
    } finally {
      this.compacting = false
    }
  }

  async close(): Promise<void> {
    for (const w of [...this.waiters]) w()
    await this.log.close()
  }
}
