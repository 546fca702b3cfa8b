/**
 * The non-root network path to the egress gate. Without CAP_NET_ADMIN there is no veth: the
 * sandbox gets a fresh network namespace (user + net namespaces) holding only loopback, and this
 * relay, started inside that namespace before the agent, listens on 127.0.0.1:PORT and carries
 * each connection to the engine's gate unix socket (`cordon engine --listen-unix PATH`).
 * Pathname unix sockets are not tied to a network namespace, so the relay reaches the engine
 * while nothing else outside is reachable: a client that ignores the proxy settings finds no route.
 * The agent sees only the gate, whose rules apply exactly as over TCP; killing the relay only
 * cuts the sandbox's own egress.
 *
 * Use:  HTTP_PROXY=http://127.0.0.1:3128 (proxyEnvFor({ host: '127.0.0.1', port: 3128 })).
 * Run:  node relay.js --listen 127.0.0.1:3128 --gate /run/cordon/gate.sock  (prints "ready PORT")
 */
import net from 'node:net'
import { fileURLToPath } from 'node:url'

export interface RelayOptions {
  listen?: { host: string; port: number }
  /** the engine's gate unix socket */
  gateSocket: string
}

export interface Relay {
  address: { host: string; port: number }
  close(): Promise<void>
}

export async function startRelay(opts: RelayOptions): Promise<Relay> {
  const listen = opts.listen ?? { host: '127.0.0.1', port: 3128 }
  const socks = new Set<net.Socket>()
  const server = net.createServer({ noDelay: true }, (c) => {
    socks.add(c)
    const g = net.connect(opts.gateSocket)
    const drop = () => {
      c.destroy()
      g.destroy()
    }
    c.on('error', drop)
    g.on('error', () => {
      if (!c.destroyed && c.bytesWritten === 0) {
        const body = `cordon relay: the egress gate at ${opts.gateSocket} is not reachable (is \`cordon engine --listen-unix\` running?).\n`
        c.end(`HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
      } else drop()
    })
    c.pipe(g)
    g.pipe(c)
    c.on('close', () => {
      socks.delete(c)
      g.destroy()
    })
    g.on('close', () => c.end())
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(listen.port, listen.host, () => resolve())
  })
  const a = server.address() as net.AddressInfo
  return {
    address: { host: a.address, port: a.port },
    close: () =>
      new Promise<void>((r) => {
        for (const s of socks) s.destroy()
        server.close(() => r())
      }),
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const arg = (k: string) => {
    const i = process.argv.indexOf(`--${k}`)
    return i > 0 ? process.argv[i + 1] : undefined
  }
  const gate = arg('gate')
  if (!gate) {
    process.stderr.write('usage: relay --gate /run/cordon/gate.sock [--listen 127.0.0.1:3128]\n')
    process.exit(2)
  }
  const l = (arg('listen') ?? '127.0.0.1:3128').match(/^(.*):(\d+)$/)
  if (!l) {
    process.stderr.write('relay: --listen expects HOST:PORT\n')
    process.exit(2)
  }
  startRelay({ gateSocket: gate, listen: { host: l[1]!, port: Number(l[2]) } }).then(
    (r) => process.stdout.write(`ready ${r.address.port}\n`),
    (e: Error) => {
      process.stderr.write(`relay: ${e.message}\n`)
      process.exit(1)
    },
  )
}
