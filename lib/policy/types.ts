/**
 * The resolved policy: a validated policy file (or object) merged with the profile it extends,
 * every path expanded to an absolute path, every name looked up. Pure data; compilePlan() turns
 * it plus the probed kernel features into a Plan (plan.ts).
 */
import type { RlimitName } from './plan.js'
import type { OciSeccompProfile } from './seccomp/oci.js'

/** Where a value came from, for error messages and `policy explain`. */
export interface Origin {
  /** field path, e.g. "filesystem.read_only[2]" */
  field: string
  file?: string
  line?: number
}

export interface PathEntry {
  /** absolute, `~` and ${workspace} expanded, not yet symlink-resolved */
  path: string
  optional: boolean
  origin: Origin
}

/** A network rule exactly as written (the policy engine evaluates it). */
export type NetRule =
  | string
  | { host?: string; cidr?: string; ports?: number[]; methods?: string[]; paths?: string[] }

export type NetworkPolicy =
  | { mode: 'none' }
  | { mode: 'host' }
  | {
      mode: 'proxy'
      presets: string[]
      allow: NetRule[]
      deny: NetRule[]
      unlisted: 'ask' | 'deny'
      /** TCP ports the sandbox may bind (Landlock bind_tcp rules at ABI >= 4) */
      bind: number[]
      /** TCP ports the sandbox may connect to besides the gate's (Landlock connect_tcp at ABI >= 4) */
      connect: number[]
      /** new: a namespace whose only route is the gate; current: the one cordon runs in (a pod's) */
      namespace: 'new' | 'current' 
    }

export type RlimitValue = number | 'unlimited' | { soft: number | 'unlimited'; hard: number | 'unlimited' }

export interface ResolvedPolicy {
  version: 1
  /** the policy file, or opts.source / '<object>' */
  source: string
  /** the profile this policy was merged onto ('none' = nothing) */
  extends: string
  requirements: {
    /** minimum Landlock ABI; null = none stated (but Landlock itself is still required) */
    landlockAbi: number | null
    /** rights that must be enforceable, e.g. "fs.refer", "net.connect_tcp", "scope.signal" */
    rights: string[]
    /** true: run with what the kernel has and report the rest in plan.lost */
    bestEffort: boolean
    /** where each requirement was set (for errors at compile time) */
    origins: { landlockAbi: Origin; rights: Origin; bestEffort: Origin }
  }
  filesystem: {
    /** absolute workspace directory (read-write), or null when the policy has none */
    workspace: string | null
    /** grant the read-only system paths (see SYSTEM_PATHS in compile.ts) */
    system: boolean
    readOnly: PathEntry[]
    readWrite: PathEntry[]
    executable: PathEntry[]
    /** private: a writable home at <workspace>/.cordon/home, HOME points there */
    home: 'private' | 'none'
    /** private: <workspace>/.cordon/tmp mounted on /tmp; shared: the host /tmp read-write */
    tmp: 'private' | 'shared' | 'none'
  }
  network: NetworkPolicy
  process: {
    /** null = no seccomp filter */
    seccomp: { source: string; profile: OciSeccompProfile } | null
    env: { pass: string[]; set: Record<string, string> }
    rlimits: Partial<Record<RlimitName, RlimitValue>>
    capabilities: 'none'
    /**
     * other processes in /proc: hidden (a procfs of the sandbox's own shows only the processes of
     * its Landlock domain; needs root, else lost), visible, or auto (hidden where cordon can: as
     * root, with Landlock; visible otherwise, without a lost entry)
     */
    others: 'hidden' | 'visible' | 'auto'
  }
}
