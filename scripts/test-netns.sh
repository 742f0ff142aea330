#!/bin/sh
# npm run test:netns (CI, .ci/run): the verbs data plane with ranks in network namespaces as
# separate hosts and the test verbs provider as their RDMA NIC (tests/support/netns-world.ts):
# every collective + p2p and kill -9 mid-op at 2, 3 and 5 ranks (tests/netns), then the whole
# fault suite (tests/fault: failed ranks, SIGSTOP, coordinator failover, rejoin, recovery,
# elastic joins, stalls) with MOONRING_TEST_NETNS=rank (one rank per namespace: every
# link verbs) and =pairs (two ranks per namespace: shm within, verbs across). One bun process
# per file, as in npm test. Needs root, `ip netns` and `unshare`: skipped, saying so, elsewhere.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ "$(id -u)" != 0 ] || ! ip netns list >/dev/null 2>&1 || ! unshare --uts true >/dev/null 2>&1; then
  echo "SKIP test:netns: needs root, ip netns and unshare --uts (network namespaces as hosts)"
  exit 0
fi
failed=""
for f in $(find tests/netns -name '*.test.ts' | sort); do
  echo "== $f"
  bun test "./$f" || failed="$failed $f"
done
# The fault suites that start their worlds through launchWorld / the fault Harness: those are
# the ones MOONRING_TEST_NETNS puts in namespaces (etcd.test.ts runs its own ranks next to an
# etcd on loopback, partition.test.ts makes namespaces of its own; both run in npm test).
fault_files=$(grep -lE 'new Harness|launchWorld|launchedWorldRef' tests/fault/*.test.ts | sort)
for layout in rank pairs; do
  for f in $fault_files; do
    echo "== MOONRING_TEST_NETNS=$layout $f"
    MOONRING_TEST_NETNS=$layout bun test "./$f" || failed="$failed $layout:$f"
  done
done
if [ -n "$failed" ]; then
  echo "== test:netns: failed:$failed"
  exit 1
fi
