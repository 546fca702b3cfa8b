/**
 * `cordon term`: the operator's terminal UI (lib/supervisor/term), attached to a running
 * `cordon up` through its control sockets, audit trails and logs.
 */
import type { Command } from 'commander'
import { loadConfig, ConfigError } from '../supervisor/config.js'
import { auditFiles } from '../supervisor/components.js'
import { controlSocket, readState, supervisorAlive, supervisorSocket } from '../supervisor/runtime.js'

export function register(program: Command): void {
  program
    .command('term')
    .description("the operator's terminal: health, egress decisions, approvals, inference calls, channels, logs")
    .option('-f, --file <cordon.yaml>', 'configuration naming the runtime, state and log dirs')
    .action(async (opts: { file?: string }) => {
      let cfg
      try {
        cfg = loadConfig(opts.file)
      } catch (e) {
        if (e instanceof ConfigError) throw Object.assign(new Error(e.message), { exitCode: 2 })
        throw e
      }
      if (!supervisorAlive(readState(cfg.runtimeDir))) throw Object.assign(new Error(`cordon is not running (runtime dir ${cfg.runtimeDir}); start it with \`cordon up\``), { exitCode: 1 })
      if (!process.stdin.isTTY) throw Object.assign(new Error('cordon term needs a terminal; in scripts use cordon status / approvals / approve / deny / logs'), { exitCode: 2 })
      const [{ render }, React, { App }, { TermStore }] = await Promise.all([import('ink'), import('react'), import('../supervisor/term/app.js'), import('../supervisor/term/store.js')])
      const store = new TermStore({
        supervisorSocket: supervisorSocket(cfg.runtimeDir),
        engineSocket: controlSocket(cfg.runtimeDir, 'engine'),
        gatewaySocket: controlSocket(cfg.runtimeDir, 'gateway'),
        routerSocket: controlSocket(cfg.runtimeDir, 'router'),
        logDir: cfg.logDir,
        auditFiles: auditFiles(cfg),
      })
      store.start()
      const app = render(React.createElement(App, { store }), { exitOnCtrlC: true })
      await app.waitUntilExit()
      store.stop()
      process.exit(0)
    })
}
