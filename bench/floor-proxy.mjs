/**
 * The least any Node forward proxy does (benchmark baseline, never shipped): plain HTTP with an
 * absolute URI forwarded with node:http and a keep-alive agent, CONNECT relayed with pipe().
 * No policy, no DNS, no audit. bench/engine.ts runs it beside the gate so the gate's figures can be
 * read against what Node itself costs on this machine.
 * With `undici` as its second argument the upstream leg is undici's dispatcher with a handler
 * writing into the response, as the engine's is (bodiless requests only: enough for the bench):
 * the least a proxy built on the engine's libraries costs.
 * Prints {"port": N} when listening. Usage: node bench/floor-proxy.mjs UPSTREAM_ADDRESS [undici]
 */
import http from 'node:http'
import net from 'node:net'
import { Agent } from 'undici'

const address = process.argv[2] ?? '127.0.0.1'
const agent = new http.Agent({ keepAlive: true })
const dispatcher = new Agent({ connections: 256, keepAliveTimeout: 60_000 })
const viaNodeHttp = (req, res) => {
  const u = new URL(req.url)
  const up = http.request({ host: address, port: Number(u.port || 80), method: req.method, path: u.pathname + u.search, headers: req.headers, agent }, (ur) => {
    res.writeHead(ur.statusCode ?? 502, ur.headers)
    ur.pipe(res)
  })
  up.on('socket', (s) => s.setNoDelay(true))
  up.on('error', () => res.destroy())
  req.pipe(up)
}
const viaUndici = (req, res) => {
  const u = new URL(req.url)
  const headers = []
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const k = req.rawHeaders[i].toLowerCase()
    if (k !== 'connection' && k !== 'keep-alive' && k !== 'proxy-connection') headers.push(req.rawHeaders[i], req.rawHeaders[i + 1])
  }
  dispatcher.dispatch(
    { origin: `http://${address}:${u.port || 80}`, method: req.method, path: u.pathname + u.search, headers, body: null },
    {
      onConnect() {},
      onHeaders(status, raw, _resume, text) {
        res.writeHead(status, text, raw.map((b) => b.toString('latin1')))
        return true
      },
      onData: (c) => res.write(c),
      onComplete: () => res.end(),
      onError: () => res.destroy(),
    },
  )
}
const server = http.createServer(process.argv[3] === 'undici' ? viaUndici : viaNodeHttp)
server.on('connection', (s) => s.setNoDelay(true))
server.on('connect', (req, sock, head) => {
  const port = Number(req.url.slice(req.url.lastIndexOf(':') + 1))
  const up = net.connect({ host: address, port, noDelay: true }, () => {
    sock.write('HTTP/1.1 200 Connection Established\r\n\r\n')
    if (head.length) up.write(head)
    up.pipe(sock)
    sock.pipe(up)
  })
  up.on('error', () => sock.destroy())
  sock.on('error', () => up.destroy())
})
process.once('SIGTERM', () => process.exit(0))
server.listen(0, '127.0.0.1', () => process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n'))
