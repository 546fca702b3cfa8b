#!/usr/bin/env bash
# `npm test`: every test this machine can run, in three stages, each reported by
# scripts/tap-summary.mjs; the last line adds them up as `N passed, N failed, N skipped`.
#   1. suite   the tap suite, test/**/*.test.ts, on this Node (kernel tests in child processes)
#   2. node-lts  (root) the addon, sandbox and policy tests again on the newest Node LTS, loading
#              the shipped prebuild: one N-API binary serves every Node version
#   3. deploy  (root, podman) the container image and `podman kube play` of the manifests, end to end
# `npm test -- FILES...` runs only tap on those files. CORDON_TEST_STAGES=suite,deploy picks stages.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .tap
if [ $# -gt 0 ]; then
  npx tap --reporter=tap "$@" | node scripts/tap-summary.mjs
  exit $?
fi
stages=${CORDON_TEST_STAGES:-suite,node-lts,deploy}
P=0; F=0; S=0; report=()
stage() {
  local name=$1; shift
  local log=.tap/stage-$name.log t0=$(date +%s)
  echo "=== stage $name: $*"
  "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  local line
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped' "$log" | tail -n 1)
  if [ -n "$line" ]; then
    local p f s
    read -r p f s < <(echo "$line" | sed -E 's/^([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped.*/\1 \2 \3/')
    P=$((P + p)); F=$((F + f)); S=$((S + s))
    if [ "$rc" != 0 ] && [ "$f" = 0 ]; then F=$((F + 1)); line="$line (but the stage exited $rc)"; fi
  else
    if [ "$rc" != 0 ]; then F=$((F + 1)); line="no results (exit $rc)"; else line="no results"; fi
  fi
  report+=("$name: $line in $(( $(date +%s) - t0 ))s")
}
skip_stage() { report+=("$1: SKIPPED: $2"); echo "=== stage $1 skipped: $2"; }
has() { [[ ",$stages," == *",$1,"* ]]; }

# test/supervisor/term-tmux.test.ts runs alone, after the suite (it drives a real terminal and is the
# one test that reads screen timing; it now uses a tmux server of its own and prints the screen on failure)
ALONE=test/supervisor/term-tmux.test.ts
if has suite; then
  stage suite bash -c "npx tap --reporter=tap \$(find test -name '*.test.ts' ! -path $ALONE | sort | tr '\n' ' ') | CORDON_TAP_LOG=.tap/raw-suite.tap node scripts/tap-summary.mjs"
  stage alone bash -c "npx tap --reporter=tap $ALONE | CORDON_TAP_LOG=.tap/raw-alone.tap node scripts/tap-summary.mjs"
fi
if has node-lts; then
  if [ "$(id -u)" != 0 ]; then skip_stage node-lts 'needs root (lock() re-executes Node binaries kept under /usr/local/lib)'
  else
    [ -f prebuilds/linux-$(node -p process.arch)/cordon.glibc.node ] || npm run prebuild
    stage node-lts node scripts/test-node-versions.mjs --node lts
  fi
fi
if has deploy; then
  if [ "$(id -u)" != 0 ]; then skip_stage deploy 'needs root (rootful podman)'
  elif ! command -v podman >/dev/null; then skip_stage deploy 'podman is not installed (bash scripts/setup.sh installs it)'
  else stage deploy bash test/deploy/run.sh
  fi
fi
echo
echo "=== stages"
for r in "${report[@]}"; do echo "  $r"; done
echo "$P passed, $F failed, $S skipped"
[ "$F" = 0 ]
