/**
 * Reference config watcher for files mounted from a Kubernetes ConfigMap (handed to the engine
 * and router owners; they keep their own copy in lib/). What it must survive:
 *  - the kubelet's update: `..data` is re-pointed at a new directory; the visible file is a
 *    symlink that never changes (see atomic-writer.ts). So: watch the DIRECTORY, accept events
 *    of ANY name, and decide by comparing the file's content hash, not by event names.
 *  - editors that write a temp file and rename it over the original (same rule).
 *  - missed or coalesced inotify events, and filesystems without inotify (NFS, some overlay
 *    setups): poll the hash every `pollMs` as a backstop.
 *  - reading mid-swap: a failed read keeps the current config.
 */
import { watch, readFileSync, type FSWatcher } from 'node:fs'
import { createHash } from 'node:crypto'
import path from 'node:path'

export interface ConfigWatcher {
  close(): void
  readonly hash: string | null
}

export function watchConfigFile(file: string, onChange: (text: string, hash: string) => void, opts: { debounceMs?: number; pollMs?: number } = {}): ConfigWatcher {
  const read = (): { text: string; hash: string } | null => {
    try {
      const text = readFileSync(file, 'utf8')
      return { text, hash: createHash('sha256').update(text).digest('hex') }
    } catch {
      return null
    }
  }
  let current = read()?.hash ?? null
  let timer: NodeJS.Timeout | null = null
  const check = () => {
    const r = read()
    if (!r || r.hash === current) return
    current = r.hash
    onChange(r.text, r.hash)
  }
  const schedule = () => {
    if (timer) clearTimeout(timer)
    timer = setTimeout(check, opts.debounceMs ?? 50)
    timer.unref()
  }
  let w: FSWatcher | null = null
  try {
    w = watch(path.dirname(path.resolve(file)), { persistent: false }, schedule)
    w.on('error', () => undefined)
  } catch {
    /* polling only */
  }
  const poll = setInterval(check, opts.pollMs ?? 2000)
  poll.unref()
  return {
    close() {
      w?.close()
      clearInterval(poll)
      if (timer) clearTimeout(timer)
    },
    get hash() {
      return current
    },
  }
}
