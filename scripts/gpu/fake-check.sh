#!/bin/sh
# Runs the GPU test suite (tests/gpu) without a GPU, against a fake libcuda.so.1
# (zig/src/cuda/fake_libcuda.zig: host memory, CPU stand-ins for the kernels). Checks the
# driver loader (dlopen, _v2 symbols), the mr_cuda_* exports, the FFI signatures and the test
# harness; NOT the CUDA kernels (that is scripts/gpu/run.sh on a GPU machine). Runs the Zig
# tests of zig/src/cuda first (zig test --test-filter cuda).
# Usage: sh scripts/gpu/fake-check.sh [--bench]   (after `zig build`; MOONRING_LIB overrides the
# library; --bench also runs tests/gpu/bench.ts --quick, to check the script, not to time)
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
zig="$root/.tools/bin/zig"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
lib=${MOONRING_LIB:-$root/zig/zig-out/lib/libmoonring.so}
fatbin="$(dirname "$lib")/moonring.fatbin"
[ -f "$lib" ] || { echo "fake-check: $lib missing: run zig build first" >&2; exit 1; }
[ -f "$fatbin" ] || { echo "fake-check: $fatbin missing: run zig build first" >&2; exit 1; }

"$zig" run zig/tools/gen_ops.zig -- src/ops/table.json "$work/ops_table.zig" "$work/ops_table.cuh"

# The Zig tests of zig/src/cuda alone (fake driver table, fatbin contents, no-GPU path).
"$zig" test -lc -Izig/include --test-filter cuda --dep ops_table --dep moonring_fatbin \
  -Mroot=zig/src/root.zig -Mops_table="$work/ops_table.zig" -Mmoonring_fatbin="$fatbin" \
  --cache-dir zig/.zig-cache > "$work/zig-test.log" 2>&1 || { cat "$work/zig-test.log" >&2; exit 1; }
tail -1 "$work/zig-test.log"
"$zig" build-lib -dynamic -OReleaseSafe -lc -femit-bin="$work/libcuda-fake.so" \
  --dep ops_table --dep moonring_fatbin --dep reduce -Mroot=zig/src/cuda/fake_libcuda.zig \
  --dep ops_table -Mreduce=zig/src/reduce.zig \
  -Mops_table="$work/ops_table.zig" -Mmoonring_fatbin="$fatbin" \
  --cache-dir zig/.zig-cache

export MOONRING_CUDA_DRIVER="$work/libcuda-fake.so" MOONRING_LIB="$lib"
MOONRING_GPU_REQUIRED=1 "$root/.tools/bin/bun" test tests/gpu
if [ "${1:-}" = "--bench" ]; then
  "$root/.tools/bin/bun" tests/gpu/bench.ts --quick --json "$work/bench.json"
  test -s "$work/bench.json"
fi
