#!/bin/bash
# deploy/scripts/host-setup.sh — prepare a Debian 12 host to build and run cordon's image with
# podman (rootful). Idempotent: safe to run on every CI run; it only installs what is missing and
# rewrites /etc/containers/containers.conf only when its content differs.
#
# Why each setting:
#   runtime = "runc"        crun 1.8 refuses hosts whose cgroup hierarchy is hybrid (v1 controllers
#                           plus an empty v2 mount at /sys/fs/cgroup/unified); runc handles it.
#   cgroup_manager=cgroupfs no systemd as PID 1 here (containers in CI, WSL, minimal VMs).
#   events_logger = "file"  journald is not reachable without systemd.
#   default_ulimits         podman's defaults (nofile 1048576) exceed this host's hard limit, and
#                           an unprivileged setrlimit above the hard limit fails container start.
#                           We clamp to the host's own hard limits (ulimit -Hn / -Hu).
#   storage driver          overlay when the kernel supports it on this filesystem, else vfs.
set -euo pipefail

log() { printf 'host-setup: %s\n' "$*" >&2; }
t0=$(date +%s)

if [ "$(id -u)" != 0 ]; then
  log "must run as root (rootful podman is what the deploy test uses)"; exit 1
fi

PKGS="podman runc conmon debootstrap uidmap netavark aardvark-dns iptables catatonit"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  log "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  # /tmp/cordon-apt.lock serialises with other apt users on a shared box; DPkg::Lock::Timeout
  # waits for any other dpkg run.
  flock /tmp/cordon-apt.lock apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null || log "apt-get update failed; trying with the cached lists"
  # --no-install-recommends keeps out buildah/fuse-overlayfs/slirp4netns, which rootful podman
  # does not need here.
  flock /tmp/cordon-apt.lock apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing >/dev/null
else
  log "packages present: $PKGS"
fi

# kubectl (kustomize is built in) renders the manifests for the tests. Debian does not package
# it; install it from an apt source that has it (e.g. packages.cloud.google.com) when one is
# configured, otherwise say what is missing.
if ! command -v kubectl >/dev/null; then
  if apt-cache show kubectl >/dev/null 2>&1; then
    flock /tmp/cordon-apt.lock apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends kubectl >/dev/null
  else
    log "WARNING: kubectl not found and no apt source provides it; the deploy tests render with 'kubectl kustomize'"
  fi
fi

nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] && nofile=1048576
[ "$nproc" = unlimited ] && nproc=65536
[ "$nofile" -gt 1048576 ] && nofile=1048576
# nproc: measured on a host without CAP_SYS_RESOURCE (hard limit 96364): runc failed with
# "error setting rlimit type 6: operation not permitted" for any nproc above 32768, because a
# process between podman and the container runs with a lower limit than the shell. 32768 is
# plenty for one agent container and still bounds a fork bomb.
[ "$nproc" -gt 32768 ] && nproc=32768

# Storage driver: try overlay with a throwaway mount; fall back to vfs.
driver=vfs
probe=$(mktemp -d)
mkdir -p "$probe/l" "$probe/u" "$probe/w" "$probe/m"
if mount -t overlay overlay -o "lowerdir=$probe/l,upperdir=$probe/u,workdir=$probe/w" "$probe/m" 2>/dev/null; then
  umount "$probe/m"; driver=overlay
fi
rm -rf "$probe"

mkdir -p /etc/containers
conf=$(cat <<CONF
# written by cordon deploy/scripts/host-setup.sh
[containers]
default_ulimits = [ "nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}" ]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "netavark"
CONF
)
if [ ! -f /etc/containers/containers.conf ] || [ "$(cat /etc/containers/containers.conf)" != "$conf" ]; then
  printf '%s\n' "$conf" > /etc/containers/containers.conf
  log "wrote /etc/containers/containers.conf (runc, cgroupfs, nofile=$nofile nproc=$nproc)"
fi

sconf=$(cat <<CONF
# written by cordon deploy/scripts/host-setup.sh
[storage]
driver = "${driver}"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
CONF
)
if [ ! -f /etc/containers/storage.conf ] || [ "$(cat /etc/containers/storage.conf)" != "$sconf" ]; then
  if [ -d /var/lib/containers/storage ] && [ -f /etc/containers/storage.conf ]; then
    log "storage driver changed: resetting podman storage"; podman system reset -f >/dev/null 2>&1 || true
  fi
  printf '%s\n' "$sconf" > /etc/containers/storage.conf
  log "wrote /etc/containers/storage.conf (driver=$driver)"
fi

# Smoke test: a container from a one-file rootfs (no registry is reachable here). Busybox is not
# guaranteed, so the rootfs holds only a static-enough binary: we import /bin/true's closure.
if ! podman image exists localhost/cordon-smoke:latest; then
  st=$(mktemp -d)
  mkdir -p "$st/bin"
  cp /bin/true "$st/bin/true"
  for lib in $(ldd /bin/true | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
    mkdir -p "$st$(dirname "$lib")"; cp -L "$lib" "$st$lib"
  done
  tar -C "$st" -c . | podman import - localhost/cordon-smoke:latest >/dev/null
  rm -rf "$st"
fi
if podman run --rm --network none localhost/cordon-smoke:latest /bin/true; then
  log "podman run works (runtime $(podman info --format '{{.Host.OCIRuntime.Name}}'), storage $driver) in $(( $(date +%s) - t0 ))s"
else
  log "podman run FAILED: see 'podman --log-level=debug run --rm localhost/cordon-smoke /bin/true'"; exit 1
fi
