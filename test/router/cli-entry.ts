/**
 * Not a test: the `cordon` CLI with only lib/cli/router.ts registered, run by cli.test.ts in child
 * processes (so that test does not depend on the rest of the CLI). Without arguments (as when a
 * test runner is pointed at the whole directory) it does nothing.
 */
import { Command } from 'commander'
import { register } from '../../lib/cli/router.js'

if (process.argv.length > 2) {
  const p = new Command('cordon')
  register(p)
  p.parseAsync(process.argv).catch((e: { message?: string; exitCode?: number }) => {
    process.stderr.write(`cordon: ${e.message}\n`)
    process.exit(e.exitCode ?? 1)
  })
}
