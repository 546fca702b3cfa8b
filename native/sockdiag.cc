// One TCP socket's inode, asked of the kernel by its addresses (NETLINK_SOCK_DIAG, an exact
// lookup, not a dump): the egress gate uses it to name the process behind a client connection
// (lib/engine/procinfo.ts does the rest, in TypeScript). Reading /proc/PID/net/tcp instead walks
// the namespace's whole connection hash, ~0.15 ms for a sandbox's small one and milliseconds for the
// host's; this asks for the one entry.
//
// Why hand-written: Node has no netlink sockets, and no npm library does an inet_diag exact lookup
// in another network namespace without spawning `ss`. The shim is the request/reply pair and, for
// another namespace, the setns there and back around socket(): a netlink socket belongs to the
// namespace it was created in.
#include <napi.h>

#include "errors.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

namespace cordon {
namespace {

// A NETLINK_SOCK_DIAG socket in the network namespace at nsPath ("" = the calling thread's own).
// The calling thread (the JS thread) goes into that namespace for the socket() call only and comes
// back; a thread that could not come back would create the gate's later sockets in the sandbox's
// namespace, so that aborts the process rather than continue.
int DiagSocket(const std::string& nsPath, int* err, const char** what) {
  if (nsPath.empty()) {
    int s = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (s < 0) *err = errno, *what = "socket";
    return s;
  }
  int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (self < 0) return *err = errno, *what = "open", -1;
  int target = open(nsPath.c_str(), O_RDONLY | O_CLOEXEC);
  if (target < 0) {
    *err = errno, *what = "open";
    close(self);
    return -1;
  }
  int s = -1;
  if (setns(target, CLONE_NEWNET) != 0) {
    *err = errno, *what = "setns";
  } else {
    s = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (s < 0) *err = errno, *what = "socket";
    if (setns(self, CLONE_NEWNET) != 0) abort();
  }
  close(target);
  close(self);
  return s;
}

bool AddrArg(const Napi::CallbackInfo& info, size_t i, size_t len, uint8_t* out) {
  if (info.Length() <= i || !info[i].IsTypedArray()) return false;
  Napi::TypedArray ta = info[i].As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_uint8_array || ta.ByteLength() != len) return false;
  memcpy(out, ta.As<Napi::Uint8Array>().Data(), len);
  return true;
}

// sockDiagInode(netnsPath, family 4|6, src, srcPort, dst, dstPort) -> the inode of the TCP socket
// whose local address is src:srcPort and remote dst:dstPort in that namespace ("" = our own), or 0
// when the kernel has no such socket (or one no process holds, e.g. in TIME_WAIT). src and dst are
// Uint8Arrays of 4 (family 4) or 16 bytes. The kernel answers ENOENT both for "no such socket" and
// for "no inet_diag support"; the caller tells them apart by asking for a socket it holds.
Napi::Value SockDiagInode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int family, sport, dport;
  struct {
    struct nlmsghdr nlh;
    struct inet_diag_req_v2 req;
  } msg;
  memset(&msg, 0, sizeof msg);
  if (info.Length() < 6 || !info[0].IsString() || !IntArg(info, 1, &family) || (family != 4 && family != 6) ||
      !IntArg(info, 3, &sport) || sport > 65535 || !IntArg(info, 5, &dport) || dport > 65535)
    return ThrowType(env, "sockDiagInode(netnsPath: string, family: 4|6, src: Uint8Array, srcPort, dst: Uint8Array, dstPort)");
  size_t alen = family == 4 ? 4 : 16;
  if (!AddrArg(info, 2, alen, reinterpret_cast<uint8_t*>(msg.req.id.idiag_src)) ||
      !AddrArg(info, 4, alen, reinterpret_cast<uint8_t*>(msg.req.id.idiag_dst)))
    return ThrowType(env, "sockDiagInode: src and dst must be Uint8Arrays of 4 (family 4) or 16 (family 6) bytes");
  std::string nsPath = info[0].As<Napi::String>().Utf8Value();
  if (nsPath.find('\0') != std::string::npos) return ThrowType(env, "sockDiagInode: netnsPath contains a NUL byte");

  msg.nlh.nlmsg_len = sizeof msg;
  msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  msg.nlh.nlmsg_flags = NLM_F_REQUEST;
  msg.nlh.nlmsg_seq = 1;
  msg.req.sdiag_family = family == 4 ? AF_INET : AF_INET6;
  msg.req.sdiag_protocol = IPPROTO_TCP;
  msg.req.idiag_states = ~0u;
  msg.req.id.idiag_sport = htons(static_cast<uint16_t>(sport));
  msg.req.id.idiag_dport = htons(static_cast<uint16_t>(dport));
  msg.req.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  msg.req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;

  int err = 0;
  const char* what = "";
  int s = DiagSocket(nsPath, &err, &what);
  if (s < 0) return ThrowErrno(env, err, what, nsPath);
  struct sockaddr_nl kernel;
  memset(&kernel, 0, sizeof kernel);
  kernel.nl_family = AF_NETLINK;
  if (sendto(s, &msg, sizeof msg, 0, reinterpret_cast<struct sockaddr*>(&kernel), sizeof kernel) < 0) {
    err = errno;
    close(s);
    return ThrowErrno(env, err, "sendto");
  }
  // the kernel answers an exact lookup inside sendto(): the reply is queued by now, so this never
  // blocks the JS thread (EAGAIN would mean a kernel that does otherwise: reported, not waited for)
  alignas(struct nlmsghdr) char buf[8192];
  ssize_t n = recv(s, buf, sizeof buf, MSG_DONTWAIT);
  err = errno;
  close(s);
  if (n < 0) return ThrowErrno(env, err, "recv");
  auto* h = reinterpret_cast<struct nlmsghdr*>(buf);
  if (!NLMSG_OK(h, static_cast<unsigned>(n))) return ThrowErrno(env, EIO, "recv");
  if (h->nlmsg_type == NLMSG_ERROR) {
    if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct nlmsgerr))) return ThrowErrno(env, EIO, "recv");
    int e = -static_cast<struct nlmsgerr*>(NLMSG_DATA(h))->error;
    if (e == ENOENT) return Napi::Number::New(env, 0);
    return ThrowErrno(env, e, "sock_diag");
  }
  if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct inet_diag_msg)))
    return ThrowErrno(env, EIO, "recv");
  return Napi::Number::New(env, static_cast<struct inet_diag_msg*>(NLMSG_DATA(h))->idiag_inode);
}

}  // namespace

void SockDiagInit(Napi::Env env, Napi::Object exports) {
  exports.Set("sockDiagInode", Napi::Function::New(env, SockDiagInode, "sockDiagInode"));
}

}  // namespace cordon
