/**
 * Network namespace wiring for a sandbox: its only way out is the policy engine's egress gate.
 *
 * Layout (root only; needs CAP_NET_ADMIN and iproute2's `ip`):
 *
 *   root namespace                               sandbox namespace cordon-<id>
 *   lo: 169.254.77.1/32   <- the gate listens    lo up (127.0.0.1, its own)
 *   cdn<n>h 169.254.77.(4n+1)/30  <== veth ==>    cdn<n>s 169.254.77.(4n+2)/30
 *                                                 route 169.254.77.1/32 via 169.254.77.(4n+1)
 *                                                 (no default route: nothing else is reachable)
 *
 * Why 169.254.77.0/24: link-local (RFC 3927) is never routed off the host, it is outside the
 * private ranges (10/8, 172.16/12, 192.168/16) that real networks and this workplace use, and
 * outside the metadata addresses (169.254.169.254, 169.254.170.2). n = 1..63; n = 0 is reserved
 * for the gate address. Every address used is one of ours, on our own veth or on lo.
 *
 * The root side of the pair would also reach any host service bound to 0.0.0.0, so iptables
 * INPUT rules (tagged "cordon-<id>") reject everything from cdn<n>h except TCP to the gate's
 * address and port (and FORWARD rejects all of it). When iptables is missing the result says so
 * (`firewall: false`); Landlock's TCP connect rules (ABI >= 4) remain the second line.
 *
 * Sandbox identity: the engine names the sandbox of a connection by its source address, read
 * from REGISTRY/<address> (content: the sandbox id), written here and removed by cleanup(). The
 * slot itself is claimed host-wide first (SLOT_DIR, claimSlot()).
 *
 * Non-root (no CAP_NET_ADMIN): this module does not apply; prepareNetns() throws a clear error.
 * The non-root path is lib/sandbox/userns.ts: `cordon run --gate-socket PATH` runs the sandbox in a
 * user + network namespace of its own where lib/sandbox/relay.ts carries loopback connections to
 * the engine's unix-socket gate.
 */
import fs from 'node:fs'
import path from 'node:path'
import { execFileSync } from 'node:child_process'

export const GATE_ADDRESS = '169.254.77.1'
export const NETNS_PREFIX = '169.254.77.'
export const DEFAULT_REGISTRY = '/run/cordon/netns'

export interface PrepareNetnsOptions {
  /** sandbox id: [a-z0-9-], becomes the namespace name cordon-<id> */
  id: string
  /** the gate's port (it must listen on GATE_ADDRESS, or on 0.0.0.0 with the firewall on) */
  gatePort: number
  gateAddress?: string
  /** the engine's SOCKS5 port (--socks on the gate address), if it serves one: ALL_PROXY uses it */
  socksPort?: number
  registryDir?: string
  /** install the iptables rules (default true; set false only where another firewall does it) */
  firewall?: boolean
}

export interface PreparedNetns {
  id: string
  name: string
  /** give this to the sandbox: Plan.network = { mode: 'join', path: netnsPath } */
  netnsPath: string
  sandboxAddress: string
  hostAddress: string
  gate: { host: string; port: number }
  /** merge into the sandbox environment */
  proxyEnv: Record<string, string>
  firewall: boolean
  firewallNote: string | null
  cleanup(): void
}

/**
 * net.ipv4.tcp_child_ehash_entries (Linux >= 6.1): a network namespace created while it is non-zero
 * gets a TCP connection hash of its own instead of sharing the host's. prepareNetns sets it only
 * around creating the sandbox's namespace (when nobody chose a size: 0), then puts it back. The
 * sandbox's connections then live in a small table of their own (4096 buckets, 32 KiB) that it
 * cannot fill for the host, and reading its /proc/PID/net/tcp, which the engine does to name the
 * process behind each connection, walks that table instead of the host's (262,144 buckets on a
 * 24 GiB host: ~1.4 ms a read). Where the file is absent or not writable, the namespace shares the
 * host's hash as before.
 */
