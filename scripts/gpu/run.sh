#!/bin/sh
# Runs the GPU tests and benchmarks on a GPU machine (no zig, nvcc or internet needed), from
# what scripts/gpu/pack.sh put in .carry/: bun (xz), libmoonring.so, moonring.fatbin.
#   sh scripts/gpu/run.sh [--no-bench] [--coll-bench]
# Writes under $OUT (default: a fresh temporary directory, printed):
#   env.txt (nvidia-smi, manifest, versions), test.log, test-device-N.log (other GPUs),
#   zig-test.log (Zig tests of zig/src/cuda + the engine's device-buffer tests, if carried),
#   verbs-gpu.log (tests/verbs/gpu.test.ts: device buffers over RDMA verbs through the test
#   provider, GPUDirect emulated with the real driver), verbs-tests.log (the provider's
#   conformance tests incl. dma-buf on this GPU), both when .carry/ has the provider (skip them:
#   MOONRING_SKIP_VERBS_GPU=1),
#   bench.log + bench.json, torch_ref.log + torch_ref.json (if PyTorch is installed), summary.txt
#   with --coll-bench (needs 2 GPUs): coll-moonring.jsonl, coll-nccl.jsonl, coll-bench.txt (moonring
#   `bench --device cuda --via native` next to NCCL via torchrun, 8 B..256 MiB, busbw side by side)
# Exit status: 0 when the bun GPU tests and the Zig GPU tests pass. Every stage has a time
# limit; the whole script stays well under 10 minutes on one H100.
# Overrides: MOONRING_BUN (a bun binary), MOONRING_LIB, MOONRING_FATBIN, MOONRING_GPU_TESTS (test
# files for bun test; default tests/gpu; when set, the second-GPU kernel pass is skipped),
# MOONRING_GPU_TEST_LIMIT (s, default 240), MOONRING_COLL_BENCH_ARGS (extra moonring bench flags, e.g. --iters 20), MOONRING_COLL_OPS (default allreduce,allgather,reduce_scatter), MOONRING_COLL_MAX_BYTES (256M), MOONRING_COLL_NPROC (GPUs, default 2).
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
log() { echo "[gpu] $*" | tee -a "$out/summary.txt" >&2; }
bench=1
coll_bench=0
for arg in "$@"; do
  case "$arg" in
    --no-bench) bench=0 ;;
    --coll-bench) coll_bench=1 ;;
  esac
done
gpu_tests=${MOONRING_GPU_TESTS:-tests/gpu}

# --- bun ----------------------------------------------------------------------------------
bun=${MOONRING_BUN:-}
if [ -z "$bun" ] && [ -f .carry/bun.xz ]; then
  bun="$work/bun"
  if command -v xz >/dev/null 2>&1; then
    xz -dc .carry/bun.xz > "$bun"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' .carry/bun.xz "$bun"
  fi
  chmod +x "$bun"
fi
[ -n "$bun" ] || bun=$(command -v bun || true)
bun_version=$([ -n "$bun" ] && "$bun" --version 2>/dev/null || true)
case "$bun_version" in
  [0-9]*) ;;
  *) log "no usable bun at '${bun:-}' (.carry/bun.xz missing or truncated? run scripts/gpu/pack.sh)"; exit 2 ;;
esac

# --- the rank services' dependencies (REST tests) ------------------------------------------
if [ ! -d node_modules/hono ] && [ -f .carry/deps.tar.xz ]; then
  tar -xJf .carry/deps.tar.xz || log "could not unpack .carry/deps.tar.xz"
fi

# --- library ------------------------------------------------------------------------------
export MOONRING_LIB="${MOONRING_LIB:-$root/.carry/libmoonring.so}"
export MOONRING_FATBIN="${MOONRING_FATBIN:-$(dirname "$MOONRING_LIB")/moonring.fatbin}"
[ -f "$MOONRING_LIB" ] || { log "no library at $MOONRING_LIB (run scripts/gpu/pack.sh)"; exit 2; }
# The test verbs provider, for tests/verbs/gpu.test.ts (device buffers over RDMA verbs).
[ -f .carry/libmoonring_fakeverbs.so ] && export MOONRING_TEST_VERBS_PROVIDER="${MOONRING_TEST_VERBS_PROVIDER:-$root/.carry/libmoonring_fakeverbs.so}"

