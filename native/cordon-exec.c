/*
 * cordon-exec: applies a compiled cordon plan to itself, then executes the program.
 *
 * Single-threaded, libc only. Used by spawn() (between fork and the program's exec, so the child
 * is confined from its first instruction) and by lock()'s re-exec path (Landlock before ABI 8 and
 * unshare() act on the calling thread only; a single thread that execve()s carries its domain,
 * filters and namespaces into the new image, and Node's other threads are gone).
 *
 * Every decision is already made in TypeScript (lib/policy compiles, lib/sandbox/argv.ts
 * serializes); this program only parses options and makes syscalls, in this fixed order:
 *   mkdirs, rlimits, namespaces (user, net, and without root a PID namespace: fork), mount ns
 *   (private /tmp, a /proc that hides other processes), drop capabilities,
 *   Landlock ruleset + rules, PR_SET_NO_NEW_PRIVS, landlock_restrict_self, seccomp, execvp.
 * Any failure prints `cordon: <step>: <what>: <strerror>` and exits 125: it never executes the
 * program less confined than asked. Exit 126/127: the program could not be executed / not found
 * (the coreutils env/timeout convention).
 *
 * Options (all numbers decimal or 0x-hex):
 *   --mkdir PATH                 create PATH (and parents) mode 0700
 *   --rlimit RES=SOFT:HARD       RES in as,core,cpu,data,fsize,memlock,nofile,nproc,stack; inf
 *   --netns new | --netns-path P new network namespace with lo up / join an existing one
 *   --private-tmp HOSTDIR        new mount namespace, / rprivate, HOSTDIR bind-mounted on /tmp
 *   --keep-path PATH             a path under the host's /tmp (a directory or a file) that stays
 *                                visible at the same path
 *   --hide-processes             new mount namespace (if not already), a new procfs mounted on /proc.
 *                                As root, in the same PID namespace with hidepid=invisible: once the
 *                                Landlock domain is in force, the kernel hides every process the
 *                                program may not ptrace-read, i.e. every process outside its domain.
 *                                Without root (in a user namespace a procfs can be mounted only for
 *                                a PID namespace it owns), in a new PID namespace (see pidns_outer()).
 *   --hide-processes-try         the same, but without root, where the kernel refuses the user or PID
 *                                namespace or the procfs, go on with the host's list (policy `auto`)
 *   --die-with-parent            the program gets SIGKILL when the process that started cordon-exec
 *                                dies (PR_SET_PDEATHSIG, set after every credential change)
 *                                once /tmp is replaced (bind-mounted back; e.g. a workspace in /tmp)
 *   --drop-caps                  clear bounding, ambient, effective/permitted/inheritable sets
 *   --ll-fs M --ll-net M --ll-scope M --ll-flags F   Landlock ruleset and restrict flags
 *   --ll-path M:PATH / --ll-path-opt M:PATH          path rule (optional: skipped if missing)
 *   --ll-port M:PORT             TCP port rule
 *   --seccomp HEX                struct sock_filter[] as hex bytes
 *   --                           then PROGRAM ARGS...
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <poll.h>
#include <unistd.h>

/* the procfs gid= group of --hide-processes: no account has it (lib/policy/compile.ts HIDE_GID) */
#define HIDE_GID "2147483646"
#define SYS_LANDLOCK_CREATE_RULESET 444
#define SYS_LANDLOCK_ADD_RULE 445
#define SYS_LANDLOCK_RESTRICT_SELF 446
#define LANDLOCK_RULE_PATH_BENEATH 1
#define LANDLOCK_RULE_NET_PORT 2
/* Rights meaningful on directories only (kernel rejects them on a file with EINVAL). */
#define LL_DIR_ONLY 0x3ff8ULL /* read_dir..refer: bits 3..13 */

struct ll_ruleset_attr { uint64_t fs, net, scoped; };
struct ll_path_attr { uint64_t access; int32_t fd; } __attribute__((packed));
struct ll_port_attr { uint64_t access; uint64_t port; };

#define MAX_ITEMS 512

