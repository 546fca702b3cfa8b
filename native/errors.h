// errno -> JS errors, shared by the addon's source files (cordon.cc: syscall shims; relay.cc: the
// tunnel data plane; sockdiag.cc: the socket lookup). Errors are shaped like Node's system errors:
// .code ('EACCES'...), .errno (negative, as libuv reports it), .syscall and, where there is one,
// .path.
#pragma once
#include <napi.h>

#include <errno.h>
#include <string.h>

#include <string>

namespace cordon {

// The symbolic name of an errno value ("ECONNRESET"), or "E<n>" for one not listed.
inline std::string ErrnoCode(int err) {
  switch (err) {
#define C(x) case x: return #x;
    C(EACCES) C(EPERM) C(ENOENT) C(EINVAL) C(ENOSYS) C(EOPNOTSUPP) C(EBADF) C(EFAULT) C(E2BIG)
    C(ENOMEM) C(EBUSY) C(ENOTDIR) C(ESRCH) C(EEXIST) C(ENOEXEC) C(EMFILE) C(ELOOP) C(ENAMETOOLONG)
    C(EAFNOSUPPORT) C(ENOMSG) C(ETXTBSY) C(EISDIR) C(ENFILE) C(ENOTSOCK) C(ECONNRESET) C(EPIPE)
    C(ETIMEDOUT) C(ENOTCONN) C(ECONNABORTED) C(EHOSTUNREACH) C(ENETUNREACH) C(EIO)
#undef C
    default: return "E" + std::to_string(err);
  }
}

// Throws (as a pending JS exception) an Error shaped like Node's system errors.
inline Napi::Value ThrowErrno(Napi::Env env, int err, const char* syscall, const std::string& path = "") {
  std::string code = ErrnoCode(err);
  std::string msg = code + ": " + strerror(err) + ", " + syscall;
  if (!path.empty()) msg += " '" + path + "'";
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  e.Set("errno", Napi::Number::New(env, -err));
  e.Set("syscall", Napi::String::New(env, syscall));
  if (!path.empty()) e.Set("path", Napi::String::New(env, path));
  e.ThrowAsJavaScriptException();
  return env.Undefined();
}

inline Napi::Value ThrowType(Napi::Env env, const char* msg) {
  Napi::TypeError::New(env, msg).ThrowAsJavaScriptException();
  return env.Undefined();
}

// Reads a non-negative integer argument that fits in 53 bits (JS Number) or a BigInt.
inline bool U64Arg(const Napi::CallbackInfo& info, size_t i, uint64_t* out) {
  if (info.Length() <= i) return false;
  if (info[i].IsNumber()) {
    double d = info[i].As<Napi::Number>().DoubleValue();
    if (d < 0 || d > 9007199254740991.0 || d != static_cast<double>(static_cast<uint64_t>(d))) return false;
    *out = static_cast<uint64_t>(d);
    return true;
  }
  if (info[i].IsBigInt()) {
    bool lossless = false;
    *out = info[i].As<Napi::BigInt>().Uint64Value(&lossless);
    return lossless;
  }
  return false;
}

inline bool IntArg(const Napi::CallbackInfo& info, size_t i, int* out) {
  uint64_t v;
  if (!U64Arg(info, i, &v) || v > 0x7fffffff) return false;
  *out = static_cast<int>(v);
  return true;
}

// Registers relay.cc's functions on the addon's exports.
void RelayInit(Napi::Env env, Napi::Object exports);

// Registers sockdiag.cc's function on the addon's exports.
void SockDiagInit(Napi::Env env, Napi::Object exports);

}  // namespace cordon
