// cordon native addon: thin syscall shims for Landlock, seccomp, no_new_privs and execve
// (the egress gate's splice relay, the one part that is not a shim, is in relay.cc; its socket
// lookup, a netlink request/reply, in sockdiag.cc).
//
// Why hand-written: no Node library exposes Landlock or seccomp. Each function here performs one
// syscall (or one tightly bound pair, e.g. open + landlock_add_rule), checks its arguments, and
// maps errno to a JS Error with .code ('EACCES'...), .errno and .syscall. No policy logic lives
// here: lib/policy compiles the plan, lib/sandbox decides what to call.
//
// The Landlock UAPI is defined locally because Debian 12's <linux/landlock.h> predates ABI 4..8.
// Raw syscall numbers 444/445/446 are identical on x86_64 and aarch64 (asm-generic table).
#ifndef NAPI_VERSION
#define NAPI_VERSION 8
#endif
#ifndef NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS
#define NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS
#endif
#include <napi.h>

#include "errors.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <vector>

namespace {

constexpr long kSysLandlockCreateRuleset = 444;
constexpr long kSysLandlockAddRule = 445;
constexpr long kSysLandlockRestrictSelf = 446;
constexpr uint32_t kLandlockCreateRulesetVersion = 1u << 0;
constexpr int kLandlockRulePathBeneath = 1;
constexpr int kLandlockRuleNetPort = 2;

struct LandlockRulesetAttr {
  uint64_t handled_access_fs;
  uint64_t handled_access_net;
  uint64_t scoped;
};

struct __attribute__((packed)) LandlockPathBeneathAttr {
  uint64_t allowed_access;
  int32_t parent_fd;
};

struct LandlockNetPortAttr {
  uint64_t allowed_access;
  uint64_t port;
};

#ifndef SECCOMP_SET_MODE_FILTER
#define SECCOMP_SET_MODE_FILTER 1
#endif

using cordon::IntArg;
using cordon::ThrowErrno;
using cordon::ThrowType;
using cordon::U64Arg;

// landlockAbi(): the Landlock ABI version, or 0 when Landlock is absent or disabled.
Napi::Value LandlockAbi(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  long r = syscall(kSysLandlockCreateRuleset, nullptr, 0, kLandlockCreateRulesetVersion);
  if (r < 0) {
    if (errno == ENOSYS || errno == EOPNOTSUPP) return Napi::Number::New(env, 0);
    return ThrowErrno(env, errno, "landlock_create_ruleset");
  }
  return Napi::Number::New(env, static_cast<double>(r));
}

// landlockCreateRuleset(handledFs, handledNet, scoped) -> fd (O_CLOEXEC by the kernel).
Napi::Value LandlockCreateRuleset(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  LandlockRulesetAttr attr{};
  if (!U64Arg(info, 0, &attr.handled_access_fs) || !U64Arg(info, 1, &attr.handled_access_net) ||
      !U64Arg(info, 2, &attr.scoped))
    return ThrowType(env, "landlockCreateRuleset(fs, net, scoped): three non-negative integers");
  // Pass the smallest struct size that carries the non-zero fields, so older kernels accept it.
  size_t size = sizeof(uint64_t);
  if (attr.handled_access_net) size = 2 * sizeof(uint64_t);
  if (attr.scoped) size = 3 * sizeof(uint64_t);
  long fd = syscall(kSysLandlockCreateRuleset, &attr, size, 0);
  if (fd < 0) return ThrowErrno(env, errno, "landlock_create_ruleset");
  return Napi::Number::New(env, static_cast<double>(fd));
}

// landlockAddPathRule(rulesetFd, path, access): opens path O_PATH|O_CLOEXEC and adds the rule.
Napi::Value LandlockAddPathRule(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int rfd;
  uint64_t access;
  if (!IntArg(info, 0, &rfd) || info.Length() < 3 || !info[1].IsString() || !U64Arg(info, 2, &access))
    return ThrowType(env, "landlockAddPathRule(fd, path, access)");
  std::string path = info[1].As<Napi::String>().Utf8Value();
  int pfd = open(path.c_str(), O_PATH | O_CLOEXEC);
  if (pfd < 0) return ThrowErrno(env, errno, "open", path);
  LandlockPathBeneathAttr attr{};
  attr.allowed_access = access;
  attr.parent_fd = pfd;
  long r = syscall(kSysLandlockAddRule, rfd, kLandlockRulePathBeneath, &attr, 0);
  int err = errno;
  close(pfd);
  if (r < 0) return ThrowErrno(env, err, "landlock_add_rule", path);
  return env.Undefined();
}

// landlockAddPortRule(rulesetFd, port, access)
Napi::Value LandlockAddPortRule(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int rfd;
  LandlockNetPortAttr attr{};
  if (!IntArg(info, 0, &rfd) || !U64Arg(info, 1, &attr.port) || !U64Arg(info, 2, &attr.allowed_access) ||
      attr.port > 65535)
    return ThrowType(env, "landlockAddPortRule(fd, port 0..65535, access)");
  long r = syscall(kSysLandlockAddRule, rfd, kLandlockRuleNetPort, &attr, 0);
  if (r < 0) return ThrowErrno(env, errno, "landlock_add_rule");
  return env.Undefined();
}

// landlockRestrictSelf(rulesetFd, flags)
Napi::Value LandlockRestrictSelf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int rfd;
  uint64_t flags;
  if (!IntArg(info, 0, &rfd) || !U64Arg(info, 1, &flags) || flags > 0xffffffffu)
    return ThrowType(env, "landlockRestrictSelf(fd, flags)");
  long r = syscall(kSysLandlockRestrictSelf, rfd, static_cast<uint32_t>(flags));
  if (r < 0) return ThrowErrno(env, errno, "landlock_restrict_self");
  return env.Undefined();
}

