/**
 * The `cordon` command: one commander program; each area registers its own subcommands from
 * its own module (lib/cli/<area>.ts exporting `register(program)`).
 */
import { Command } from 'commander'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)

/** Area modules, in the order their commands appear in `cordon --help`. */
const AREAS = ['run', 'policy', 'engine', 'router', 'gateway', 'up', 'term'] as const

export async function buildProgram(): Promise<Command> {
  const pkg = require('../../package.json') as { version: string }
  const program = new Command('cordon')
    .description('Confine AI agents with kernel enforcement; keep their keys out of reach')
    .version(pkg.version)
    .showHelpAfterError()
  for (const area of AREAS) {
    let mod: { register?: (p: Command) => void }
    try {
      mod = await import(`./${area}.js`)
    } catch (err) {
      const e = err as NodeJS.ErrnoException
      // During development an area may not exist yet; anything else is a real error.
      if (e.code === 'ERR_MODULE_NOT_FOUND' && String(e.message).includes(`cli/${area}.`)) continue
      throw err
    }
    mod.register?.(program)
  }
  return program
}
