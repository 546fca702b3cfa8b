/**
 * gateway.yaml: loading, validation (ajv) and error messages with file:line.
 * Credentials are never inline: each is `{ env: NAME }` or `{ file: PATH }`, resolved here, and every
 * resolved value is registered with the redactor so it cannot appear in a log line or an error.
 */
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { LineCounter, parseDocument, isNode } from 'yaml'
import { Ajv, type ErrorObject } from 'ajv'
import { registerSecret } from './redact.js'

export interface SecretRef {
  env?: string
  file?: string
}

export interface ChannelConfig {
  name: string
  type: 'telegram' | 'slack' | 'discord' | 'webhook'
  enabled: boolean
  allow: string[]
  pairing: boolean
  require_mention: boolean
  max_message_bytes: number
  rate_per_minute: number
  // telegram
  token?: SecretRef
  api_root?: string
  mode?: 'polling' | 'webhook' | 'events' | 'socket'
  webhook_secret?: SecretRef
  poll_timeout_s?: number
  // slack
  signing_secret?: SecretRef
  app_token?: SecretRef
  api_url?: string
  // discord: token, api_url
  // webhook
  secret?: SecretRef
  reply_url?: string
}

export interface GatewayConfig {
  file: string
  agent: { visibility_timeout_s: number; max_batch: number; max_attachment_bytes: number; token?: SecretRef }
  public_listen?: string
  control_http?: { listen: string; token: SecretRef }
  audit: { include_text: boolean }
  pairing: { code_ttl_s: number; max_pending: number }
  channels: ChannelConfig[]
}

const secretRef = {
  type: 'object',
  additionalProperties: false,
  properties: { env: { type: 'string', minLength: 1 }, file: { type: 'string', minLength: 1 } },
  minProperties: 1,
  maxProperties: 1,
}

const schema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    version: { const: 1 },
    agent: {
      type: 'object',
      additionalProperties: false,
      properties: {
        visibility_timeout_s: { type: 'number', minimum: 1, maximum: 3600 },
        max_batch: { type: 'integer', minimum: 1, maximum: 100 },
        max_attachment_bytes: { type: 'integer', minimum: 1 },
        token: secretRef,
      },
    },
    public_listen: { type: 'string', pattern: '^.+:[0-9]+$' },
    control_http: {
      type: 'object',
      additionalProperties: false,
      required: ['listen', 'token'],
      properties: { listen: { type: 'string', pattern: '^.+:[0-9]+$' }, token: secretRef },
    },
    audit: {
      type: 'object',
      additionalProperties: false,
      properties: { include_text: { type: 'boolean' } },
    },
    limits: {
      type: 'object',
      additionalProperties: false,
      properties: {
        max_message_bytes: { type: 'integer', minimum: 1 },
        rate_per_minute: { type: 'number', minimum: 0 },
      },
    },
    pairing: {
      type: 'object',
      additionalProperties: false,
      properties: {
        code_ttl_s: { type: 'integer', minimum: 10 },
        max_pending: { type: 'integer', minimum: 1 },
      },
    },
    channels: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['name', 'type'],
        properties: {
          name: { type: 'string', pattern: '^[a-z0-9][a-z0-9_-]{0,31}$' },
          type: { enum: ['telegram', 'slack', 'discord', 'webhook'] },
          enabled: { type: 'boolean' },
          allow: { type: 'array', items: { type: ['string', 'integer'] } },
          pairing: { type: 'boolean' },
          require_mention: { type: 'boolean' },
          max_message_bytes: { type: 'integer', minimum: 1 },
          rate_per_minute: { type: 'number', minimum: 0 },
          token: secretRef,
          api_root: { type: 'string', format: 'uri' },
          mode: { enum: ['polling', 'webhook', 'events', 'socket'] },
          webhook_secret: secretRef,
          poll_timeout_s: { type: 'integer', minimum: 0, maximum: 50 },
          signing_secret: secretRef,
          app_token: secretRef,
          api_url: { type: 'string' },
          secret: secretRef,
          reply_url: { type: 'string' },
        },
      },
    },
  },
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'ConfigError'
  }
}

const ajv = new Ajv({ allErrors: true, strict: false })
ajv.addFormat('uri', /^https?:\/\/[^\s/]+(\/[^\s]*)?$/)
const validate = ajv.compile(schema)

function describe(e: ErrorObject): string {
  if (e.keyword === 'additionalProperties') return `unknown key "${(e.params as { additionalProperty: string }).additionalProperty}"`
  if (e.keyword === 'enum') return `must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.join(', ')}`
  if (e.keyword === 'type' && e.instancePath.match(/(token|secret|signing_secret|app_token|webhook_secret)$/))
    return 'credentials may not be written inline: use { env: VAR_NAME } or { file: /path/to/file }'
  return e.message ?? e.keyword
}