static void die(const char *step, const char *what, int err) {
  if (err) fprintf(stderr, "cordon: %s: %s: %s\n", step, what, strerror(err));
  else fprintf(stderr, "cordon: %s: %s\n", step, what);
  exit(125);
}

static uint64_t num(const char *s, const char *opt) {
  char *end;
  errno = 0;
  if (!s || !*s || *s == '-') die("arguments", opt, EINVAL);
  unsigned long long v = strtoull(s, &end, 0);
  if (errno || *end) die("arguments", opt, EINVAL);
  return (uint64_t)v;
}

struct pathrule { uint64_t access; const char *path; int optional; };
struct portrule { uint64_t access; uint64_t port; };
struct rl { int res; rlim_t soft, hard; };

static const char *mkdirs[MAX_ITEMS]; static int n_mkdirs;
static const char *keeps[64]; static int keep_fds[64]; static int n_keeps;
static struct rl rlims[32]; static int n_rlims;
static struct pathrule paths[MAX_ITEMS]; static int n_paths;
static struct portrule ports[MAX_ITEMS]; static int n_ports;

static int rlimit_res(const char *name, size_t len) {
  static const struct { const char *n; int r; } t[] = {
    {"as", RLIMIT_AS}, {"core", RLIMIT_CORE}, {"cpu", RLIMIT_CPU}, {"data", RLIMIT_DATA},
    {"fsize", RLIMIT_FSIZE}, {"memlock", RLIMIT_MEMLOCK}, {"nofile", RLIMIT_NOFILE},
    {"nproc", RLIMIT_NPROC}, {"stack", RLIMIT_STACK}};
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
    if (strlen(t[i].n) == len && !strncmp(t[i].n, name, len)) return t[i].r;
  return -1;
}

static rlim_t rlim_val(const char *s, const char *opt) {
  if (!strcmp(s, "inf")) return RLIM_INFINITY;
  return (rlim_t)num(s, opt);
}

/* "M:REST" -> mask, pointer to REST */
static uint64_t split_mask(char *arg, char **rest, const char *opt) {
  char *colon = strchr(arg, ':');
  if (!colon) die("arguments", opt, EINVAL);
  *colon = 0;
  *rest = colon + 1;
  return num(arg, opt);
}

static void mkdir_p(const char *path) {
  char buf[4096];
  size_t len = strlen(path);
  if (len == 0 || len >= sizeof buf || path[0] != '/') die("mkdir", path, EINVAL);
  memcpy(buf, path, len + 1);
  for (char *p = buf + 1; ; p++) {
    if (*p == '/' || *p == 0) {
      char c = *p;
      *p = 0;
      if (mkdir(buf, 0700) != 0 && errno != EEXIST) die("mkdir", buf, errno);
      *p = c;
      if (!c) break;
    }
  }
  struct stat st;
  if (stat(path, &st) != 0) die("mkdir", path, errno);
  if (!S_ISDIR(st.st_mode)) die("mkdir", path, ENOTDIR);
}

static void write_file(const char *path, const char *data) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) die("userns", path, errno);
  size_t len = strlen(data);
  if (write(fd, data, len) != (ssize_t)len) die("userns", path, errno);
  close(fd);
}

static void loopback_up(void) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) die("netns", "socket for lo", errno);
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) die("netns", "SIOCGIFFLAGS lo", errno);
  ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
  if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) die("netns", "SIOCSIFFLAGS lo up", errno);
  close(s);
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static void drop_caps(void) {
  /* Walk the bounding set until the kernel says the capability does not exist (EINVAL). */
  const int last = 63;
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2];
  memset(data, 0, sizeof data);
  if (syscall(SYS_capget, &hdr, data) != 0) die("capabilities", "capget", errno);
  int privileged = data[0].permitted || data[1].permitted || data[0].effective || data[1].effective;
  for (int c = 0; c <= last; c++) {
    if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0) {
      if (errno == EINVAL) break; /* beyond the kernel's last cap */
      /* Without CAP_SETPCAP the bounding set cannot shrink; with no permitted capabilities and
       * no_new_privs (always set below) no exec can raise them, so that is equivalent. */
      if (errno == EPERM && !privileged) break;
      die("capabilities", "PR_CAPBSET_DROP", errno);
    }
  }
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
    die("capabilities", "PR_CAP_AMBIENT_CLEAR_ALL", errno);
  memset(data, 0, sizeof data);
  hdr.version = _LINUX_CAPABILITY_VERSION_3;
  hdr.pid = 0;
  if (syscall(SYS_capset, &hdr, data) != 0) die("capabilities", "capset", errno);
}

