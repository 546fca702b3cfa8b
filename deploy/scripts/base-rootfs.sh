#!/bin/bash
# deploy/scripts/base-rootfs.sh — build cordon's base image without any registry: a Debian
# bookworm minbase root filesystem from debootstrap, plus a Node >= 20 binary, imported into
# podman as localhost/cordon-base:bookworm.
#
# Cached: the debootstrap tree lives in $CORDON_CACHE (default /var/cache/cordon) and is reused;
# the podman image is rebuilt only when the tree or the node binary changed (label check).
#
# Node: Debian bookworm ships nodejs 18, cordon needs >= 20. We copy the host's node binary
# ($CORDON_NODE or `command -v node`) after checking that every shared library it needs is
# present in the rootfs (ldd); node is a single ~100 MB executable linked only against glibc and
# libstdc++, both in bookworm minbase (apt depends on libstdc++6).
set -euo pipefail
log() { printf 'base-rootfs: %s\n' "$*" >&2; }
t0=$(date +%s)

CACHE=${CORDON_CACHE:-/var/cache/cordon}
SUITE=bookworm
ROOT="$CACHE/rootfs-$SUITE"
IMAGE=${CORDON_BASE_IMAGE:-localhost/cordon-base:$SUITE}
NODE=${CORDON_NODE:-$(command -v node)}

# The mirror apt already uses (debootstrap needs one; no internet beyond Debian's mirror here).
MIRROR=${CORDON_DEBIAN_MIRROR:-}
if [ -z "$MIRROR" ]; then
  MIRROR=$(grep -rhoE '^(URIs:|deb)\s+\S+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi

node_major=$("$NODE" -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then log "$NODE is Node $node_major; cordon needs >= 20 (set CORDON_NODE)"; exit 1; fi

mkdir -p "$CACHE"
if [ ! -f "$ROOT/.cordon-complete" ]; then
  log "debootstrap --variant=minbase $SUITE from $MIRROR into $ROOT (first run only)"
  rm -rf "$ROOT"
  debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 || {
    log "debootstrap failed; last lines of $CACHE/debootstrap.log:"; tail -n 20 "$CACHE/debootstrap.log" >&2; exit 1; }
  # Trim what a runtime image never uses: package caches, docs, man pages, locales.
  rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* \
         "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* \
         "$ROOT"/usr/share/locale/* "$ROOT"/var/log/*.log
  touch "$ROOT/.cordon-complete"
else
  log "reusing cached rootfs $ROOT"
fi

install -m 0755 "$NODE" "$ROOT/usr/local/bin/node"
# Every library node links against must resolve inside the rootfs.
missing=""
for lib in $(ldd "$NODE" | awk '/=>/ {print $1}'); do
  if ! ls "$ROOT"/lib/x86_64-linux-gnu/"$lib" "$ROOT"/usr/lib/x86_64-linux-gnu/"$lib" >/dev/null 2>&1 \
     && ! ls "$ROOT"/lib/aarch64-linux-gnu/"$lib" "$ROOT"/usr/lib/aarch64-linux-gnu/"$lib" >/dev/null 2>&1; then
    missing="$missing $lib"
  fi
done
if [ -n "$missing" ]; then log "node needs libraries missing from the rootfs:$missing"; exit 1; fi

stamp=$( { stat -c '%Y' "$ROOT/.cordon-complete"; sha256sum "$NODE" | cut -c1-16; } | sha256sum | cut -c1-16)
if podman image exists "$IMAGE" && [ "$(podman image inspect "$IMAGE" --format '{{index .Config.Labels "cordon.base.stamp"}}' 2>/dev/null)" = "$stamp" ]; then
  log "image $IMAGE is current"
else
  log "importing $ROOT as $IMAGE"
  tar --numeric-owner --exclude=./.cordon-complete -C "$ROOT" -c . | podman import --quiet \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV LANG=C.UTF-8" \
    --change "LABEL cordon.base.stamp=$stamp" \
    --change "LABEL org.opencontainers.image.source=debootstrap-$SUITE-minbase" \
    --change 'CMD ["/bin/sh"]' \
    - "$IMAGE" >/dev/null
fi
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
log "$IMAGE: $((size / 1000000)) MB (node $("$NODE" -v)) in $(( $(date +%s) - t0 ))s"
