#!/usr/bin/env bash
# Everything a fresh Debian 12 machine needs before `npm test`: Debian packages (as root), the
# rootful podman set-up the deploy test uses, and the npm dependencies (which build the addon
# from source when no prebuild matches). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    python3 make g++ iproute2 iptables tmux curl procps psmisc binutils file \
    cmake g++-aarch64-linux-gnu binutils-aarch64-linux-gnu qemu-user-static >/dev/null
  if [ -f deploy/scripts/host-setup.sh ]; then bash deploy/scripts/host-setup.sh; fi
else
  echo "setup: not root; skipping Debian packages (the kernel tests that need root will say so)" >&2
fi
npm ci --no-audit --no-fund