/*
 * The PID namespace of an unprivileged --hide-processes. unshare(CLONE_NEWPID) puts only the
 * children of the caller in the new namespace, and the namespace's first process is its init: the
 * kernel discards signals an init has no handler for, and kills every process of the namespace
 * when the init exits. So three processes:
 *   outer  (this process, in the launcher's PID namespace: the pid the launcher knows) waits for
 *          init and ends as the program ended: the same exit code, or the same signal raised on
 *          itself. A signal sent to it by a process (si_code <= 0: kill, sigqueue) is forwarded
 *          to init; one the kernel generated (a terminal's ^C, SIGWINCH) is not, as the program, in
 *          the same process group, got it too. If outer dies, even by SIGKILL, init gets SIGKILL
 *          (PR_SET_PDEATHSIG) and the namespace dies with it.
 *   init   (pid 1 in the namespace) mounts the new procfs, takes the same confinement as the
 *          program (Landlock, no_new_privs, no capabilities, seccomp: ptrace of it gains nothing),
 *          starts the program, reaps every orphan, passes on to the program the signals outer
 *          forwards (SI_QUEUE with FWD_MAGIC: init ignores every other), and when the program ends
 *          writes its wait status to outer through a pipe and exits, which ends the namespace:
 *          nothing the program left running survives it.
 *   the program (pid 2).
 * A signal sent to the whole process group (kill -PGID) reaches the program directly and through
 * outer: twice.
 */
#define FWD_MAGIC 0x636f7264 /* "cord" */
static const int fwd_signals[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH, SIGALRM};
static sigset_t pidns_old_mask;
static int pidns_status_w = -1, pidns_life_r = -1;

static void pidns_mask(sigset_t *set) {
  sigemptyset(set);
  for (size_t k = 0; k < sizeof fwd_signals / sizeof fwd_signals[0]; k++) sigaddset(set, fwd_signals[k]);
  sigaddset(set, SIGCHLD);
}

/* the next signal of `set`; on a failure other than EINTR, kills `victim` and exits 125 */
static int next_signal(const sigset_t *set, siginfo_t *si, pid_t victim, const char *what) {
  for (;;) {
    int sig = sigwaitinfo(set, si);
    if (sig >= 0) return sig;
    if (errno == EINTR) continue;
    kill(victim, SIGKILL);
    die("hide-processes", what, errno);
  }
}

/* outer: never returns */
static void pidns_outer(pid_t init, int status_r, int die_with_parent, pid_t parent) {
  sigset_t set;
  pidns_mask(&set);
  if (die_with_parent) {
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0 || getppid() != parent) {
      kill(init, SIGKILL);
      die("die-with-parent", "the parent exited before the program started", ESRCH);
    }
  }
  for (;;) {
    siginfo_t si;
    int sig = next_signal(&set, &si, init, "sigwaitinfo");
    if (sig != SIGCHLD) {
      if (si.si_code <= 0) { /* sent by a process, not by the kernel */
        siginfo_t q;
        memset(&q, 0, sizeof q);
        q.si_signo = sig;
        q.si_code = SI_QUEUE;
        q.si_pid = getpid();
        q.si_uid = getuid();
        q.si_value.sival_int = FWD_MAGIC;
        syscall(SYS_rt_sigqueueinfo, init, sig, &q);
      }
      continue;
    }
    int st;
    pid_t w = waitpid(init, &st, WNOHANG);
    if (w != init) continue;
    int prog_st;
    ssize_t n = read(status_r, &prog_st, sizeof prog_st);
    if (n != (ssize_t)sizeof prog_st) prog_st = st; /* init failed before the program ran (it said why) */
    if (WIFSIGNALED(prog_st)) {
      int s2 = WTERMSIG(prog_st);
      struct rlimit no_core = {0, 0};
      setrlimit(RLIMIT_CORE, &no_core); /* the program's crash is not outer's: no core file of ours */
      signal(s2, SIG_DFL);
      sigset_t one;
      sigemptyset(&one);
      sigaddset(&one, s2);
      sigprocmask(SIG_UNBLOCK, &one, NULL);
      raise(s2);
      _exit(128 + s2);
    }
    _exit(WIFEXITED(prog_st) ? WEXITSTATUS(prog_st) : 125);
  }
}

