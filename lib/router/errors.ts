/**
 * Errors in the API's own format, so an SDK surfaces them as its usual typed errors and an agent
 * can relay the message. OpenAI: {"error":{"message","type","param","code"}}.
 * Anthropic: {"type":"error","error":{"type","message"}}.
 */
import type { ApiFamily } from './config.js'

export type ErrorKind =
  | 'invalid_request'
  | 'not_found'
  | 'too_large'
  | 'rate_limit'
  | 'budget'
  | 'permission'
  | 'no_key'
  | 'upstream'
  | 'timeout'
  | 'internal'

const status: Record<ErrorKind, number> = {
  invalid_request: 400,
  not_found: 404,
  too_large: 413,
  rate_limit: 429,
  budget: 429,
  permission: 403,
  // 401 as the providers answer a call without a key: the SDKs raise it at once (an
  // AuthenticationError) instead of retrying for minutes as they do a 503
  no_key: 401,
  upstream: 502,
  timeout: 504,
  internal: 500,
}

const openaiType: Record<ErrorKind, [string, string | null]> = {
  invalid_request: ['invalid_request_error', null],
  not_found: ['invalid_request_error', 'not_found'],
  too_large: ['invalid_request_error', 'request_too_large'],
  rate_limit: ['rate_limit_exceeded', 'rate_limit_exceeded'],
  budget: ['insufficient_quota', 'insufficient_quota'],
  permission: ['permission_error', 'sandbox_not_allowed'],
  no_key: ['invalid_request_error', 'no_api_key'],
  upstream: ['server_error', 'upstream_error'],
  timeout: ['server_error', 'upstream_timeout'],
  internal: ['server_error', null],
}

const anthropicType: Record<ErrorKind, string> = {
  invalid_request: 'invalid_request_error',
  not_found: 'not_found_error',
  too_large: 'request_too_large',
  rate_limit: 'rate_limit_error',
  budget: 'rate_limit_error',
  permission: 'permission_error',
  no_key: 'authentication_error',
  upstream: 'api_error',
  timeout: 'api_error',
  internal: 'api_error',
}

const NO_RETRY = new Set<ErrorKind>(['no_key', 'invalid_request', 'not_found', 'too_large', 'permission'])

export interface ApiError {
  status: number
  body: string
  headers: Record<string, string>
}

export function apiError(family: ApiFamily, kind: ErrorKind, message: string, extra: { retryAfterS?: number; param?: string } = {}): ApiError {
  const headers: Record<string, string> = { 'content-type': 'application/json', 'x-cordon-error': kind }
  if (extra.retryAfterS !== undefined) headers['retry-after'] = String(Math.max(1, Math.ceil(extra.retryAfterS)))
  // the openai and anthropic SDKs honour this over their status rules: retrying cannot help until
  // an operator acts (a key is set, a request is fixed)
  if (NO_RETRY.has(kind)) headers['x-should-retry'] = 'false'
  let body: unknown
  if (family === 'anthropic') {
    body = { type: 'error', error: { type: anthropicType[kind], message } }
  } else {
    const [type, code] = openaiType[kind]
    body = { error: { message, type, param: extra.param ?? null, code } }
  }
  return { status: status[kind], body: JSON.stringify(body), headers }
}

/** The same error as one SSE event, for a failure after a stream began (no second status line). */
export function sseError(family: ApiFamily, message: string): string {
  if (family === 'anthropic') return `event: error\ndata: ${JSON.stringify({ type: 'error', error: { type: 'api_error', message } })}\n\n`
  return `data: ${JSON.stringify({ error: { message, type: 'server_error', param: null, code: 'upstream_error' } })}\n\n`
}
