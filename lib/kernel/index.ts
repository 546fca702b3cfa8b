/** lib/kernel: the addon, the helper's location, typed wrappers and the feature probe. */
export { addon, helperPath, packageRoot, setAddonForTesting } from './addon.js'
export type { CordonAddon } from './addon.js'
export { probe, doctor, nodeArch } from './probe.js'
export type { DoctorReport } from './probe.js'
export * as abi from './abi.js'
export * as relay from './relay.js'
