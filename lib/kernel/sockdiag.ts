/**
 * One TCP socket's inode, asked of the kernel by the socket's addresses (native/sockdiag.cc: an
 * exact NETLINK_SOCK_DIAG lookup), in the caller's network namespace or another one. The egress
 * gate uses it to find the socket of a client connection (lib/engine/procinfo.ts); reading
 * /proc/PID/net/tcp instead walks the namespace's whole connection hash.
 */
import { addon } from './addon.js'

export interface TcpEnd {
  /** 4 bytes for family 4, 16 for family 6 */
  addr: Uint8Array
  port: number
}

/**
 * The inode of the TCP socket whose local end is `local` and remote end `remote`, in the network
 * namespace at `netns` (a /proc/PID/ns/net path, or '' for the caller's own); 0 when the kernel
 * knows no such socket, or one no process holds (TIME_WAIT), or has no inet_diag support: it says
 * ENOENT for all three, so a caller that needs to know asks for a socket it holds. Throws a system
 * error (EACCES/ENOENT opening the namespace, EPERM from setns) when it cannot ask.
 */
export function tcpSocketInode(netns: string, family: 4 | 6, local: TcpEnd, remote: TcpEnd): number {
  return addon().sockDiagInode(netns, family, local.addr, local.port, remote.addr, remote.port)
}
