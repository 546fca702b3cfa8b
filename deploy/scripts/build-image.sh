#!/bin/bash
# deploy/scripts/build-image.sh — build localhost/cordon:<version> (and :dev) with podman from the
# working tree, without any registry:
#   1. base image (deploy/scripts/base-rootfs.sh, cached)
#   2. TypeScript build (tsc -p tsconfig.build.json) and `npm pack --ignore-scripts`
#   3. native: prebuilds/linux-<arch>/ travel inside the tarball when they exist; otherwise the
#      host's build/Release (cordon.node + cordon-exec; host is Debian 12 = the image's glibc) is
#      staged, building it with node-gyp first if it is missing
#   4. production node_modules copied from the host's tree (npm ls --omit=dev), so the image
#      needs no npm and no network
#   5. podman build -f deploy/Containerfile
# Prints the image size. Env: CORDON_IMAGE (default localhost/cordon:dev), CORDON_CACHE.
set -euo pipefail
log() { printf 'build-image: [%3ss] %s\n' "$(( $(date +%s) - t0 ))" "$*" >&2; }
t0=$(date +%s)
cd "$(dirname "$0")/../.."
ROOT=$PWD
IMAGE=${CORDON_IMAGE:-localhost/cordon:dev}
CACHE=${CORDON_CACHE:-/var/cache/cordon}
CTX="$CACHE/image-context"

bash deploy/scripts/base-rootfs.sh

arch=$(node -p 'process.arch')
# Skip tsc when nothing it reads changed since its last clean run here (it is the slowest step).
stamp="$CACHE/tsc.stamp"
if [ -f "$stamp" ] && [ -f dist/cli/main.js ] && [ -z "$(find lib tsconfig.json tsconfig.build.json package.json -newer "$stamp" -print -quit)" ]; then
  log "dist/ is current (no lib/ change since the last build); skipping tsc"
  CORDON_SKIP_TSC=1
fi
if [ "${CORDON_SKIP_TSC:-}" != 1 ]; then
  log "tsc -p tsconfig.build.json"
  touch "$stamp.new"   # taken before tsc reads anything: a file edited during the build is seen next time
  if ! npx tsc -p tsconfig.build.json >"$CACHE/tsc.log" 2>&1; then
    if [ "${CORDON_ALLOW_TSC_ERRORS:-}" = 1 ]; then
      log "WARNING: tsc reported $(grep -c 'error TS' "$CACHE/tsc.log") type errors ($CACHE/tsc.log); packing the emitted JS anyway (CORDON_ALLOW_TSC_ERRORS=1)"
    else
      head -n 20 "$CACHE/tsc.log" >&2
      log "TypeScript build failed ($CACHE/tsc.log); fix it, or set CORDON_ALLOW_TSC_ERRORS=1 to pack what tsc emitted"; exit 1
    fi
  else
    mv -f "$stamp.new" "$stamp"
  fi
fi
[ -f dist/cli/main.js ] || { log "dist/cli/main.js missing after the build"; exit 1; }

[ -d "$CTX" ] && chmod -R u+w "$CTX"; rm -rf "$CTX"; mkdir -p "$CTX"
log "npm pack"
tarball=$(npm pack --ignore-scripts --silent --pack-destination "$CTX" | tail -n1)
tar -xzf "$CTX/$tarball" -C "$CTX"          # -> $CTX/package
rm -f "$CTX/$tarball"
cp deploy/probe.mjs "$CTX/probe.mjs"

if ls "$CTX"/package/prebuilds/linux-"$arch"/*.node >/dev/null 2>&1; then
  log "using prebuilds/linux-$arch from the package"
else
  if [ ! -f build/Release/cordon.node ] || [ ! -f build/Release/cordon-exec ]; then
    log "no prebuild for linux-$arch and no build/Release: building with node-gyp"
    npx node-gyp rebuild >/dev/null
  fi
  mkdir -p "$CTX/package/build/Release"
  cp build/Release/cordon.node build/Release/cordon-exec "$CTX/package/build/Release/"
  log "staged build/Release (no prebuild for linux-$arch in the package)"
fi

# Production dependency closure, copied from the host's node_modules (outermost paths only),
# cached per package-lock.json and hard-linked into the context.
lockhash=$(cat package-lock.json package.json | sha256sum | cut -c1-16)
DEPS="$CACHE/deps-$lockhash"
if [ ! -f "$DEPS/.complete" ]; then
  rm -rf "$CACHE"/deps-*; mkdir -p "$DEPS/node_modules"
  npm ls --omit=dev --parseable --all 2>/dev/null | tail -n +2 | sed "s|^$ROOT/||" | sort -u \
    | awk 'BEGIN{last="//"} index($0, last"/")==1 {next} {print; last=$0}' > "$DEPS/deps.txt"
  tar -C "$ROOT" -cf - -T "$DEPS/deps.txt" | tar -C "$DEPS" -xf -
  # Type declarations, source maps and docs are never read at run time.
  find "$DEPS/node_modules" -type f \( -name '*.map' -o -name '*.d.ts' -o -name '*.d.mts' \
    -o -name '*.d.cts' -o -name '*.md' -o -name '*.markdown' \) -delete
  chmod -R a-w,a+rX "$DEPS/node_modules"
  touch "$DEPS/.complete"
  log "staged $(wc -l < "$DEPS/deps.txt") production dependency trees ($(du -sm "$DEPS/node_modules" | cut -f1) MB) into $DEPS"
else
  log "reusing production dependencies $DEPS"
fi
cp -al "$DEPS/node_modules" "$CTX/package/node_modules"
find "$CTX/package/dist" -type f -name '*.map' -delete

# Root-owned and read-only for everyone in the image (set here: a RUN chmod would copy every file
# into a second layer).
chmod -R a-w,a+rX "$CTX/package"
version=$(node -p 'require("./package.json").version')
old_id=$(podman image inspect "$IMAGE" --format '{{.Id}}' 2>/dev/null || true)
log "podman build"
podman build --quiet --layers=false -f deploy/Containerfile -t "$IMAGE" -t "localhost/cordon:$version" "$CTX" >/dev/null
# the previous build of this tag, now untagged: remove it (only that one image)
if [ -n "$old_id" ] && [ "$old_id" != "$(podman image inspect "$IMAGE" --format '{{.Id}}')" ] \
   && [ -z "$(podman image inspect "$old_id" --format '{{join .RepoTags ","}}' 2>/dev/null)" ]; then
  podman rmi "$old_id" >/dev/null 2>&1 || true
fi
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
base=$(podman image inspect localhost/cordon-base:bookworm --format '{{.Size}}')
log "$IMAGE: $((size / 1000000)) MB (base $((base / 1000000)) MB + cordon $(((size - base) / 1000000)) MB) in $(( $(date +%s) - t0 ))s"