Napi::Value SetNoNewPrivs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return ThrowErrno(env, errno, "prctl");
  return env.Undefined();
}

Napi::Value GetNoNewPrivs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int r = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
  if (r < 0) return ThrowErrno(env, errno, "prctl");
  return Napi::Boolean::New(env, r == 1);
}

// seccompSetFilter(prog: Uint8Array of struct sock_filter[], flags): returns 0; with
// SECCOMP_FILTER_FLAG_TSYNC a thread that could not be synchronized makes this throw ESRCH with
// .tid set to that thread.
Napi::Value SeccompSetFilter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t flags;
  if (info.Length() < 2 || !info[0].IsTypedArray() || !U64Arg(info, 1, &flags))
    return ThrowType(env, "seccompSetFilter(prog: Uint8Array, flags)");
  Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_uint8_array) return ThrowType(env, "seccompSetFilter: prog must be a Uint8Array");
  Napi::Uint8Array u8 = ta.As<Napi::Uint8Array>();
  size_t len = u8.ByteLength();
  if (len == 0 || len % sizeof(struct sock_filter) != 0 || len / sizeof(struct sock_filter) > 4096)
    return ThrowType(env, "seccompSetFilter: prog length must be a non-zero multiple of 8 bytes (<= 4096 insns)");
  std::vector<struct sock_filter> insns(len / sizeof(struct sock_filter));
  memcpy(insns.data(), u8.Data(), len);
  struct sock_fprog prog;
  prog.len = static_cast<unsigned short>(insns.size());
  prog.filter = insns.data();
  long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, static_cast<unsigned int>(flags), &prog);
  if (r < 0) return ThrowErrno(env, errno, "seccomp");
  if (r > 0) {
    ThrowErrno(env, ESRCH, "seccomp");
    return env.Undefined();
  }
  return env.Undefined();
}

Napi::Value SeccompGetMode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int r = prctl(PR_GET_SECCOMP, 0, 0, 0, 0);
  if (r < 0) {
    // In SECCOMP_MODE_STRICT prctl itself is killed; EINVAL means no seccomp support.
    if (errno == EINVAL) return Napi::Number::New(env, -1);
    return ThrowErrno(env, errno, "prctl");
  }
  return Napi::Number::New(env, r);
}

