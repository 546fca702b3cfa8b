/** Shapes shared by the gateway's parts. The agent-facing ones are documented in docs/agent-endpoint.md. */

export interface Sender {
  id: string
  name: string
}

/** An attachment as the agent sees it: a reference it fetches through the gateway. */
export interface AttachmentRef {
  id: string
  name: string
  size?: number
  mime?: string
  url: string
}

/** Where an attachment really lives; never shown to the agent (it may embed channel URLs). */
export interface AttachmentSource {
  id: string
  channel: string
  /** telegram: file_id; slack/discord/webhook: a URL. */
  ref: string
}

/** Channel-side coordinates needed to answer; kept by the gateway. */
export interface Route {
  /** Channel-native chat/channel id. */
  chat: string
  /** Slack thread_ts / Telegram message_thread_id, if the message was in a thread. */
  thread?: string
  /** The native id of the message being answered. */
  message?: string
}

export interface InboundMessage {
  id: string
  /**
   * Correlation label for everything this message causes (agent, egress gate, router, reply):
   * derived from `id` (requestIdFor), so it is the same on every redelivery and after restarts.
   */
  request_id: string
  channel: string
  conversation: string
  sender: Sender
  text: string
  attachments: AttachmentRef[]
  received_at: string
  is_group: boolean
}

/** What is stored: the agent-facing message plus private routing data. */
export interface StoredInbound {
  msg: InboundMessage
  route: Route
  sources: AttachmentSource[]
}

export interface OutboundReply {
  id: string
  conversation: string
  channel: string
  text: string
  in_reply_to?: string
  /** The request id of the message answered (or the agent's x-cordon-request-id), for the audit. */
  request_id?: string
  route: Route
  created_at: string
}

/** What a channel adapter hands to the gateway when something arrives. */
export interface Incoming {
  /** Channel-native unique id of this event (update_id, event_id, message id): used for dedupe. */
  nativeId: string
  chat: string
  thread?: string
  message?: string
  sender: Sender
  text: string
  isGroup: boolean
  /** In a group: did the message address the bot (mention, reply to the bot, slash command)? */
  mentioned: boolean
  attachments: { name: string; size?: number; mime?: string; ref: string }[]
}
