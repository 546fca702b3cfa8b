/**
 * Landlock UAPI facts as data: access-right bits and the ABI version that introduced each.
 * Values are the kernel's (include/uapi/linux/landlock.h); Debian's installed header is older
 * than the kernels we target, so we keep our own table. No syscalls here: pure data.
 */

export const FS = {
  execute: 1 << 0,
  write_file: 1 << 1,
  read_file: 1 << 2,
  read_dir: 1 << 3,
  remove_dir: 1 << 4,
  remove_file: 1 << 5,
  make_char: 1 << 6,
  make_dir: 1 << 7,
  make_reg: 1 << 8,
  make_sock: 1 << 9,
  make_fifo: 1 << 10,
  make_block: 1 << 11,
  make_sym: 1 << 12,
  refer: 1 << 13,
  truncate: 1 << 14,
  ioctl_dev: 1 << 15,
} as const
export type FsRight = keyof typeof FS

export const NET = {
  bind_tcp: 1 << 0,
  connect_tcp: 1 << 1,
} as const
export type NetRight = keyof typeof NET

export const SCOPE = {
  abstract_unix_socket: 1 << 0,
  signal: 1 << 1,
} as const
export type ScopeRight = keyof typeof SCOPE

/** landlock_restrict_self() flags. */
export const RESTRICT_SELF = {
  log_same_exec_off: 1 << 0, // ABI 7
  log_new_exec_on: 1 << 1, // ABI 7
  log_subdomains_off: 1 << 2, // ABI 7
  tsync: 1 << 3, // ABI 8: apply to every thread of the process
} as const

/** The ABI version that introduced each right. */
export const INTRODUCED_IN: Record<string, number> = {
  'fs.execute': 1, 'fs.write_file': 1, 'fs.read_file': 1, 'fs.read_dir': 1, 'fs.remove_dir': 1,
  'fs.remove_file': 1, 'fs.make_char': 1, 'fs.make_dir': 1, 'fs.make_reg': 1, 'fs.make_sock': 1,
  'fs.make_fifo': 1, 'fs.make_block': 1, 'fs.make_sym': 1,
  'fs.refer': 2,
  'fs.truncate': 3,
  'net.bind_tcp': 4, 'net.connect_tcp': 4,
  'fs.ioctl_dev': 5,
  'scope.abstract_unix_socket': 6, 'scope.signal': 6,
  'restrict.log_flags': 7,
  'restrict.tsync': 8,
}

/** All fs rights known at a given ABI, as a mask. */
export function fsRightsAt(abi: number): number {
  let m = 0
  for (const [k, bit] of Object.entries(FS)) if ((INTRODUCED_IN[`fs.${k}`] ?? 99) <= abi) m |= bit
  return m
}
export function netRightsAt(abi: number): number {
  return abi >= 4 ? NET.bind_tcp | NET.connect_tcp : 0
}
export function scopesAt(abi: number): number {
  return abi >= 6 ? SCOPE.abstract_unix_socket | SCOPE.signal : 0
}

/** Names of the bits set in mask, for reports ("read_file, read_dir"). */
export function rightNames(table: Record<string, number>, mask: number): string[] {
  return Object.entries(table).filter(([, b]) => (mask & b) !== 0).map(([k]) => k)
}

/** Rights that only make sense on directories; stripped when a rule's path is a file. */
export const DIR_ONLY =
  FS.read_dir | FS.remove_dir | FS.remove_file | FS.make_char | FS.make_dir | FS.make_reg |
  FS.make_sock | FS.make_fifo | FS.make_block | FS.make_sym | FS.refer
