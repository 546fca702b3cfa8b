// The egress gate's tunnel data plane: once the policy engine has decided, audited and connected a
// tunnel (CONNECT, SOCKS5, WebSocket upgrade), it hands the two connected sockets here, and bytes
// move between them with splice(2) through one pipe per direction, without ever being copied into
// user space, in one thread of this addon's own.
//
// Why hand-written, and why in C++: a relay in JavaScript reads each chunk into a buffer and writes
// it out again (two copies, two syscalls and an event-loop turn per chunk), which on a 2-core box
// cost a quarter of a bulk download's throughput. Node has no splice, and the addon cannot wait on
// a raw fd in Node's own event loop without importing libuv symbols (it imports none, so one binary
// serves every Node version), hence a thread with an epoll set of its own. No library does this
// for Node.
//
// What this file does NOT do: decide anything. It never sees a host, a rule or a policy; it copies
// bytes between two fds it was handed, counts them, closes on request or after an idle time it was
// given, and reports how each tunnel ended (lib/kernel/relay.ts; the engine audits the end).
//
//   relayStart(onEnd(id, aToB, bToA, error))  start the thread (once per JS environment)
//   relayAdd(id, fdA, fdB, toA, toB, idleMs[, sendBufferA])
//                                             dup()s both fds (the caller closes its own); toA/toB:
//                                             bytes to send to A/B before anything relayed;
//                                             sendBufferA > 0: SO_SNDBUF for A (the caller's choice)
//   relayClose(id, reason)                    end a tunnel now (reported with that reason)
// Counts exclude toA/toB. error is "" for a clean end (both sides finished), else "idle timeout",
// the reason given to relayClose, or the errno code of the failing syscall ("ECONNRESET").
#include <napi.h>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <map>
#include <utility>

#include "errors.h"