/* Called in init once it is confined (before seccomp): starts the program. Returns in the
   program's process; in init, applies `filter` and serves until the program ends. */
static void pidns_init(const struct sock_fprog *filter) {
  if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) die("hide-processes", "prctl(PR_SET_PDEATHSIG)", errno);
  struct pollfd pf = {pidns_life_r, POLLIN, 0};
  if (poll(&pf, 1, 0) != 0) die("hide-processes", "the launcher exited before the program started", ESRCH); /* EOF: outer is gone */
  pid_t prog = fork();
  if (prog < 0) die("hide-processes", "fork the program", errno);
  if (prog == 0) {
    close(pidns_status_w);
    close(pidns_life_r);
    sigprocmask(SIG_SETMASK, &pidns_old_mask, NULL);
    return;
  }
  if (filter && syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, filter) != 0) {
    kill(prog, SIGKILL);
    die("seccomp", "seccomp(SET_MODE_FILTER) in the PID namespace's init", errno);
  }
  sigset_t set;
  pidns_mask(&set);
  for (;;) {
    siginfo_t si;
    int sig = next_signal(&set, &si, prog, "init: sigwaitinfo");
    if (sig != SIGCHLD) {
      if (si.si_code == SI_QUEUE && si.si_value.sival_int == FWD_MAGIC) kill(prog, sig);
      continue;
    }
    int st;
    pid_t w;
    while ((w = waitpid(-1, &st, WNOHANG)) > 0) {
      if (w != prog) continue; /* an orphan of the program's, reaped */
      ssize_t n = write(pidns_status_w, &st, sizeof st);
      (void)n;
      _exit(0);
    }
  }
}

