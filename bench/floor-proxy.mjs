/**
 * The least any Node forward proxy does (benchmark baseline, never shipped): plain HTTP with an
 * absolute URI forwarded with node:http and a keep-alive agent, CONNECT relayed with pipe().
 * No policy, no DNS, no audit. bench/engine.ts runs it beside the gate so the gate's figures can be
 * read against what Node itself costs on this machine.
 * Prints {"port": N} when listening. Usage: node bench/floor-proxy.mjs UPSTREAM_ADDRESS
 */
import http from 'node:http'
import net from 'node:net'

const address = process.argv[2] ?? '127.0.0.1'
const agent = new http.Agent({ keepAlive: true })
const server = http.createServer((req, res) => {
  const u = new URL(req.url)
  const up = http.request({ host: address, port: Number(u.port || 80), method: req.method, path: u.pathname + u.search, headers: req.headers, agent }, (ur) => {
    res.writeHead(ur.statusCode ?? 502, ur.headers)
    ur.pipe(res)
  })
  up.on('socket', (s) => s.setNoDelay(true))
  up.on('error', () => res.destroy())
  req.pipe(up)
})
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
