#!/bin/sh
# Optional: rdma-core's <infiniband/verbs.h> (Debian libibverbs-dev) so `zig build test` also
# checks zig/src/verbs/abi.zig against the real header. Nothing builds or runs against
# libibverbs itself: the core dlopens it at run time, and tests use the test provider
# (zig-out/lib/libmoonring_fakeverbs.so). Quiet and harmless where apt-get is not ours to run.
set -u
[ -f /usr/include/infiniband/verbs.h ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup-verbs] installing libibverbs-dev (header for the verbs ABI check)" >&2
  (apt-get install -y -q libibverbs-dev rdma-core >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libibverbs-dev rdma-core >/dev/null 2>&1; }) ||
    echo "[setup-verbs] could not install libibverbs-dev: the verbs ABI check is skipped" >&2
else
  echo "[setup-verbs] no <infiniband/verbs.h> and no apt-get as root: the verbs ABI check is skipped" >&2
fi
exit 0