// setrlimit(resourceNumber, soft, hard): soft/hard are numbers or null (= RLIM_INFINITY).
Napi::Value SetRlimit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int res;
  if (!IntArg(info, 0, &res) || info.Length() < 3) return ThrowType(env, "setrlimit(resource, soft|null, hard|null)");
  struct rlimit rl;
  uint64_t v;
  if (info[1].IsNull()) rl.rlim_cur = RLIM_INFINITY;
  else if (U64Arg(info, 1, &v)) rl.rlim_cur = v;
  else return ThrowType(env, "setrlimit: soft must be a non-negative integer or null");
  if (info[2].IsNull()) rl.rlim_max = RLIM_INFINITY;
  else if (U64Arg(info, 2, &v)) rl.rlim_max = v;
  else return ThrowType(env, "setrlimit: hard must be a non-negative integer or null");
  if (setrlimit(static_cast<__rlimit_resource_t>(res), &rl) != 0) return ThrowErrno(env, errno, "setrlimit");
  return env.Undefined();
}

Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!IntArg(info, 0, &fd)) return ThrowType(env, "closeFd(fd)");
  if (close(fd) != 0) return ThrowErrno(env, errno, "close");
  return env.Undefined();
}

bool StringArray(Napi::Value v, std::vector<std::string>* out) {
  if (!v.IsArray()) return false;
  Napi::Array a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); i++) {
    Napi::Value e = a.Get(i);
    if (!e.IsString()) return false;
    std::string s = e.As<Napi::String>().Utf8Value();
    if (s.find('\0') != std::string::npos) return false;
    out->push_back(std::move(s));
  }
  return true;
}

// execve(path, argv[], envp[]): replaces the process image, keeping stdio (fds 0..2); only
// returns by throwing.
Napi::Value Execve(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<std::string> argv, envp;
  if (info.Length() < 3 || !info[0].IsString() || !StringArray(info[1], &argv) || !StringArray(info[2], &envp))
    return ThrowType(env, "execve(path: string, argv: string[], envp: string[])");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  std::vector<char*> a, e;
  for (auto& s : argv) a.push_back(&s[0]);
  a.push_back(nullptr);
  for (auto& s : envp) e.push_back(&s[0]);
  e.push_back(nullptr);
  // Node marks fds 0..2 close-on-exec at startup; the new image must keep the same stdio.
  int saved[3];
  for (int fd = 0; fd < 3; fd++) {
    saved[fd] = fcntl(fd, F_GETFD);
    if (saved[fd] >= 0 && (saved[fd] & FD_CLOEXEC)) fcntl(fd, F_SETFD, saved[fd] & ~FD_CLOEXEC);
  }
  execve(path.c_str(), a.data(), e.data());
  int err = errno;
  for (int fd = 0; fd < 3; fd++)
    if (saved[fd] >= 0) fcntl(fd, F_SETFD, saved[fd]);
  return ThrowErrno(env, err, "execve", path);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("landlockAbi", Napi::Function::New(env, LandlockAbi, "landlockAbi"));
  exports.Set("landlockCreateRuleset", Napi::Function::New(env, LandlockCreateRuleset, "landlockCreateRuleset"));
  exports.Set("landlockAddPathRule", Napi::Function::New(env, LandlockAddPathRule, "landlockAddPathRule"));
  exports.Set("landlockAddPortRule", Napi::Function::New(env, LandlockAddPortRule, "landlockAddPortRule"));
  exports.Set("landlockRestrictSelf", Napi::Function::New(env, LandlockRestrictSelf, "landlockRestrictSelf"));
  exports.Set("setNoNewPrivs", Napi::Function::New(env, SetNoNewPrivs, "setNoNewPrivs"));
  exports.Set("getNoNewPrivs", Napi::Function::New(env, GetNoNewPrivs, "getNoNewPrivs"));
  exports.Set("seccompSetFilter", Napi::Function::New(env, SeccompSetFilter, "seccompSetFilter"));
  exports.Set("seccompGetMode", Napi::Function::New(env, SeccompGetMode, "seccompGetMode"));
  exports.Set("setrlimit", Napi::Function::New(env, SetRlimit, "setrlimit"));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd, "closeFd"));
  exports.Set("execve", Napi::Function::New(env, Execve, "execve"));
  cordon::RelayInit(env, exports);
  cordon::SockDiagInit(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(cordon, Init)
