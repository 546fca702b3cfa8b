#!/usr/bin/env node
// Runs the compiled CLI (dist/, built by `npm install` through the prepare script).
import('../dist/cli/main.js').catch((err) => {
  if (err && err.code === 'ERR_MODULE_NOT_FOUND' && String(err.message).includes('dist/cli/main.js')) {
    process.stderr.write('cordon: the TypeScript build is missing; run `npm run build` in the package directory\n')
    process.exit(1)
  }
  throw err
})
