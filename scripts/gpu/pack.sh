#!/bin/sh
# Prepares .carry/ (git-ignored) for scripts/gpu/run.sh on the GPU machine, which has no zig,
# nvcc or internet:
#   .carry/bun.xz           the pinned bun binary (node_modules), xz -T2
#   .carry/libmoonring.so   a ReleaseFast build (embeds the CUDA fatbin)
#   .carry/moonring.fatbin  the same fatbin (tests/gpu/fatbin.test.ts and the bench load it)
#   .carry/zig-tests.xz     Zig test binary (ReleaseSafe) of the tests that need a GPU to mean
#                           something: zig/src/cuda/* ("cuda") and the engine's "device buffers"
#   .carry/deps.tar.xz      node_modules/hono + zod (the rank services' runtime dependencies)
#   .carry/libmoonring_fakeverbs.so  the test verbs provider (GPUDirect emulated through CUDA):
#                           tests/verbs/gpu.test.ts on the real driver, with the ranks' links over it
#   .carry/verbs-tests.xz   the provider's conformance tests (zig/src/verbs, incl. dma-buf on a GPU)
#   .carry/manifest.txt     git revision, checksums, versions
# Builds into a temporary prefix (never touches zig/zig-out, which others use).
# Usage: sh scripts/gpu/pack.sh     then, on the GPU machine: sh scripts/gpu/run.sh
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
carry="$root/.carry"
carry_bytes_max=$((64 * 1024 * 1024)) # what one run may carry
mkdir -p "$carry"
log() { echo "[pack] $*" >&2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

log "building libmoonring (ReleaseFast) + fatbin"
# build.zig's preferred_optimize_mode turns -Doptimize into -Drelease; accept either form.
if ( cd zig && "$root/.tools/bin/zig" build -h 2>/dev/null | grep -q -- '-Doptimize=' ); then
  optimize=-Doptimize=ReleaseFast
else
  optimize=-Drelease=true
fi
( cd zig && "$root/.tools/bin/zig" build "$optimize" -Dnvcc="$root/.tools/bin/nvcc" -p "$tmp/prefix" ) ||
  { log "zig build failed"; exit 1; }
cp "$tmp/prefix/lib/libmoonring.so" "$carry/libmoonring.so"
cp "$tmp/prefix/lib/moonring.fatbin" "$carry/moonring.fatbin"
cp "$tmp/prefix/lib/libmoonring_fakeverbs.so" "$carry/libmoonring_fakeverbs.so"

log "building the Zig GPU test binary (filters: cuda, device buffers)"
"$root/.tools/bin/zig" run zig/tools/gen_ops.zig -- src/ops/table.json "$tmp/ops_table.zig" "$tmp/ops_table.cuh"
rm -f "$carry/zig-tests.xz"
if "$root/.tools/bin/zig" test -OReleaseSafe -lc -Izig/include --test-filter cuda --test-filter "device buffers" \
  --test-no-exec -femit-bin="$tmp/zig-tests" --dep ops_table --dep moonring_fatbin -Mroot=zig/src/root.zig \
  -Mops_table="$tmp/ops_table.zig" -Mmoonring_fatbin="$tmp/prefix/lib/moonring.fatbin" --cache-dir zig/.zig-cache; then
  xz -T2 -c "$tmp/zig-tests" > "$carry/zig-tests.xz"
else
  log "warning: the Zig test binary did not build; run.sh will skip the Zig GPU tests"
fi

log "building the verbs provider's conformance test binary (dma-buf over a real GPU there)"
rm -f "$carry/verbs-tests.xz"
echo 'pub const verbs_header = false;' > "$tmp/verbs_options.zig"
if "$root/.tools/bin/zig" test -OReleaseSafe -lc --test-no-exec -femit-bin="$tmp/verbs-tests" --dep verbs_options \
  -Mroot=zig/src/verbs/conformance_test.zig -Mverbs_options="$tmp/verbs_options.zig" --cache-dir zig/.zig-cache; then
  xz -T2 -c "$tmp/verbs-tests" > "$carry/verbs-tests.xz"
else
  log "warning: the verbs test binary did not build; run.sh will skip it"
fi

# The runtime dependencies of the rank services (REST tests launch ranks on the GPU machine).
tar -C "$root" -cJf "$carry/deps.tar.xz" node_modules/hono node_modules/zod ||
  { log "warning: no node_modules/hono, node_modules/zod: REST tests on the GPU machine will fail"; rm -f "$carry/deps.tar.xz"; }

bun_bin=$(readlink -f node_modules/.bin/bun 2>/dev/null || true)
[ -n "$bun_bin" ] && [ -x "$bun_bin" ] || { log "no bun in node_modules: run sh scripts/bootstrap.sh"; exit 1; }
[ "$(head -c 4 "$bun_bin" | od -An -c | tr -d ' ')" = "177ELF" ] || { log "$bun_bin is not an ELF binary"; exit 1; }
if [ ! -f "$carry/bun.xz" ] || [ "$bun_bin" -nt "$carry/bun.xz" ]; then
  log "compressing $bun_bin (xz -T2, about a minute)"
  xz -T2 -6 -c "$bun_bin" > "$carry/bun.xz.tmp"
  mv "$carry/bun.xz.tmp" "$carry/bun.xz"
fi

{
  echo "git: $(git rev-parse HEAD)$(git diff --quiet HEAD -- cuda zig tests/gpu scripts/gpu || echo ' (+ uncommitted changes)')"
  echo "packed: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "bun: $("$bun_bin" --version)"
  echo "nvcc: $("$root/.tools/bin/nvcc" --version | tail -1)"
  echo "zig: $("$root/.tools/bin/zig" version)"
  ( cd "$carry" && sha256sum bun.xz libmoonring.so moonring.fatbin libmoonring_fakeverbs.so $(ls zig-tests.xz verbs-tests.xz deps.tar.xz 2>/dev/null) )
} > "$carry/manifest.txt"

total=$(cat "$carry"/bun.xz "$carry"/libmoonring.so "$carry"/moonring.fatbin "$carry"/libmoonring_fakeverbs.so "$carry"/manifest.txt $(ls "$carry"/zig-tests.xz "$carry"/verbs-tests.xz "$carry"/deps.tar.xz 2>/dev/null) | wc -c)
if [ -d "$carry/out" ]; then log "note: $carry/out exists; remove it before carrying"; fi
cat "$carry/manifest.txt" >&2
log "carry: $((total / 1024 / 1024)) MiB of $((carry_bytes_max / 1024 / 1024)) MiB"
[ "$total" -le "$carry_bytes_max" ] || { log "too large to carry"; exit 1; }
log "on the GPU machine: sh scripts/gpu/run.sh   (carry .carry; logs under \$OUT)"
