/** The privacy router (inference.local): public surface for the CLI, the supervisor and tests. */
export { PrivacyRouter, type RouterOptions } from './server.js'
export { compileConfig, loadConfigFile, ConfigError, routerConfigSchema, type CompiledConfig, type Route, type Target, type Limits } from './config.js'
export { openKeyStore, setKey, removeKey, listKeys, defaultKeyStorePath, fingerprint, KeyStoreError } from './keys.js'
export { Redactor, StreamRedactor, REDACTED } from './redact.js'
export { apiError } from './errors.js'