int main(int argc, char **argv) {
  int i, prog = -1;
  const char *netns_path = NULL, *private_tmp = NULL, *seccomp_hex = NULL;
  int netns_new = 0, drop = 0, have_ll = 0, die_with_parent = 0, hide_procs = 0, hide_try = 0;
  pid_t parent = getppid();
  uint64_t ll_fs = 0, ll_net = 0, ll_scope = 0, ll_flags = 0;

  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    char *v = (i + 1 < argc) ? argv[i + 1] : NULL;
#define NEEDV() do { if (!v) die("arguments", a, EINVAL); i++; } while (0)
    if (!strcmp(a, "--")) { prog = i + 1; break; }
    else if (!strcmp(a, "--die-with-parent")) die_with_parent = 1;
    else if (!strcmp(a, "--mkdir")) { NEEDV(); if (n_mkdirs >= MAX_ITEMS) die("arguments", a, E2BIG); mkdirs[n_mkdirs++] = v; }
    else if (!strcmp(a, "--rlimit")) {
      NEEDV();
      char *eq = strchr(v, '='), *colon = eq ? strchr(eq, ':') : NULL;
      if (!eq || !colon || n_rlims >= 32) die("arguments", "--rlimit RES=SOFT:HARD", EINVAL);
      int r = rlimit_res(v, (size_t)(eq - v));
      if (r < 0) die("arguments", v, EINVAL);
      *colon = 0;
      rlims[n_rlims].res = r;
      rlims[n_rlims].soft = rlim_val(eq + 1, a);
      rlims[n_rlims].hard = rlim_val(colon + 1, a);
      n_rlims++;
    }
    else if (!strcmp(a, "--netns")) { NEEDV(); if (strcmp(v, "new")) die("arguments", "--netns takes only 'new'", EINVAL); netns_new = 1; }
    else if (!strcmp(a, "--netns-path")) { NEEDV(); netns_path = v; }
    else if (!strcmp(a, "--private-tmp")) { NEEDV(); private_tmp = v; }
    else if (!strcmp(a, "--keep-path")) {
      NEEDV();
      if (n_keeps >= 64 || strncmp(v, "/tmp/", 5) != 0 || strstr(v, "/../") || strlen(v) < 6) die("arguments", "--keep-path takes an absolute path under /tmp/", EINVAL);
      keeps[n_keeps++] = v;
    }
    else if (!strcmp(a, "--drop-caps")) drop = 1;
    else if (!strcmp(a, "--hide-processes")) hide_procs = 1;
    else if (!strcmp(a, "--hide-processes-try")) hide_procs = hide_try = 1;
    else if (!strcmp(a, "--ll-fs")) { NEEDV(); ll_fs = num(v, a); have_ll = 1; }
    else if (!strcmp(a, "--ll-net")) { NEEDV(); ll_net = num(v, a); have_ll = 1; }
    else if (!strcmp(a, "--ll-scope")) { NEEDV(); ll_scope = num(v, a); have_ll = 1; }
    else if (!strcmp(a, "--ll-flags")) { NEEDV(); ll_flags = num(v, a); }
    else if (!strcmp(a, "--ll-path") || !strcmp(a, "--ll-path-opt")) {
      NEEDV();
      if (n_paths >= MAX_ITEMS) die("arguments", a, E2BIG);
      char *rest;
      paths[n_paths].access = split_mask(v, &rest, a);
      paths[n_paths].path = rest;
      paths[n_paths].optional = a[9] == '-';
      n_paths++;
    }
    else if (!strcmp(a, "--ll-port")) {
      NEEDV();
      if (n_ports >= MAX_ITEMS) die("arguments", a, E2BIG);
      char *rest;
      ports[n_ports].access = split_mask(v, &rest, a);
      ports[n_ports].port = num(rest, a);
      if (ports[n_ports].port > 65535) die("arguments", "--ll-port", ERANGE);
      n_ports++;
    }
    else if (!strcmp(a, "--seccomp")) { NEEDV(); seccomp_hex = v; }
    else die("arguments", a, EINVAL);
#undef NEEDV
  }
  if (prog < 0 || prog >= argc) die("arguments", "missing `-- PROGRAM [ARGS...]`", 0);
  if (netns_new && netns_path) die("arguments", "--netns and --netns-path are exclusive", 0);
  if ((n_paths || n_ports) && !have_ll) die("arguments", "Landlock rules without --ll-fs/--ll-net", 0);

  /* Decode the seccomp program up front so a bad argument fails before anything changes. */
  struct sock_filter *filter = NULL;
  unsigned short filter_len = 0;
  if (seccomp_hex) {
    size_t hl = strlen(seccomp_hex);
    if (hl == 0 || hl % 16 != 0 || hl / 16 > 4096) die("arguments", "--seccomp: length", EINVAL);
    unsigned char *bytes = malloc(hl / 2);
    if (!bytes) die("seccomp", "malloc", ENOMEM);
    for (size_t k = 0; k < hl / 2; k++) {
      int h = hexval(seccomp_hex[2 * k]), l = hexval(seccomp_hex[2 * k + 1]);
      if (h < 0 || l < 0) die("arguments", "--seccomp: not hex", EINVAL);
      bytes[k] = (unsigned char)(h << 4 | l);
    }
    filter = (struct sock_filter *)bytes;
    filter_len = (unsigned short)(hl / 16);
  }

  /* 1. mkdirs */
  for (i = 0; i < n_mkdirs; i++) mkdir_p(mkdirs[i]);

  /* 2. rlimits */
  for (i = 0; i < n_rlims; i++) {
    struct rlimit r = {rlims[i].soft, rlims[i].hard};
    if (setrlimit(rlims[i].res, &r) != 0) die("rlimit", argv[0], errno);
  }

  /* 3. namespaces */
  int root = geteuid() == 0;
  int pidns = hide_procs && !root;
  if (!root && (netns_new || private_tmp || pidns)) {
    uid_t uid = geteuid();
    gid_t gid = getegid();
    char map[64];
    int only_pidns = !netns_new && !private_tmp;
    if (unshare(CLONE_NEWUSER) != 0) {
      if (!(hide_try && only_pidns)) die("userns", "unshare(CLONE_NEWUSER)", errno);
      pidns = hide_procs = 0; /* --hide-processes-try: the host's list stays */
      goto no_userns;
    }
    write_file("/proc/self/setgroups", "deny");
    snprintf(map, sizeof map, "%u %u 1\n", (unsigned)uid, (unsigned)uid);
    write_file("/proc/self/uid_map", map);
    snprintf(map, sizeof map, "%u %u 1\n", (unsigned)gid, (unsigned)gid);
    write_file("/proc/self/gid_map", map);
  }
