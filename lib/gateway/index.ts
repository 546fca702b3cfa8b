/** cordon gateway: channel adapters, sender pairing, durable queues, the agent endpoint. */
export { Gateway, createLogger, messageId, type GatewayOptions } from './gateway.js'
export { loadConfig, parseConfig, ConfigError, type GatewayConfig, type ChannelConfig } from './config.js'
export { DurableLog } from './log.js'
export { Inbox, Outbox } from './queue.js'
export { splitText, toSlack, toTelegram, toDiscord, LIMITS } from './text.js'
export { signWebhook } from './webhook-sign.js'
export { redact } from './redact.js'
export type * from './types.js'