/** Parse and validate gateway.yaml (or JSON). Throws ConfigError with file:line. */
export function parseConfig(text: string, file: string): GatewayConfig {
  const lc = new LineCounter()
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false })
  if (doc.errors.length) {
    const e = doc.errors[0]!
    const pos = lc.linePos(e.pos[0])
    throw new ConfigError(`${file}:${pos.line}:${pos.col}: YAML syntax error: ${e.message.split('\n')[0]}`)
  }
  const raw = (doc.toJS() ?? {}) as Record<string, unknown>
  const where = (instancePath: string): string => {
    const segs = instancePath.split('/').slice(1).map((s) => (/^\d+$/.test(s) ? Number(s) : s.replace(/~1/g, '/').replace(/~0/g, '~')))
    for (let i = segs.length; i >= 0; i--) {
      const n = doc.getIn(segs.slice(0, i), true)
      if (isNode(n) && n.range) {
        const p = lc.linePos(n.range[0])
        return `${file}:${p.line}`
      }
    }
    return file
  }
  if (!validate(raw)) {
    const lines = (validate.errors ?? [])
      .filter((e) => e.keyword !== 'if')
      .slice(0, 10)
      .map((e) => {
        const extra = e.keyword === 'additionalProperties' ? `/${(e.params as { additionalProperty: string }).additionalProperty}` : ''
        return `${where(e.instancePath + extra)}: ${e.instancePath || '(top level)'}: ${describe(e)}`
      })
    throw new ConfigError(`invalid gateway config:\n  ${lines.join('\n  ')}\nSee profiles/gateway.example.yaml for a complete example.`)
  }
  const limits = (raw.limits ?? {}) as { max_message_bytes?: number; rate_per_minute?: number }
  const agent = (raw.agent ?? {}) as Partial<GatewayConfig['agent']>
  const channels = ((raw.channels ?? []) as Record<string, unknown>[]).map((c, i) => {
    const ch = {
      enabled: true,
      pairing: true,
      require_mention: true,
      max_message_bytes: limits.max_message_bytes ?? 32 * 1024,
      rate_per_minute: limits.rate_per_minute ?? 20,
      ...c,
      allow: ((c.allow as unknown[]) ?? []).map(String),
    } as ChannelConfig
    const need = (k: keyof ChannelConfig, why: string) => {
      if (ch[k] === undefined) throw new ConfigError(`${where(`/channels/${i}`)}: channel "${ch.name}" (${ch.type}) needs "${String(k)}": ${why}`)
    }
    if (ch.type === 'telegram') {
      need('token', 'the bot token, as { env: NAME } or { file: PATH }')
      ch.mode ??= 'polling'
      if (ch.mode === 'webhook') need('webhook_secret', 'the secret_token Telegram sends in X-Telegram-Bot-Api-Secret-Token')
      if (ch.mode !== 'polling' && ch.mode !== 'webhook') throw new ConfigError(`${where(`/channels/${i}/mode`)}: telegram mode must be polling or webhook`)
    } else if (ch.type === 'slack') {
      need('token', 'the bot token (xoxb-...)')
      ch.mode ??= 'events'
      if (ch.mode === 'events') need('signing_secret', 'the app signing secret, to verify X-Slack-Signature')
      else if (ch.mode === 'socket') need('app_token', 'the app-level token (xapp-...) for Socket Mode')
      else throw new ConfigError(`${where(`/channels/${i}/mode`)}: slack mode must be events or socket`)
    } else if (ch.type === 'discord') {
      need('token', 'the bot token')
    } else if (ch.type === 'webhook') {
      need('secret', 'the HMAC-SHA256 key shared with the sender')
    }
    return ch
  })
  const names = new Set<string>()
  channels.forEach((c, i) => {
    if (names.has(c.name) || c.name === 'local') throw new ConfigError(`${where(`/channels/${i}/name`)}: channel name "${c.name}" is used twice (or is the reserved name "local")`)
    names.add(c.name)
  })
  const needsPublic = channels.some((c) => c.enabled && (c.type === 'webhook' || (c.type === 'slack' && c.mode === 'events') || (c.type === 'telegram' && c.mode === 'webhook')))
  if (needsPublic && !raw.public_listen)
    throw new ConfigError(`${file}: a webhook-style channel is configured but "public_listen: HOST:PORT" (where channels POST to the gateway) is missing`)
  return {
    file,
    agent: {
      visibility_timeout_s: agent.visibility_timeout_s ?? 60,
      max_batch: agent.max_batch ?? 10,
      max_attachment_bytes: agent.max_attachment_bytes ?? 25 * 1024 * 1024,
      ...(agent.token ? { token: agent.token } : {}),
    },
    ...(raw.public_listen ? { public_listen: raw.public_listen as string } : {}),
    ...(raw.control_http ? { control_http: raw.control_http as GatewayConfig['control_http'] } : {}),
    audit: { include_text: Boolean((raw.audit as { include_text?: boolean } | undefined)?.include_text) },
    pairing: {
      code_ttl_s: (raw.pairing as { code_ttl_s?: number } | undefined)?.code_ttl_s ?? 3600,
      max_pending: (raw.pairing as { max_pending?: number } | undefined)?.max_pending ?? 50,
    },
    channels,
  }
}

export function loadConfig(file: string): GatewayConfig {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (e) {
    throw new ConfigError(`cannot read gateway config ${file}: ${(e as Error).message}`)
  }
  return parseConfig(text, path.resolve(file))
}

/**
 * Resolve a credential reference. `what` names it for errors ("channel tg: token").
 * The value is registered with the redactor before it is returned.
 */
export function resolveSecret(ref: SecretRef, what: string, baseDir: string, env: NodeJS.ProcessEnv = process.env): string {
  let v: string | undefined
  if (ref.env) {
    v = env[ref.env]
    if (v === undefined || v === '') throw new ConfigError(`${what}: environment variable ${ref.env} is not set in the gateway's environment`)
  } else if (ref.file) {
    const p = path.resolve(baseDir, ref.file)
    try {
      v = readFileSync(p, 'utf8').trim()
    } catch (e) {
      throw new ConfigError(`${what}: cannot read credential file ${p}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`)
    }
    if (!v) throw new ConfigError(`${what}: credential file ${p} is empty`)
  } else {
    throw new ConfigError(`${what}: give { env: NAME } or { file: PATH }`)
  }
  registerSecret(v)
  return v
}
