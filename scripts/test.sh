#!/usr/bin/env bash
# `npm test`: the whole tap suite (TypeScript, run by tap's typescript plugin), reported by
# scripts/tap-summary.mjs, which ends with `N passed, N failed, N skipped`.
set -o pipefail
cd "$(dirname "$0")/.."
npx tap --reporter=tap "$@" | node scripts/tap-summary.mjs
