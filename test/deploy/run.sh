#!/usr/bin/env bash
# npm run test:deploy — everything deploy/ claims, proved as far as this machine can:
#   1. host set-up (podman + runc + debootstrap + kubectl; idempotent)
#   2. the image (base rootfs cached in /var/cache/cordon; the cordon layer rebuilt from this tree)
#   3. manifests.test.ts  schema + security properties + NetworkPolicy reachability vs README
#      reload.test.ts     ConfigMap ..data swap: engine and router hot reload
#      e2e.podman.ts      the four pods with podman kube play, flows and attacks end to end
# e2e.podman.ts is not named *.test.ts so a plain `npm test` does not need root, podman or the
# image; manifests.test.ts and reload.test.ts also run in `npm test`.
set -euo pipefail
set -o pipefail
cd "$(dirname "$0")/../.."
t0=$(date +%s)
if [ "$(id -u)" != 0 ]; then
  echo "test:deploy: needs root (rootful podman, iptables in pod namespaces)" >&2
  exit 1
fi
bash deploy/scripts/host-setup.sh
t1=$(date +%s)
bash deploy/scripts/build-image.sh
t2=$(date +%s)
status=0
# manifests.test.ts and reload.test.ts also run in the main suite; here only the podman e2e
npx tap --jobs 1 --timeout 600 --reporter=tap test/deploy/e2e.podman.ts | CORDON_TAP_LOG=.tap/raw-deploy.tap node scripts/tap-summary.mjs || status=$?
t3=$(date +%s)
cat <<MSG
test:deploy: host setup $((t1 - t0))s, image $((t2 - t1))s, tests $((t3 - t2))s, total $((t3 - t0))s
test:deploy: NOT exercised on this machine:
  - K3s itself; a CNI enforcing NetworkPolicy (podman enforces none: the policies are evaluated
    against deploy/README.md, and the sandbox's egress allow-list is emulated with iptables)
  - kube-proxy, CoreDNS, the kubelet's ConfigMap updates, Secret volumes, the seccomp installer
    DaemonSet, PVC provisioning (emulated or translated; listed in the e2e output)
  - the linux/arm64 image
MSG
exit $status