const CHILD_EHASH = '/proc/sys/net/ipv4/tcp_child_ehash_entries'
export const SANDBOX_TCP_HASH_BUCKETS = 4096
function withOwnTcpHash<T>(f: () => T): T {
  let restore: string | null = null
  try {
    if (fs.readFileSync(CHILD_EHASH, 'utf8').trim() === '0') {
      fs.writeFileSync(CHILD_EHASH, String(SANDBOX_TCP_HASH_BUCKETS))
      restore = '0'
    }
  } catch {
    /* an older kernel, or read-only /proc/sys: the shared hash */
  }
  try {
    return f()
  } finally {
    if (restore !== null) {
      try {
        fs.writeFileSync(CHILD_EHASH, restore)
      } catch {
        /* left at 4096: later namespaces get a hash of their own too, which is harmless */
      }
    }
  }
}

function ip(...args: string[]): string {
  try {
    return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  } catch (e) {
    const err = e as { stderr?: string; message: string }
    throw new Error(`ip ${args.join(' ')} failed: ${(err.stderr ?? err.message).trim()}`)
  }
}

function iptables(args: string[]): void {
  execFileSync('iptables', ['-w', '5', ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
}

export function proxyEnvFor(gate: { host: string; port: number }, socksPort?: number): Record<string, string> {
  const url = `http://${gate.host}:${gate.port}`
  // socks5h: the gate resolves names (the sandbox has no DNS of its own)
  const all = socksPort ? `socks5h://${gate.host}:${socksPort}` : url
  const noProxy = 'localhost,127.0.0.1,::1'
  return {
    HTTP_PROXY: url,
    HTTPS_PROXY: url,
    ALL_PROXY: all,
    NO_PROXY: noProxy,
    http_proxy: url,
    https_proxy: url,
    all_proxy: all,
    no_proxy: noProxy,
  }
}

/** Put the gate address on the root namespace's lo (idempotent). */
export function ensureGateAddress(addr = GATE_ADDRESS): void {
  const have = ip('-o', 'addr', 'show', 'dev', 'lo')
  if (!have.includes(` ${addr}/32 `)) ip('addr', 'add', `${addr}/32`, 'dev', 'lo')
}

/**
 * Slots are host-wide: the veth names (cdn<n>h/s) and the /30 addresses are, whatever registry an
 * engine reads. So a slot is claimed in SLOT_DIR (file <n>, content: the namespace name), and only
 * then registered in the caller's registry. A claim is stale, and taken over, when its namespace is
 * gone and it is older than SLOT_GRACE_MS (a sandbox claims its slot a moment before it creates its
 * namespace).
 */
export const SLOT_DIR = '/run/cordon/slots'
const SLOT_GRACE_MS = 30_000

function claimSlot(registry: string, id: string): number {
  fs.mkdirSync(SLOT_DIR, { recursive: true, mode: 0o755 })
  fs.mkdirSync(registry, { recursive: true, mode: 0o755 })
  const name = `cordon-${id}`
  let again = 0 // retries of a slot released or taken over meanwhile: 3 in all, so the loop ends
  for (let n = 1; n < 64; n++) {
    const slot = path.join(SLOT_DIR, String(n))
    try {
      fs.writeFileSync(slot, name + '\n', { flag: 'wx', mode: 0o644 })
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e
      let owner: string
      let age: number
      try {
        age = Date.now() - fs.statSync(slot).mtimeMs
        owner = fs.readFileSync(slot, 'utf8').trim()
      } catch {
        if (again++ < 3) n-- // released meanwhile: try this slot again
        continue
      }
      // stale: its sandbox crashed (an empty claim is one being written, unless it is old)
      if (age > SLOT_GRACE_MS && (!owner || !fs.existsSync(`/run/netns/${owner}`))) {
        try {
          fs.unlinkSync(slot)
        } catch {
          /* raced */
        }
        if (again++ < 3) n--
      }
      continue
    }
    // ours: the address in this slot is registered for the engine (overwriting a stale entry)
    fs.writeFileSync(path.join(registry, `${NETNS_PREFIX}${4 * n + 2}`), id + '\n', { mode: 0o644 })
    return n
  }
  throw new Error(`no free sandbox network slot in ${NETNS_PREFIX}0/24 (63 sandboxes at most); claims live in ${SLOT_DIR} (one file per slot naming its namespace)`)
}

/**
 * Create the namespace cordon-<id> wired to the gate. Call cleanup() when the sandbox ends.
 * The sandbox helper then joins it: Plan.network = { mode: 'join', path: result.netnsPath }.
 */
export function prepareNetns(opts: PrepareNetnsOptions): PreparedNetns {
  if (!/^[a-z0-9][a-z0-9-]{0,40}$/.test(opts.id)) throw new Error(`sandbox id "${opts.id}" must be [a-z0-9-], at most 41 characters`)
  if (process.getuid?.() !== 0) {
    throw new Error('a sandbox network namespace wired to the gate needs root (CAP_NET_ADMIN) for now; run as root, or use network: none (loopback only) or host')
  }
  const gateAddress = opts.gateAddress ?? GATE_ADDRESS
  const registry = opts.registryDir ?? DEFAULT_REGISTRY
  const name = `cordon-${opts.id}`
  if (fs.existsSync(`/run/netns/${name}`)) throw new Error(`network namespace ${name} already exists (a sandbox with this id is running, or a crashed one left it: ip netns del ${name})`)
  const n = claimSlot(registry, opts.id)
  const hostAddress = `${NETNS_PREFIX}${4 * n + 1}`
  const sandboxAddress = `${NETNS_PREFIX}${4 * n + 2}`
  const hv = `cdn${n}h`
  const sv = `cdn${n}s`
  const undo: Array<() => void> = [() => fs.rmSync(path.join(SLOT_DIR, String(n)), { force: true }), () => fs.rmSync(path.join(registry, sandboxAddress), { force: true })]
  const cleanup = () => {
    for (const f of undo.splice(0).reverse()) {
      try {
        f()
      } catch {
        /* best effort: keep undoing the rest */
      }
    }
  }
  let firewall = false
  let firewallNote: string | null = null
  try {
    if (gateAddress === GATE_ADDRESS) ensureGateAddress(gateAddress)
    try {
      ip('link', 'del', hv) // a leftover from a crashed sandbox in this slot
    } catch {
      /* none */
    }
    withOwnTcpHash(() => ip('netns', 'add', name))
    undo.push(() => ip('netns', 'del', name))
    ip('link', 'add', hv, 'type', 'veth', 'peer', 'name', sv, 'netns', name)
    undo.push(() => ip('link', 'del', hv))
    ip('addr', 'add', `${hostAddress}/30`, 'dev', hv)
    ip('link', 'set', hv, 'up')
    ip('-n', name, 'link', 'set', 'lo', 'up')
    ip('-n', name, 'addr', 'add', `${sandboxAddress}/30`, 'dev', sv)
    ip('-n', name, 'link', 'set', sv, 'up')
    ip('-n', name, 'route', 'add', `${gateAddress}/32`, 'via', hostAddress, 'dev', sv)
    if (opts.firewall !== false) {
      const tag = ['-m', 'comment', '--comment', name]
      const ports = [opts.gatePort, ...(opts.socksPort ? [opts.socksPort] : [])]
      const rules: string[][] = [
        ['INPUT', '-i', hv, ...tag, '-j', 'REJECT'],
        ...ports.map((p) => ['INPUT', '-i', hv, '-p', 'tcp', '-d', gateAddress, '--dport', String(p), ...tag, '-j', 'ACCEPT']),
        ['FORWARD', '-i', hv, ...tag, '-j', 'REJECT'],
      ]
      try {
        for (const r of rules) {
          iptables(['-I', ...r])
          undo.push(() => iptables(['-D', ...r]))
        }
        firewall = true
      } catch (e) {
        firewallNote = `iptables unavailable (${(e as Error).message.split('\n')[0]}): the sandbox can reach host services bound to 0.0.0.0 through ${hostAddress}; restrict TCP connect with Landlock (ABI >= 4)`
      }
    } else firewallNote = 'firewall disabled by the caller'
  } catch (e) {
    cleanup()
    throw e
  }
  const gate = { host: gateAddress, port: opts.gatePort }
  return {
    id: opts.id,
    name,
    netnsPath: `/run/netns/${name}`,
    sandboxAddress,
    hostAddress,
    gate,
    proxyEnv: proxyEnvFor(gate, opts.socksPort),
    firewall,
    firewallNote,
    cleanup,
  }
}
