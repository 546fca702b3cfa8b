import { Command } from 'commander'
import { register } from '../../lib/cli/router.js'
const p = new Command('cordon'); register(p)
p.parseAsync(process.argv).catch((e) => { process.stderr.write(`cordon: ${e.message}\n`); process.exit(e.exitCode ?? 1) })
