/**
 * The splice relay (native/relay.cc): moves the bytes of an established tunnel between two
 * connected sockets in the kernel, on a thread of the addon's, so a bulk transfer never crosses
 * into JavaScript. It decides nothing; the engine hands it connections it has already allowed and
 * audited, and learns from `onEnd` how many bytes went each way and why the tunnel ended.
 *
 * handOver() takes the two net.Sockets away from Node: it drains what Node had already read from
 * the client, dup()s both file descriptors into the relay, then destroys the Node sockets (closing
 * only Node's descriptors; the connections stay open in the relay).
 */
import type net from 'node:net'
import { addon } from './addon.js'

export interface RelayEnd {
  /** bytes relayed client -> upstream, including `toUpstream` */
  bytesOut: number
  /** bytes relayed upstream -> client, excluding `toClient` */
  bytesIn: number
  /** '' when both sides finished; 'idle timeout', the close() reason, or an errno code ('ECONNRESET') */
  error: string
}

let started = false
let nextId = 1
const waiting = new Map<number, { onEnd: (end: RelayEnd) => void; extraOut: number }>()

function start(): void {
  if (started) return
  addon().relayStart((id, aToB, bToA, error) => {
    const w = waiting.get(id)
    if (!w) return
    waiting.delete(id)
    w.onEnd({ bytesOut: aToB + w.extraOut, bytesIn: bToA, error })
  })
  started = true
}

/** The file descriptor under a connected net.Socket (TCP or unix), or -1. */
function fdOf(s: net.Socket): number {
  const h = (s as unknown as { _handle?: { fd?: number } | null })._handle
  return typeof h?.fd === 'number' ? h.fd : -1
}

/** Node has already seen this socket's end of stream (so the kernel will not report it again). */
function readEnded(s: net.Socket): boolean {
  return (s as unknown as { _readableState?: { ended?: boolean } })._readableState?.ended === true
}

/**
 * Whether handOver() can take these sockets: both connected with a descriptor, nothing of ours
 * waiting to be written, no end of stream already consumed by Node, and nothing read from the
 * upstream yet (it must have been paused before it connected).
 */
export function canHandOver(client: net.Socket, upstream: net.Socket): boolean {
  return (
    fdOf(client) >= 0 &&
    fdOf(upstream) >= 0 &&
    client.writableLength === 0 &&
    upstream.writableLength === 0 &&
    upstream.readableLength === 0 &&
    !readEnded(client) &&
    !readEnded(upstream)
  )
}

export interface Tunnel {
  id: number
  /** end the tunnel now; onEnd reports `reason` */
  close(reason: string): void
}

/**
 * Relay client <-> upstream in the kernel from now on. `toClient` is sent to the client first (the
 * CONNECT 200 line), `toUpstream` to the upstream first (bytes that followed the CONNECT request);
 * then whatever Node had buffered from the client, then the spliced streams. `clientSendBuffer` > 0
 * fixes the client socket's SO_SNDBUF (bytes; the kernel doubles it for its bookkeeping) instead of
 * leaving it to autotuning. Throws (an errno Error) without touching the sockets when the relay
 * cannot take them.
 */
export function handOver(client: net.Socket, upstream: net.Socket, toClient: Buffer, toUpstream: Buffer, idleMs: number, onEnd: (end: RelayEnd) => void, clientSendBuffer = 0): Tunnel {
  start()
  const buffered: Buffer[] = [toUpstream]
  // synchronous from here to the destroy() calls: Node reads nothing more from these sockets
  for (let c: Buffer | null; (c = client.read() as Buffer | null) !== null; ) buffered.push(c)
  const first = buffered.length === 1 ? toUpstream : Buffer.concat(buffered)
  const id = nextId
  nextId = nextId >= 0xffffffff ? 1 : nextId + 1
  try {
    addon().relayAdd(id, fdOf(client), fdOf(upstream), toClient.length ? toClient : null, first.length ? first : null, Math.max(0, Math.round(idleMs)), Math.max(0, Math.round(clientSendBuffer)))
  } catch (e) {
    if (first.length > toUpstream.length) client.unshift(first.subarray(toUpstream.length)) // give the drained bytes back
    throw e
  }
  waiting.set(id, { onEnd, extraOut: first.length })
  // Node's descriptors only; the relay holds its own duplicates
  client.destroy()
  upstream.destroy()
  return { id, close: (reason: string) => addon().relayClose(id, reason) }
}

/** Tunnels the relay holds now. */
export function relayed(): number {
  return waiting.size
}
