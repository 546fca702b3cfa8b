/**
 * Request ids: one label that follows an agent action from the gateway message through the
 * sandbox (the agent sends it as `x-cordon-request-id`) to the egress gate and the router, so
 * `cordon logs` can put one conversation turn together. Derived from the message id (a hash, so
 * it says nothing about the channel or chat), hence stable across channel redeliveries, lease
 * expiries and gateway restarts without being stored separately.
 *
 * It is a correlation label only: nothing may be decided on it (the agent can send any value).
 */
import { createHash } from 'node:crypto'

export const REQUEST_ID_HEADER = 'x-cordon-request-id'

/** What a request id may look like when it comes back from the agent (header values). */
export const REQUEST_ID_RE = /^[A-Za-z0-9._:@-]{1,128}$/

export function requestIdFor(messageId: string): string {
  return `rq-${createHash('sha256').update(`cordon-request\u0000${messageId}`).digest('base64url').slice(0, 22)}`
}

/** The header's value if it is a well-formed id, else undefined (never an error: it is a label). */
export function requestIdHeader(v: string | string[] | undefined): string | undefined {
  const s = Array.isArray(v) ? v[0] : v
  return s !== undefined && REQUEST_ID_RE.test(s) ? s : undefined
}
