/**
 * The shipped prebuilds (prebuilds/linux-{x64,arm64}/), checked with readelf for what a user's
 * slim image needs:
 *  - right machine, stripped, N-API only (no V8/node C++ ABI symbols: one binary for every Node);
 *  - cordon-exec is static (no NEEDED, no interpreter): it runs in any image, any libc;
 *  - cordon.glibc.node needs nothing the official Node binary of that arch does not already
 *    need (it is only ever loaded into node): NEEDED ⊆ node's NEEDED, and its GLIBC / GLIBCXX /
 *    CXXABI symbol versions are <= node's. So wherever official Node 20+ runs, the addon loads.
 */
import t from 'tap'
import { join } from 'node:path'
import {
  ADDON, ARCHES, HELPER, MACHINE, compareVersions, elf, ensurePrebuilds, fmtVersion, maxVersion,
  officialNode, prebuildDir,
} from './helpers.js'

ensurePrebuilds()

for (const arch of ARCHES) {
  t.test(`linux-${arch}`, async (t) => {
    const dir = prebuildDir(arch)
    const addon = elf(join(dir, ADDON))
    const helper = elf(join(dir, HELPER))
    const node = elf(officialNode(arch, '20'))

    t.equal(addon.machine, MACHINE[arch], `${ADDON} is built for ${arch}`)
    t.equal(helper.machine, MACHINE[arch], `${HELPER} is built for ${arch}`)
    t.equal(addon.hasSymtab, false, `${ADDON} is stripped`)
    t.equal(helper.hasSymtab, false, `${HELPER} is stripped`)

    // cordon-exec: static-pie, so no library and no dynamic loader at all
    t.same(helper.needed, [], `${HELPER} NEEDs no shared library (static)`)
    t.equal(helper.interp, null, `${HELPER} has no program interpreter (static)`)
    t.equal(helper.type, 'DYN', `${HELPER} is position independent (static-pie keeps ASLR)`)

    // cordon.node: N-API module, nothing beyond what node itself loads
    const defined = addon.dynamicSymbols.filter((s) => s.defined).map((s) => s.name)
    t.ok(defined.includes('napi_register_module_v1'), 'exports the N-API module entry point')
    t.same(defined.filter((n) => /4Napi/.test(n)), [], 'node-addon-api internals are not exported (hidden visibility)')
    const undefinedSyms = addon.dynamicSymbols.filter((s) => !s.defined).map((s) => s.name)
    t.ok(undefinedSyms.some((n) => n.startsWith('napi_')), 'imports Node-API functions from the host node')
    t.same(
      undefinedSyms.filter((n) => /^_ZN(K)?(2v8|4node)|^uv_/.test(n)),
      [],
      'imports no V8, node or libuv symbols (ABI-stable across Node versions)',
    )
    const allowed = new Set(['libc.so.6', 'libm.so.6', 'libstdc++.so.6', 'libgcc_s.so.1', 'ld-linux-x86-64.so.2', 'ld-linux-aarch64.so.1'])
    t.same(addon.needed.filter((n) => !allowed.has(n)), [], `${ADDON} NEEDs only the C/C++ runtime: ${addon.needed.join(', ')}`)
    t.same(
      addon.needed.filter((n) => !node.needed.includes(n)),
      [],
      `every library ${ADDON} NEEDs is already NEEDed by official node ${arch} (${node.needed.join(', ')})`,
    )
    for (const prefix of ['GLIBC_', 'GLIBCXX_', 'CXXABI_']) {
      const mine = maxVersion(addon, prefix)
      const theirs = maxVersion(node, prefix)
      t.ok(
        mine === null || (theirs !== null && compareVersions(mine, theirs) <= 0),
        `${ADDON} needs ${prefix}${fmtVersion(mine)}; official node 20 ${arch} needs ${prefix}${fmtVersion(theirs)}`,
      )
    }
    t.comment(
      `linux-${arch}: ${ADDON} NEEDED [${addon.needed.join(', ')}], glibc >= ${fmtVersion(maxVersion(addon, 'GLIBC_'))}; ` +
        `${HELPER} static-pie`,
    )
  })
}
