#!/usr/bin/env node
/** Entry point of the `cordon` command (bin/cordon.js loads the compiled copy of this file). */
import { buildProgram } from './index.js'

try {
  const program = await buildProgram()
  await program.parseAsync(process.argv)
} catch (err) {
  const e = err as { message?: string; exitCode?: number }
  process.stderr.write(`cordon: ${e?.message ?? String(err)}\n`)
  process.exit(typeof e?.exitCode === 'number' ? e.exitCode : 1)
}
