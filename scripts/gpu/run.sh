#!/bin/sh
# Runs the GPU tests and benchmarks on a GPU machine (no zig, nvcc or internet needed), from
# what scripts/gpu/pack.sh put in .carry/: bun (xz), libmoonring.so, moonring.fatbin.
#   sh scripts/gpu/run.sh [--no-bench]
# Writes under $OUT (default: a fresh temporary directory, printed):
#   env.txt (nvidia-smi, manifest, versions), test.log, test-device-N.log (other GPUs),
#   zig-test.log (Zig tests of zig/src/cuda + the engine's device-buffer tests, if carried),
#   bench.log + bench.json, torch_ref.log + torch_ref.json (if PyTorch is installed), summary.txt
# Exit status: 0 when the bun GPU tests and the Zig GPU tests pass. Every stage has a time
# limit; the whole script stays well under 10 minutes on one H100.
# Overrides: MOONRING_BUN (a bun binary), MOONRING_LIB, MOONRING_FATBIN.
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
log() { echo "[gpu] $*" | tee -a "$out/summary.txt" >&2; }
bench=1
[ "${1:-}" = "--no-bench" ] && bench=0

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

# --- library ------------------------------------------------------------------------------
export MOONRING_LIB="${MOONRING_LIB:-$root/.carry/libmoonring.so}"
export MOONRING_FATBIN="${MOONRING_FATBIN:-$(dirname "$MOONRING_LIB")/moonring.fatbin}"
[ -f "$MOONRING_LIB" ] || { log "no library at $MOONRING_LIB (run scripts/gpu/pack.sh)"; exit 2; }

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
limit 240 env MOONRING_GPU_REQUIRED=1 "$bun" test tests/gpu > "$out/test.log" 2>&1
status=$?
# An empty or broken runner "passes" silently: insist on bun's result lines.
grep -Eq '^ *[0-9]+ pass' "$out/test.log" || { log "no bun test results in test.log"; [ "$status" -eq 0 ] && status=1; }
tail -5 "$out/test.log" | tee -a "$out/summary.txt" >&2
log "tests/gpu (device 0): exit $status"

gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [ "${gpus:-0}" -gt 1 ]; then
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

log "done: exit $status"
exit "$status"
