#!/usr/bin/env node
// cordon-probe: the image's health probe for Kubernetes exec probes (and podman healthchecks).
// The image has no curl; an exec probe also reaches unix sockets and needs no token in the pod
// spec (httpGet probes would need the control token in `httpHeaders`, i.e. in the spec).
//   cordon-probe http://HOST:PORT/PATH     GET, healthy on 2xx
//   cordon-probe unix:/SOCKET/PATH         GET over a unix socket (socket path ends at ".sock")
//   cordon-probe tcp:HOST:PORT             TCP connect
//   cordon-probe child                     PID 1 has at least one live child (the confined agent)
import http from 'node:http'
import net from 'node:net'
import fs from 'node:fs'

const arg = process.argv[2] ?? ''
const TIMEOUT = Number(process.env.CORDON_PROBE_TIMEOUT_MS ?? 3000)
const fail = (why) => { process.stderr.write(`cordon-probe ${arg}: ${why}\n`); process.exit(1) }
setTimeout(() => fail(`no answer in ${TIMEOUT} ms`), TIMEOUT).unref()

function get(opts) {
  const req = http.get({ ...opts, timeout: TIMEOUT }, (res) => {
    res.resume()
    if (res.statusCode >= 200 && res.statusCode < 300) process.exit(0)
    fail(`HTTP ${res.statusCode}`)
  })
  req.on('error', (e) => fail(e.code ?? e.message))
}

if (arg.startsWith('http://')) {
  const u = new URL(arg)
  get({ host: u.hostname, port: u.port || 80, path: u.pathname + u.search })
} else if (arg.startsWith('unix:')) {
  const rest = arg.slice(5)
  const i = rest.indexOf('.sock')
  if (i < 0) fail('unix:PATH must name a socket ending in .sock, then the HTTP path')
  get({ socketPath: rest.slice(0, i + 5), path: rest.slice(i + 5) || '/' })
} else if (arg.startsWith('tcp:')) {
  const [host, port] = [arg.slice(4, arg.lastIndexOf(':')), Number(arg.slice(arg.lastIndexOf(':') + 1))]
  const s = net.connect({ host, port }, () => { s.destroy(); process.exit(0) })
  s.on('error', (e) => fail(e.code ?? e.message))
} else if (arg === 'child') {
  const kids = fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d)).filter((pid) => {
    try {
      const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
      const f = st.slice(st.lastIndexOf(')') + 2).split(' ')
      return f[1] === '1' && f[0] !== 'Z' && Number(pid) !== process.pid
    } catch { return false }
  })
  if (kids.length > 0) process.exit(0)
  fail('PID 1 has no live child: the agent is gone')
} else {
  fail('usage: cordon-probe http://H:P/PATH | unix:/S.sock/PATH | tcp:H:P | child')
}
