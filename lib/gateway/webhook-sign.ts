/** The generic webhook channel's signature: "sha256=" + hex HMAC-SHA256 of "<timestamp>.<body>". */
import { createHmac } from 'node:crypto'

export function signWebhook(secret: string, ts: number | string, body: string | Buffer): string {
  return 'sha256=' + createHmac('sha256', secret).update(`${ts}.`).update(body).digest('hex')
}