{
  echo "== date"; date -u
  echo "== manifest"; cat .carry/manifest.txt 2>/dev/null || echo "(no .carry/manifest.txt)"
  echo "== bun"; "$bun" --version
  echo "== lib"; ls -l "$MOONRING_LIB" "$MOONRING_FATBIN"
  echo "== nvidia-smi"; nvidia-smi 2>&1 || echo "(nvidia-smi failed)"
  echo "== nvidia-smi topo"; nvidia-smi topo -m 2>&1 || true
  echo "== libcuda"; ldconfig -p 2>/dev/null | grep libcuda || echo "(libcuda.so.1 not in ldconfig cache)"
} > "$out/env.txt" 2>&1
log "out: $out"
log "bun $bun_version, lib $MOONRING_LIB"

limit() { seconds=$1; shift; if command -v timeout >/dev/null 2>&1; then timeout "$seconds" "$@"; else "$@"; fi; }

# --- tests --------------------------------------------------------------------------------
# MOONRING_GPU_REQUIRED=1: a machine without a visible GPU fails instead of skipping.
limit "${MOONRING_GPU_TEST_LIMIT:-240}" env MOONRING_GPU_REQUIRED=1 "$bun" test $gpu_tests > "$out/test.log" 2>&1
status=$?
# An empty or broken runner "passes" silently: insist on bun's result lines.
grep -Eq '^ *[0-9]+ pass' "$out/test.log" || { log "no bun test results in test.log"; [ "$status" -eq 0 ] && status=1; }
tail -5 "$out/test.log" | tee -a "$out/summary.txt" >&2
log "$gpu_tests (device 0): exit $status"

gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [ "${gpus:-0}" -gt 1 ] && [ -z "${MOONRING_GPU_TESTS:-}" ]; then
  last=$((gpus - 1))
  limit 120 env MOONRING_TEST_DEVICE=$last MOONRING_GPU_REQUIRED=1 "$bun" test tests/gpu/kernels.test.ts > "$out/test-device-$last.log" 2>&1
  s=$?
  log "tests/gpu/kernels.test.ts (device $last of $gpus): exit $s"
  [ "$status" -eq 0 ] && status=$s
fi

if [ -f .carry/zig-tests.xz ]; then
  if command -v xz >/dev/null 2>&1; then
    xz -dc .carry/zig-tests.xz > "$work/zig-tests"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' .carry/zig-tests.xz "$work/zig-tests"
  fi
  chmod +x "$work/zig-tests"
  limit 180 "$work/zig-tests" > "$out/zig-test.log" 2>&1
  s=$?
  grep -Eq 'tests passed|passed;' "$out/zig-test.log" || { log "no Zig test results in zig-test.log"; [ "$s" -eq 0 ] && s=1; }
  tail -1 "$out/zig-test.log" | tee -a "$out/summary.txt" >&2
  log "zig GPU tests (cuda, device buffers): exit $s"
  grep -q "skipped" "$out/zig-test.log" && log "note: some Zig tests skipped (see zig-test.log)"
  [ "$status" -eq 0 ] && status=$s
else
  log "no .carry/zig-tests.xz: Zig GPU tests not run"
fi

# --- GPU memory over RDMA verbs (the test provider; GPUDirect emulated through this driver) --
if [ -f .carry/libmoonring_fakeverbs.so ] && [ "${MOONRING_SKIP_VERBS_GPU:-0}" != 1 ]; then
  limit 240 env MOONRING_GPU_REQUIRED=1 "$bun" test tests/verbs/gpu.test.ts > "$out/verbs-gpu.log" 2>&1
  s=$?
  grep -Eq '^ *[0-9]+ pass' "$out/verbs-gpu.log" || { log "no bun test results in verbs-gpu.log"; [ "$s" -eq 0 ] && s=1; }
  tail -4 "$out/verbs-gpu.log" | tee -a "$out/summary.txt" >&2
  grep -h "GPU memory over verbs" "$out/verbs-gpu.log" | head -2 | tee -a "$out/summary.txt" >&2
  log "tests/verbs/gpu.test.ts (verbs, test provider): exit $s"
  [ "$status" -eq 0 ] && status=$s
  if [ -f .carry/verbs-tests.xz ]; then
    if command -v xz >/dev/null 2>&1; then xz -dc .carry/verbs-tests.xz > "$work/verbs-tests"; else
      python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' .carry/verbs-tests.xz "$work/verbs-tests"; fi
    chmod +x "$work/verbs-tests"
    limit 120 env MOONRING_VERBS_LIB="$root/.carry/libmoonring_fakeverbs.so" "$work/verbs-tests" > "$out/verbs-tests.log" 2>&1
    s=$?
    tail -1 "$out/verbs-tests.log" | tee -a "$out/summary.txt" >&2
    log "verbs provider conformance (dma-buf on this GPU): exit $s"
    [ "$status" -eq 0 ] && status=$s
  fi
