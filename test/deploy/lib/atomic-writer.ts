/**
 * The kubelet's ConfigMap/Secret volume layout and update sequence (pkg/volume/util/atomic_writer.go),
 * reproduced for tests:
 *   DIR/..2026_11_25_12_00_00.000000001/<files>   the payload, one timestamped directory per version
 *   DIR/..data -> ..2026_11_25_12_00_00.000000001 the current version
 *   DIR/<file> -> ..data/<file>                   what the container opens
 * An update writes a new timestamped directory, points a new `..data_tmp` symlink at it, renames
 * `..data_tmp` over `..data` (the atomic switch), fixes the user-visible symlinks, and removes the
 * old directory. The user-visible symlink `DIR/<file>` itself never changes, so a watcher filtered
 * on `<file>`'s name, or an inotify watch on the file's inode, misses the update.
 */
import { mkdirSync, writeFileSync, symlinkSync, renameSync, rmSync, readlinkSync, existsSync, unlinkSync } from 'node:fs'
import path from 'node:path'

let seq = 0
function stamp(): string {
  const d = new Date()
  const p = (n: number, w = 2) => String(n).padStart(w, '0')
  seq++
  return `..${d.getUTCFullYear()}_${p(d.getUTCMonth() + 1)}_${p(d.getUTCDate())}_${p(d.getUTCHours())}_${p(d.getUTCMinutes())}_${p(d.getUTCSeconds())}.${p(process.hrtime()[1] + seq, 9)}`
}

export class AtomicWriterDir {
  constructor(readonly dir: string) {}

  /** Write a new version of the payload (all files), the way the kubelet does. */
  write(files: Record<string, string>): void {
    mkdirSync(this.dir, { recursive: true })
    const dataLink = path.join(this.dir, '..data')
    const old = existsSync(dataLink) ? readlinkSync(dataLink) : null
    const ts = stamp()
    mkdirSync(path.join(this.dir, ts), { mode: 0o755 })
    for (const [name, content] of Object.entries(files)) writeFileSync(path.join(this.dir, ts, name), content, { mode: 0o644 })
    const tmp = path.join(this.dir, '..data_tmp')
    symlinkSync(ts, tmp)
    renameSync(tmp, dataLink) // the atomic switch
    for (const name of Object.keys(files)) {
      const visible = path.join(this.dir, name)
      if (!existsSync(visible)) symlinkSync(path.join('..data', name), visible)
    }
    if (old) rmSync(path.join(this.dir, old), { recursive: true, force: true }) // the previous payload
  }

  /** Remove a user-visible file (its symlink), as when a key leaves the ConfigMap. */
  unlink(name: string): void {
    unlinkSync(path.join(this.dir, name))
  }
}