no_userns:
  if (netns_new) {
    if (unshare(CLONE_NEWNET) != 0) die("netns", "unshare(CLONE_NEWNET)", errno);
    loopback_up();
  } else if (netns_path) {
    int fd = open(netns_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("netns", netns_path, errno);
    if (setns(fd, CLONE_NEWNET) != 0) die("netns", netns_path, errno);
    close(fd);
  }

  /* 3b. without root, a PID namespace for the procfs of 4: this process stays outside as `outer` */
  if (pidns) {
    int status_p[2], life_p[2];
    sigset_t set;
    if (unshare(CLONE_NEWPID) != 0) {
      if (!hide_try) die("hide-processes", "unshare(CLONE_NEWPID)", errno);
      pidns = hide_procs = 0;
      goto no_pidns;
    }
    if (pipe2(status_p, O_CLOEXEC) != 0 || pipe2(life_p, O_CLOEXEC) != 0) die("hide-processes", "pipe", errno);
    pidns_mask(&set);
    if (sigprocmask(SIG_BLOCK, &set, &pidns_old_mask) != 0) die("hide-processes", "sigprocmask", errno);
    pid_t init = fork();
    if (init < 0) die("hide-processes", "fork the PID namespace's init", errno);
    if (init > 0) {
      close(status_p[1]);
      close(life_p[0]);
      pidns_outer(init, status_p[0], die_with_parent, parent);
    }
    close(status_p[0]);
    close(life_p[1]);
    pidns_status_w = status_p[1];
    pidns_life_r = life_p[0];
  }
no_pidns:

  /* 4. mount namespace: a private /tmp, a /proc that hides other processes */
  if (private_tmp || hide_procs) {
    const char *step = private_tmp ? "private-tmp" : "hide-processes";
    if (unshare(CLONE_NEWNS) != 0) die(step, "unshare(CLONE_NEWNS)", errno);
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) die(step, "make / rprivate", errno);
  }
  if (private_tmp) {
    /* Paths under the host's /tmp that must stay reachable: hold them open across the mount. */
    int keep_dir[64];
    for (i = 0; i < n_keeps; i++) {
      struct stat st;
      keep_fds[i] = open(keeps[i], O_PATH | O_CLOEXEC);
      if (keep_fds[i] < 0 || fstat(keep_fds[i], &st) != 0) die("private-tmp", keeps[i], errno);
      keep_dir[i] = S_ISDIR(st.st_mode);
    }
    if (mount(private_tmp, "/tmp", NULL, MS_BIND | MS_REC, NULL) != 0) die("private-tmp", private_tmp, errno);
    for (i = 0; i < n_keeps; i++) {
      char src[64];
      /* the mount point, inside the private /tmp: a directory, or for a file an empty file in
         its directory (a bind mount takes a file onto a file) */
      if (keep_dir[i]) mkdir_p(keeps[i]);
      else {
        char parent[4096];
        snprintf(parent, sizeof parent, "%s", keeps[i]);
        char *slash = strrchr(parent, '/');
        if (slash && slash != parent) { *slash = 0; mkdir_p(parent); }
        int mp = open(keeps[i], O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        if (mp < 0) die("private-tmp", keeps[i], errno);
        close(mp);
      }
      snprintf(src, sizeof src, "/proc/self/fd/%d", keep_fds[i]);
      if (mount(src, keeps[i], NULL, MS_BIND | MS_REC, NULL) != 0) die("private-tmp", keeps[i], errno);
      close(keep_fds[i]);
    }
  }

  /* hidepid=invisible hides a process unless the reader may ptrace-read it (Landlock refuses that for
     every process outside the reader's domain) or is in the mount's gid= group: the default, gid 0,
     would exempt a root program, so it names a group no account is in */
  if (hide_procs && !pidns && mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible,gid=" HIDE_GID) != 0)
    die("hide-processes", "mount a new procfs on /proc (hidepid=invisible)", errno);
  /* the PID namespace's own procfs lists its processes only (the kernel refuses it when the host's
     /proc is not fully visible here, e.g. in a container that masks parts of it) */
  if (pidns && mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0 && !hide_try)
    die("hide-processes", "mount the PID namespace's procfs on /proc", errno);

  /* 5. capabilities */
  if (drop) drop_caps();

  /* 6. Landlock ruleset and rules */
  int rfd = -1;
  if (have_ll) {
    struct ll_ruleset_attr attr = {ll_fs, ll_net, ll_scope};
    size_t size = ll_scope ? 24 : ll_net ? 16 : 8;
    rfd = (int)syscall(SYS_LANDLOCK_CREATE_RULESET, &attr, size, 0);
    if (rfd < 0) die("landlock", "landlock_create_ruleset", errno);
    for (i = 0; i < n_paths; i++) {
      int pfd = open(paths[i].path, O_PATH | O_CLOEXEC);
      if (pfd < 0) {
        if (paths[i].optional && (errno == ENOENT || errno == ENOTDIR)) continue;
        die("landlock", paths[i].path, errno);
      }
      struct ll_path_attr pa = {paths[i].access, pfd};
      /* Only narrows: directory-only rights cannot apply to a non-directory. The compiler already
       * masks them for files, so stat only rules that carry them (most file rules need no fstat). */
      if (pa.access & LL_DIR_ONLY) {
        struct stat st;
        if (fstat(pfd, &st) != 0) die("landlock", paths[i].path, errno);
        if (!S_ISDIR(st.st_mode)) pa.access &= ~LL_DIR_ONLY;
      }
      if (syscall(SYS_LANDLOCK_ADD_RULE, rfd, LANDLOCK_RULE_PATH_BENEATH, &pa, 0) != 0)
        die("landlock", paths[i].path, errno);
      close(pfd);
    }
    for (i = 0; i < n_ports; i++) {
      struct ll_port_attr pa = {ports[i].access, ports[i].port};
      if (syscall(SYS_LANDLOCK_ADD_RULE, rfd, LANDLOCK_RULE_NET_PORT, &pa, 0) != 0) {
        char what[32];
        snprintf(what, sizeof what, "port %llu", (unsigned long long)ports[i].port);
        die("landlock", what, errno);
      }
    }
  }

  /* 7. no_new_privs (always: required for unprivileged Landlock and seccomp; blocks setuid gain) */
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) die("no_new_privs", "prctl", errno);

  /* 8. restrict */
  if (have_ll) {
    if (syscall(SYS_LANDLOCK_RESTRICT_SELF, rfd, (uint32_t)ll_flags) != 0)
      die("landlock", "landlock_restrict_self", errno);
    close(rfd);
  }

  struct sock_fprog fp = {filter_len, filter};
  /* 8b. in the PID namespace: init starts the program here and stays (returns in the program) */
  if (pidns) pidns_init(filter ? &fp : NULL);

  /* 9. seccomp (last: the filter may deny the syscalls used above) */
  if (filter) {
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fp) != 0) die("seccomp", "seccomp(SET_MODE_FILTER)", errno);
  }

  /* 10. die with the parent: set last (credential changes clear it); if the parent is already
     gone, the signal will never come, so stop here. (In a PID namespace outer holds that role,
     and the namespace ends with init.) */
  if (die_with_parent && !pidns) {
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) die("die-with-parent", "prctl(PR_SET_PDEATHSIG)", errno);
    if (getppid() != parent) die("die-with-parent", "the parent exited before the program started", ESRCH);
  }

  /* 11. exec */
  execvp(argv[prog], &argv[prog]);
  int err = errno;
  fprintf(stderr, "cordon: exec: %s: %s\n", argv[prog], strerror(err));
  return err == ENOENT ? 127 : 126;
}