else
  log "no .carry/libmoonring_fakeverbs.so: verbs GPU tests not run"
fi

# --- benchmarks ---------------------------------------------------------------------------
if [ "$bench" -eq 1 ]; then
  if limit 180 "$bun" tests/gpu/bench.ts --json "$out/bench.json" > "$out/bench.log" 2>&1; then
    log "bench: $out/bench.log"
  else
    log "bench failed (exit $?): see $out/bench.log"
  fi
  if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' > /dev/null 2>&1; then
    if limit 120 python3 scripts/gpu/torch_ref.py --json "$out/torch_ref.json" > "$out/torch_ref.log" 2>&1; then
      log "torch reference: $out/torch_ref.log"
    else
      log "torch reference failed: see $out/torch_ref.log"
    fi
  else
    log "no PyTorch with CUDA: torch reference skipped"
  fi
fi

# --- collectives: moonring (CUDA IPC direct path) next to NCCL, same machine, same run -------
if [ "$coll_bench" -eq 1 ]; then
  ops=${MOONRING_COLL_OPS:-allreduce,allgather,reduce_scatter}
  max=${MOONRING_COLL_MAX_BYTES:-268435456}
  nproc=${MOONRING_COLL_NPROC:-2}
  : > "$out/coll-moonring.jsonl"
  for op in $(echo "$ops" | tr , ' '); do
    limit 100 "$bun" src/cli.ts bench --nproc "$nproc" --device cuda --via native --op "$op" --min-bytes 8 --max-bytes "$max" \
      --json --quiet ${MOONRING_COLL_BENCH_ARGS:-} >> "$out/coll-moonring.jsonl" 2>> "$out/coll-bench.txt" || log "moonring bench $op failed (exit $?): see coll-bench.txt"
  done
  if command -v torchrun >/dev/null 2>&1; then trun="torchrun"; else trun="python3 -m torch.distributed.run"; fi
  limit 150 $trun --nproc_per_node "$nproc" bench/nccl_bench.py --min-bytes 8 --max-bytes "$max" --ops "$ops" --json \
    > "$out/coll-nccl.jsonl" 2>> "$out/coll-bench.txt" || log "NCCL bench failed (exit $?): see coll-bench.txt"
  python3 - "$out/coll-moonring.jsonl" "$out/coll-nccl.jsonl" > "$out/coll-bench.tmp" 2>&1 <<'PY'
import json, sys
def load(path):
    rows = {}
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            rows[(r["op"], r["bytes"])] = r
    return rows
mr, nc = load(sys.argv[1]), load(sys.argv[2])
gpu = next((r.get("gpu") for r in nc.values() if r.get("gpu")), "?")
print(f"# busbw GB/s, float32, 2 ranks, {gpu}: moonring (bench --device cuda --via native) vs NCCL (torch.distributed)")
print(f"{'op':>15} {'bytes':>11} {'mr time(us)':>12} {'mr busbw':>9} {'nccl time(us)':>14} {'nccl busbw':>11} {'ratio':>6} {'mr p50 busbw':>13} {'p50 ratio':>9}")
for (op, b) in sorted(set(mr) | set(nc), key=lambda k: (k[0], k[1])):
    m, n = mr.get((op, b)), nc.get((op, b))
    ratio = m["busbw_gbps"] / n["busbw_gbps"] if m and n and n["busbw_gbps"] > 0 else float("nan")
    # mean (as nccl-tests) and median: a few multi-ms hiccups among 5-20 iterations move the mean
    p50 = m["busbw_gbps"] * m["time_us"] / m["p50_us"] if m and m.get("p50_us") else float("nan")
    p50_ratio = p50 / n["busbw_gbps"] if n and n["busbw_gbps"] > 0 else float("nan")
    print(f"{op:>15} {b:>11} {m['time_us'] if m else '-':>12} {m['busbw_gbps'] if m else '-':>9} {n['time_us'] if n else '-':>14} {n['busbw_gbps'] if n else '-':>11} {ratio:>6.2f} {p50:>13.2f} {p50_ratio:>9.2f}")
PY
  cat "$out/coll-bench.tmp" >> "$out/coll-bench.txt"
  grep -E ' (67108864|134217728|268435456) ' "$out/coll-bench.tmp" | tee -a "$out/summary.txt" >&2
  grep -E '^ +allreduce +(8|1024) ' "$out/coll-bench.tmp" | tee -a "$out/summary.txt" >&2
  rm -f "$out/coll-bench.tmp"
fi

log "done: exit $status"
exit "$status"