namespace cordon {
namespace {

constexpr int kPipeBytes = 256 * 1024;  // per direction; F_SETPIPE_SZ, best effort
constexpr uint64_t kMaxSendBuffer = 64ull << 20;  // relayAdd's sendBufferA
constexpr uint64_t kWake = ~0ull;      // epoll tag of the eventfd

int64_t NowMs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// One direction of a tunnel: from -> pipe -> to, after the queued bytes `pre`.
struct Flow {
  int from = -1, to = -1;
  int pr = -1, pw = -1;  // the pipe's read and write ends
  size_t inPipe = 0;
  std::string pre;
  size_t preOff = 0;
  bool eof = false;   // `from` reached end of stream
  bool shut = false;  // and that end was passed on: shutdown(to, SHUT_WR)
  uint64_t bytes = 0;
};

struct Tunnel {
  uint32_t id = 0;
  int a = -1, b = -1;
  Flow ab, ba;
  int64_t idleMs = 0;
  int64_t lastActive = 0;
};

struct End {
  uint32_t id;
  double ab, ba;
  std::string error;
};

void CloseIf(int* fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

void CloseAll(Tunnel* t) {
  CloseIf(&t->a);
  CloseIf(&t->b);
  CloseIf(&t->ab.pr);
  CloseIf(&t->ab.pw);
  CloseIf(&t->ba.pr);
  CloseIf(&t->ba.pw);
}

// Moves what can move now in one direction. Returns 0, or the errno that ends the tunnel.
int Pump(Flow* f, bool* progressed) {
  for (;;) {
    bool progress = false;
    while (f->preOff < f->pre.size()) {
      ssize_t r = send(f->to, f->pre.data() + f->preOff, f->pre.size() - f->preOff, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (r < 0) {
        if (errno == EAGAIN || errno == EINTR) break;
        return errno;
      }
      f->preOff += static_cast<size_t>(r);
      progress = true;
    }
    if (!f->eof && f->inPipe < static_cast<size_t>(kPipeBytes)) {
      ssize_t r = splice(f->from, nullptr, f->pw, nullptr, kPipeBytes - f->inPipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (r > 0) {
        f->inPipe += static_cast<size_t>(r);
        progress = true;
      } else if (r == 0) {
        f->eof = true;
        progress = true;
      } else if (errno != EAGAIN && errno != EINTR) {
        return errno;
      }
    }
    // the pipe empties only after the queued bytes: they come first on the wire
    if (f->preOff == f->pre.size() && f->inPipe > 0) {
      ssize_t r = splice(f->pr, nullptr, f->to, nullptr, f->inPipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (r > 0) {
        f->inPipe -= static_cast<size_t>(r);
        f->bytes += static_cast<uint64_t>(r);
        progress = true;
      } else if (r < 0 && errno != EAGAIN && errno != EINTR) {
        return errno;
      }
    }
    if (f->eof && f->inPipe == 0 && f->preOff == f->pre.size() && !f->shut) {
      // half-close passes through; the peer may already be gone (ENOTCONN), which the other
      // direction reports if it matters
      shutdown(f->to, SHUT_WR);
      f->shut = true;
    }
    if (!progress) return 0;
    *progressed = true;
  }
}

// A request from JS to the relay thread, written whole (it is smaller than PIPE_BUF) to a pipe.
struct Cmd {
  Tunnel* add;          // a new tunnel, or null
  uint32_t closeId;     // with reason: end this tunnel
  std::string* reason;  // owned by the receiver
};

// The relay thread runs as an N-API async work item, i.e. on one of libuv's threadpool threads,
// for as long as it holds tunnels (the pool has 4; Node's own users of it keep the other 3): the
// addon then needs no thread library of its own, whose symbols would raise the glibc and
// libstdc++ versions it requires above those of official Node binaries (test/prebuild/elf.test.ts).
class Relay {
 public:
  Relay(Napi::Env env, Napi::Function onEnd) {
    int p[2] = {-1, -1};
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    done_ = eventfd(0, EFD_CLOEXEC);
    if (ep_ < 0 || done_ < 0 || pipe2(p, O_CLOEXEC) != 0) {
      err_ = errno;
      return;
    }
    cmdR_ = p[0];
    cmdW_ = p[1];  // blocking: a full command pipe (thousands of requests behind) makes JS wait
    fcntl(cmdR_, F_SETFL, O_NONBLOCK);
    struct epoll_event ev = {};
    ev.events = EPOLLIN;
    ev.data.u64 = kWake;
    if (epoll_ctl(ep_, EPOLL_CTL_ADD, cmdR_, &ev) != 0) {
      err_ = errno;
      return;
    }
    tsfn_ = Napi::ThreadSafeFunction::New(env, onEnd, "cordon-relay", 0, 1);
    tsfn_.Unref(env);  // open tunnels alone do not keep the process alive
    // runs before the thread-safe function's own cleanup (hooks run in reverse order of adding)
    napi_add_env_cleanup_hook(env, Cleanup, this);
  }

  ~Relay() {
    for (int fd : {ep_, done_, cmdR_, cmdW_})
      if (fd >= 0) close(fd);
  }

  int error() const { return err_; }

  // Queues a request for the thread; with `wake`, starts the thread if it is not running.
  // The thread is queued first: a request is never left in the pipe with nobody to read it (the
  // caller frees what it sent when Send fails).
  int Send(napi_env env, const Cmd& c, bool wake) {
    if (wake && !running_) {
      int err = Queue(env);
      if (err != 0) return err;
    }
    return Write(c);
  }

 private:
  int Write(const Cmd& c) {
    ssize_t r;
    do r = write(cmdW_, &c, sizeof c);
    while (r < 0 && errno == EINTR);
    return r == static_cast<ssize_t>(sizeof c) ? 0 : (r < 0 ? errno : EIO);
  }

  // The thread runs while the relay holds tunnels (like an open socket, that keeps the process
  // alive) and ends when it holds none; the next tunnel starts it again. running_ and work_ are
  // touched on the JS thread only.
  int Queue(napi_env env) {
    napi_value name;
    napi_create_string_utf8(env, "cordon-relay", NAPI_AUTO_LENGTH, &name);
    if (napi_create_async_work(env, nullptr, name, Execute, Complete, this, &work_) != napi_ok) return EAGAIN;
    if (napi_queue_async_work(env, work_) != napi_ok) {
      napi_delete_async_work(env, work_);
      return EAGAIN;
    }
    running_ = true;
    return 0;
  }

  static void Execute(napi_env, void* arg) { static_cast<Relay*>(arg)->Loop(); }

  static void Complete(napi_env env, napi_status, void* arg) {
    Relay* r = static_cast<Relay*>(arg);
    if (r->stopped_) return;
    napi_delete_async_work(env, r->work_);
    r->running_ = false;
    // a request written after the thread last looked at the pipe: start it again (should that
    // fail, the next relayAdd tries again and the thread then reads everything waiting)
    struct pollfd p = {r->cmdR_, POLLIN, 0};
    if (poll(&p, 1, 0) == 1) r->Queue(env);
  }

  // The environment is ending: stop the thread (it closes every tunnel) and wait for it. A thread
  // that was already on its way out because it held nothing does not answer; 2 s bounds the wait.
  static void Cleanup(void* arg) {
    Relay* r = static_cast<Relay*>(arg);
    r->stopped_ = true;
    if (r->running_ && r->Write(Cmd{nullptr, 0, nullptr}) == 0) {
      struct pollfd p = {r->done_, POLLIN, 0};
      poll(&p, 1, 2000);
    }
    r->tsfn_.Release();
  }

  // Tells JS (on its own thread) how tunnel `id` ended.
  void Report(uint32_t id, uint64_t ab, uint64_t ba, const std::string& error) {
    End* e = new End{id, static_cast<double>(ab), static_cast<double>(ba), error};
    napi_status s = tsfn_.NonBlockingCall(e, [](Napi::Env env, Napi::Function cb, End* e) {
      if (env != nullptr && cb != nullptr)
        cb.Call({Napi::Number::New(env, e->id), Napi::Number::New(env, e->ab), Napi::Number::New(env, e->ba),
                 Napi::String::New(env, e->error)});
      delete e;
    });
    if (s != napi_ok) delete e;  // the environment is closing: nobody to tell
  }

  void Finish(Tunnel* t, const std::string& error) {
    epoll_ctl(ep_, EPOLL_CTL_DEL, t->a, nullptr);
    epoll_ctl(ep_, EPOLL_CTL_DEL, t->b, nullptr);
    CloseAll(t);
    Report(t->id, t->ab.bytes, t->ba.bytes, error);
    tunnels_.erase(t->id);
    delete t;
  }

  // Moves what can move in the directions an event concerns; ends the tunnel when both are done
  // or one fails.
  void Run(Tunnel* t, bool ab, bool ba) {
    bool progressed = false;
    int err = 0;
    if (ab) err = Pump(&t->ab, &progressed);
    if (err == 0 && ba) err = Pump(&t->ba, &progressed);
    if (progressed) t->lastActive = NowMs();
    if (err != 0) return Finish(t, ErrnoCode(err));
    if (t->ab.shut && t->ba.shut) Finish(t, "");
  }

  void Register(Tunnel* t) {
    if (tunnels_.count(t->id)) {  // lib/kernel/relay.ts never reuses an id; refuse rather than mix two up
      Report(t->id, 0, 0, "EEXIST");
      CloseAll(t);
      delete t;
      return;
    }
    tunnels_[t->id] = t;
    t->lastActive = NowMs();
    // edge-triggered: Pump always runs a direction until it cannot move, so no readiness is lost
    for (int side = 0; side < 2; side++) {
      struct epoll_event ev = {};
      ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
      ev.data.u64 = (static_cast<uint64_t>(t->id) << 1) | static_cast<uint64_t>(side);
      if (epoll_ctl(ep_, EPOLL_CTL_ADD, side == 0 ? t->a : t->b, &ev) != 0) return Finish(t, ErrnoCode(errno));
    }
    Run(t, true, true);
  }

  // Applies queued requests; false when told to stop.
  bool Commands() {
    Cmd c;
    while (read(cmdR_, &c, sizeof c) == static_cast<ssize_t>(sizeof c)) {
      if (c.add != nullptr) {
        Register(c.add);
      } else if (c.reason != nullptr) {
        auto it = tunnels_.find(c.closeId);
        if (it != tunnels_.end()) Finish(it->second, *c.reason);
        delete c.reason;
      } else {
        return false;
      }
    }
    return true;
  }

  void Loop() {
    // signals are for Node's threads; none interrupts a splice here
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, nullptr);  // per thread on Linux (pthread_sigmask would need glibc 2.32)
    struct epoll_event evs[128];
    int64_t lastSweep = NowMs();
    for (;;) {
      int n = epoll_wait(ep_, evs, 128, 1000);
      if (n < 0 && errno != EINTR) return Shutdown();
      bool commands = false;
      for (int i = 0; i < n; i++) {
        uint64_t tag = evs[i].data.u64;
        if (tag == kWake) {
          commands = true;
          continue;
        }
        auto it = tunnels_.find(static_cast<uint32_t>(tag >> 1));
        if (it == tunnels_.end()) continue;  // ended earlier in this batch
        Tunnel* t = it->second;
        uint32_t e = evs[i].events;
        bool isA = (tag & 1) == 0;
        bool all = (e & (EPOLLERR | EPOLLHUP)) != 0;
        // readable A or writable B moves A->B; readable B or writable A moves B->A
        bool in = (e & (EPOLLIN | EPOLLRDHUP)) != 0, out = (e & EPOLLOUT) != 0;
        Run(t, all || (isA ? in : out), all || (isA ? out : in));
      }
      if (commands && !Commands()) return Shutdown();
      int64_t now = NowMs();
      if (now - lastSweep >= 1000) {
        lastSweep = now;
        for (auto it = tunnels_.begin(); it != tunnels_.end();) {
          Tunnel* t = it->second;
          ++it;  // Finish erases t's entry only
          if (t->idleMs > 0 && now - t->lastActive >= t->idleMs) Finish(t, "idle timeout");
        }
      }
      if (tunnels_.empty()) {
        if (!Commands()) return Shutdown();
        if (tunnels_.empty()) return;  // nothing to relay: Complete() restarts the thread if asked
      }
    }
  }

  // Told to stop (the environment is ending) or epoll failed: end every tunnel.
  void Shutdown() {
    while (!tunnels_.empty()) Finish(tunnels_.begin()->second, "relay stopped");
    Cmd c;
    while (read(cmdR_, &c, sizeof c) == static_cast<ssize_t>(sizeof c)) {
      if (c.add != nullptr) CloseAll(c.add), delete c.add;
      delete c.reason;
    }
    uint64_t one = 1;
    ssize_t w = write(done_, &one, sizeof one);
    (void)w;
  }

  int ep_ = -1, done_ = -1, cmdR_ = -1, cmdW_ = -1, err_ = 0;
  bool running_ = false, stopped_ = false;  // JS thread only
  napi_async_work work_ = nullptr;
  Napi::ThreadSafeFunction tsfn_;
  std::map<uint32_t, Tunnel*> tunnels_;  // the thread's own (a tree: no bucket array to size)
};

Relay* RelayOf(Napi::Env env) { return env.GetInstanceData<Relay>(); }

Napi::Value RelayStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsFunction()) return ThrowType(env, "relayStart(onEnd: function)");
  if (RelayOf(env) != nullptr) return ThrowType(env, "relayStart: the relay is already running");
  Relay* r = new Relay(env, info[0].As<Napi::Function>());
  if (r->error() != 0) {
    int err = r->error();
    delete r;
    return ThrowErrno(env, err, "epoll_create1");
  }
  // never freed: a threadpool completion may still name it while the environment ends (one small
  // object per environment, i.e. per process or worker that used the relay)
  napi_set_instance_data(env, r, nullptr, nullptr);
  return env.Undefined();
}

bool BytesArg(const Napi::CallbackInfo& info, size_t i, std::string* out) {
  if (info.Length() <= i) return false;
  if (info[i].IsNull() || info[i].IsUndefined()) return true;
  if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) return false;
  Napi::Uint8Array u8 = info[i].As<Napi::Uint8Array>();
  out->assign(reinterpret_cast<const char*>(u8.Data()), u8.ByteLength());
  return true;
}

bool IsStreamSocket(int fd) {
  int type = 0;
  socklen_t len = sizeof type;
  return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM;
}

// Makes `dup` a non-blocking duplicate of fd. Returns 0 or errno.
int Dup(int fd, int* dup) {
  *dup = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (*dup < 0) return errno;
  int fl = fcntl(*dup, F_GETFL);
  if (fl < 0 || fcntl(*dup, F_SETFL, fl | O_NONBLOCK) != 0) return errno;
  return 0;
}

int MakePipe(Flow* f) {
  int p[2];
  if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) return errno;
  f->pr = p[0];
  f->pw = p[1];
  // a bigger pipe means fewer splices per megabyte; refused past the user's pipe budget, and then
  // the default size works too
  fcntl(f->pw, F_SETPIPE_SZ, kPipeBytes);
  return 0;
}

Napi::Value RelayAdd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Relay* relay = RelayOf(env);
  int a, b;
  uint64_t id, idle, sndA = 0;
  std::string toA, toB;
  if (!U64Arg(info, 0, &id) || id == 0 || id > 0xffffffffu || !IntArg(info, 1, &a) || !IntArg(info, 2, &b) ||
      !BytesArg(info, 3, &toA) || !BytesArg(info, 4, &toB) || !U64Arg(info, 5, &idle) ||
      (info.Length() > 6 && (!U64Arg(info, 6, &sndA) || sndA > kMaxSendBuffer)))
    return ThrowType(env,
                     "relayAdd(id 1..2^32-1, fdA, fdB, toA: Uint8Array|null, toB: Uint8Array|null, idleMs, "
                     "sendBufferA?: 0..64 MiB)");
  if (relay == nullptr) return ThrowType(env, "relayAdd: call relayStart first");
  if (!IsStreamSocket(a) || !IsStreamSocket(b)) return ThrowErrno(env, ENOTSOCK, "relayAdd");
  Tunnel* t = new Tunnel();
  t->id = static_cast<uint32_t>(id);
  t->idleMs = static_cast<int64_t>(idle);
  int err = 0;
  const char* step = "fcntl";
  if ((err = Dup(a, &t->a)) == 0 && (err = Dup(b, &t->b)) == 0) {
    step = "pipe2";
    if ((err = MakePipe(&t->ab)) == 0) err = MakePipe(&t->ba);
  }
  if (err != 0) {
    CloseAll(t);
    delete t;
    return ThrowErrno(env, err, step);
  }
  // SO_SNDBUF on A (fixes the size; 0 leaves the kernel's autotuning): best effort, as the pipe size
  if (sndA > 0) {
    int v = static_cast<int>(sndA);
    setsockopt(t->a, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
  }
  t->ab.from = t->a;
  t->ab.to = t->b;
  t->ab.pre = std::move(toB);
  t->ba.from = t->b;
  t->ba.to = t->a;
  t->ba.pre = std::move(toA);
  int e = relay->Send(env, Cmd{t, 0, nullptr}, true);
  if (e != 0) {
    CloseAll(t);
    delete t;
    return ThrowErrno(env, e, "write");
  }
  return env.Undefined();
}

Napi::Value RelayClose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Relay* relay = RelayOf(env);
  uint64_t id;
  if (!U64Arg(info, 0, &id) || id > 0xffffffffu || info.Length() < 2 || !info[1].IsString())
    return ThrowType(env, "relayClose(id, reason: string)");
  if (relay == nullptr) return ThrowType(env, "relayClose: call relayStart first");
  std::string* reason = new std::string(info[1].As<Napi::String>().Utf8Value());
  int e = relay->Send(env, Cmd{nullptr, static_cast<uint32_t>(id), reason}, false);
  if (e != 0) {
    delete reason;
    return ThrowErrno(env, e, "write");
  }
  return env.Undefined();
}

}  // namespace

void RelayInit(Napi::Env env, Napi::Object exports) {
  exports.Set("relayStart", Napi::Function::New(env, RelayStart, "relayStart"));
  exports.Set("relayAdd", Napi::Function::New(env, RelayAdd, "relayAdd"));
  exports.Set("relayClose", Napi::Function::New(env, RelayClose, "relayClose"));
}

}  // namespace cordon
