/**
 * The `cordon` command: one commander program; each area registers its own subcommands.
 */
import { Command } from 'commander'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)

export function buildProgram(): Command {
  const pkg = require('../../package.json') as { version: string }
  const program = new Command('cordon')
    .description('Confine AI agents with kernel enforcement; keep their keys out of reach')
    .version(pkg.version)
    .showHelpAfterError()
  return program
}
