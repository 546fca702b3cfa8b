/**
 * The compiled plan: the contract between lib/policy (which produces it, purely, from a policy
 * and the probed kernel features) and lib/sandbox + native/ (which apply it, without deciding
 * anything). Every field is already final: the appliers do no policy logic.
 */

export type Arch = 'x86_64' | 'aarch64'

/** What the kernel offers, as probed by lib/kernel/probe.ts (or given by a test). */
export interface KernelFeatures {
  arch: Arch
  /** Landlock ABI version; 0 when Landlock is absent or disabled. */
  landlockAbi: number
  seccomp: boolean
  /** SECCOMP_FILTER_FLAG_TSYNC usable. */
  seccompTsync: boolean
  userNamespaces: boolean
  networkNamespaces: boolean
  cgroupV2: boolean
  isRoot: boolean
}

export interface LandlockPathRule {
  /** Absolute, normalized path (symlinks resolved by the compiler). */
  path: string
  /** Landlock fs access mask (lib/kernel/abi.ts FS bits), already limited to the ABI. */
  access: number
  /** A missing optional path is skipped by the applier; a missing required one is an error. */
  optional: boolean
  /** Where the rule came from, for `policy explain` and reports ("filesystem.read_only[2]"). */
  origin: string
}

export interface LandlockPortRule {
  port: number
  /** NET bits */
  access: number
  origin: string
}

export interface LandlockPlan {
  /** handled_access_fs for landlock_create_ruleset */
  handledFs: number
  /** handled_access_net (0 below ABI 4) */
  handledNet: number
  /** scoped (0 below ABI 6) */
  scoped: number
  /** landlock_restrict_self flags other than TSYNC (logging flags, ABI >= 7) */
  restrictFlags: number
  paths: LandlockPathRule[]
  ports: LandlockPortRule[]
}

export interface SeccompPlan {
  arch: Arch
  /** struct sock_filter[] as bytes (8 bytes per instruction, little endian). */
  filter: Uint8Array
  /** Name or path of the OCI profile it was compiled from. */
  source: string
}

export type NetworkPlan =
  | { mode: 'host' }
  /** a fresh network namespace with only loopback up */
  | { mode: 'none' }
  /** join an existing network namespace (prepared by the engine wiring), e.g. /run/netns/cordon-x */
  | { mode: 'join'; path: string }

export type RlimitName =
  | 'as' | 'core' | 'cpu' | 'data' | 'fsize' | 'memlock' | 'nofile' | 'nproc' | 'stack'

export interface RlimitPlan {
  resource: RlimitName
  /** null = unlimited */
  soft: number | null
  hard: number | null
}

export interface Plan {
  /** Landlock ABI this plan was compiled for (features.landlockAbi). */
  abi: number
  /** null only when the policy accepted running without Landlock (never by default). */
  landlock: LandlockPlan | null
  /** null only when the policy says `seccomp: none`. */
  seccomp: SeccompPlan | null
  network: NetworkPlan
  /** A private /tmp: this host directory is bind-mounted on /tmp in a new mount namespace. */
  privateTmp: string | null
  /** Directories the applier must create (mode 0700) before applying, e.g. the sandbox home. */
  mkdirs: string[]
  /** The complete environment of the confined program (already scrubbed). */
  env: Record<string, string>
  rlimits: RlimitPlan[]
  /** Drop every capability (bounding, ambient, effective, permitted, inheritable) before exec. */
  dropCapabilities: boolean
  /**
   * Mount a procfs of the sandbox's own on /proc, in a new mount namespace. As root with
   * hidepid=invisible: once the Landlock domain is in force it lists only the processes of that
   * domain. Without root (process.others: hidden, not lock()) in a new PID namespace, whose init
   * is a process of the helper's: it lists only the namespace's processes.
   */
  hideProcesses: boolean
  /**
   * Without root on `auto`: the helper tries the PID namespace, and where the kernel refuses it
   * (a container's seccomp filter, a namespace limit, a /proc it may not mount) the host's
   * processes stay listed, as `auto` promises no more. `hidden` never gets this.
   */
  hideProcessesBestEffort?: boolean
  /**
   * An existing path that no rule grants read access to; the second run of lock() opens it to
   * verify Landlock is in force (expects EACCES). null when the policy grants everything.
   */
  probePath: string | null
  /** Human-readable lines: what the policy asked for that this kernel cannot enforce. */
  lost: string[]
  /** sha256 over the canonical plan (without this field); lock() compares it across re-exec. */
  hash: string
}
