/**
 * Provider keys: the root-only key store file (JSON, mode 0600, written atomically) and the
 * resolution of a route's key reference ({store: NAME} | {env: VAR} | {file: PATH}).
 * Keys are never printed: `keys list` shows a fingerprint (sha256 prefix) and the length.
 */
import { readFileSync, writeFileSync, renameSync, statSync, mkdirSync, openSync, closeSync, fsyncSync, chmodSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { dirname, join } from 'node:path'
import { homedir } from 'node:os'

export type KeyRef = { env?: string; file?: string; store?: string }

export interface KeyStore {
  path: string
  get(name: string): string | undefined
  names(): string[]
}

interface StoreFile {
  version: 1
  keys: Record<string, { key: string; updated: string }>
}

export function defaultKeyStorePath(): string {
  if (process.env.CORDON_KEYS) return process.env.CORDON_KEYS
  if (process.getuid?.() === 0) return '/etc/cordon/keys.json'
  return join(process.env.XDG_CONFIG_HOME ?? join(homedir(), '.config'), 'cordon', 'keys.json')
}

export class KeyStoreError extends Error {
  override name = 'KeyStoreError'
}

function readStoreFile(path: string, mustExist: boolean): StoreFile {
  let st
  try {
    st = statSync(path)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' && !mustExist) return { version: 1, keys: {} }
    throw new KeyStoreError(`cannot open key store ${path}: ${(e as NodeJS.ErrnoException).code}; create it with \`cordon keys set NAME --keys ${path}\``)
  }
  if ((st.mode & 0o077) !== 0) {
    throw new KeyStoreError(`key store ${path} is readable by group or others (mode ${(st.mode & 0o777).toString(8)}); run \`chmod 600 ${path}\``)
  }
  const uid = process.getuid?.()
  if (uid !== undefined && st.uid !== uid) {
    throw new KeyStoreError(`key store ${path} is owned by uid ${st.uid}, not by this user (uid ${uid}); fix with \`chown ${uid} ${path}\``)
  }
  let data: StoreFile
  try {
    data = JSON.parse(readFileSync(path, 'utf8')) as StoreFile
  } catch (e) {
    throw new KeyStoreError(`key store ${path} is not valid JSON (${(e as Error).message}); restore it or remove it and set the keys again`)
  }
  if (!data || typeof data !== 'object' || typeof data.keys !== 'object') throw new KeyStoreError(`key store ${path} has no "keys" object`)
  return data
}

export function openKeyStore(path: string, mustExist = true): KeyStore {
  const data = readStoreFile(path, mustExist)
  return {
    path,
    get: (name) => data.keys[name]?.key,
    names: () => Object.keys(data.keys).sort(),
  }
}

function writeStoreFile(path: string, data: StoreFile): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 })
  const tmp = `${path}.tmp-${process.pid}`
  const fd = openSync(tmp, 'w', 0o600)
  try {
    writeFileSync(fd, JSON.stringify(data, null, 2) + '\n')
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
  chmodSync(tmp, 0o600)
  renameSync(tmp, path)
}

export const KEY_NAME_RE = /^[A-Za-z0-9_.-]+$/

export function setKey(path: string, name: string, key: string): void {
  if (!KEY_NAME_RE.test(name)) throw new KeyStoreError(`key name "${name}" may only contain letters, digits, "_", "." and "-"`)
  key = key.trim()
  if (!key) throw new KeyStoreError('the key is empty; pipe it on stdin: `printf %s "$KEY" | cordon keys set NAME`')
  if (/\s/.test(key)) throw new KeyStoreError('the key contains whitespace; check what you pasted')
  const data = readStoreFile(path, false)
  data.keys[name] = { key, updated: new Date().toISOString() }
  writeStoreFile(path, data)
}

export function removeKey(path: string, name: string): boolean {
  const data = readStoreFile(path, false)
  if (!(name in data.keys)) return false
  delete data.keys[name]
  writeStoreFile(path, data)
  return true
}

export function listKeys(path: string): Array<{ name: string; fingerprint: string; length: number; updated: string }> {
  const data = readStoreFile(path, false)
  return Object.entries(data.keys)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([name, v]) => ({ name, fingerprint: fingerprint(v.key), length: v.key.length, updated: v.updated }))
}

export function fingerprint(key: string): string {
  return 'sha256:' + createHash('sha256').update(key).digest('hex').slice(0, 12)
}

export function resolveKey(ref: KeyRef, ctx: { store: KeyStore | null; env: NodeJS.ProcessEnv }): { key: string | null; error: string | null } {
  if (ref.env) {
    const v = ctx.env[ref.env]?.trim()
    return v ? { key: v, error: null } : { key: null, error: `environment variable ${ref.env} is not set in the router's environment` }
  }
  if (ref.file) {
    try {
      const st = statSync(ref.file)
      if ((st.mode & 0o077) !== 0) return { key: null, error: `key file ${ref.file} is readable by group or others; run \`chmod 600 ${ref.file}\`` }
      const v = readFileSync(ref.file, 'utf8').trim()
      return v ? { key: v, error: null } : { key: null, error: `key file ${ref.file} is empty` }
    } catch (e) {
      return { key: null, error: `cannot read key file ${ref.file}: ${(e as NodeJS.ErrnoException).code}` }
    }
  }
  if (ref.store) {
    if (!ctx.store) return { key: null, error: `no key store was given to the router (--keys FILE)` }
    const v = ctx.store.get(ref.store)
    return v ? { key: v, error: null } : { key: null, error: `key "${ref.store}" is not in the key store ${ctx.store.path}` }
  }
  return { key: null, error: 'empty key reference' }
}

/** The hint an agent can relay to its operator when a route has no usable key. */
export function keyHint(ref: KeyRef | null, routeName: string, provider: string): string {
  if (!ref) return `no API key set for route ${routeName}: add key: {store: ${provider}} to the route's target in router.yaml and run \`cordon keys set ${provider}\``
  if (ref.store) return `no API key set for route ${routeName}: run \`cordon keys set ${ref.store}\``
  if (ref.env) return `no API key set for route ${routeName}: set ${ref.env} in the router's environment, or use key: {store: ${provider}} and run \`cordon keys set ${provider}\``
  return `no API key set for route ${routeName}: write the key to ${ref.file} (mode 600), then reload the router`
}
