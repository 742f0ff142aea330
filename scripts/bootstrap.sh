#!/bin/sh
# Idempotent toolchain bootstrap: bun (npm devDependency), pinned Zig (PyPI `ziglang` in
# .tools/venv when the exact version is not on PATH), nvcc for CUDA 13.0 (system nvcc, else
# PyPI nvidia-cuda-* 13.0.x). Quiet when everything is present. With --build, also runs
# `zig build` (library + CUDA fatbin). Downloads only from npm, PyPI and Debian.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/toolchain.env
tools="$root/.tools"
mkdir -p "$tools/bin"
log() { echo "[bootstrap] $*" >&2; }

# One bootstrap per checkout at a time (two at once broke each other's npm ci, venv and build):
# re-run this script under an exclusive lock.
if [ -z "${MOONRING_BOOTSTRAP_LOCKED:-}" ] && command -v flock >/dev/null 2>&1; then
  export MOONRING_BOOTSTRAP_LOCKED=1
  exec flock -w 3600 "$tools/.bootstrap.lock" sh "$root/scripts/bootstrap.sh" "$@"
fi
. scripts/venv.sh

# --- bun, pinned in package.json --------------------------------------------------------
want_bun=$(sed -n 's/.*"bun": "\([0-9.]*\)".*/\1/p' package.json)
# Also when package-lock.json changed since the last install (a new devDependency: tsc would
# fail on its imports in a checkout bootstrapped before it).
if [ ! -x node_modules/.bin/bun ] || [ "$(node_modules/.bin/bun --version 2>/dev/null)" != "$want_bun" ] ||
  { [ -f package-lock.json ] && [ package-lock.json -nt node_modules/.package-lock.json ]; }; then
  log "installing npm dependencies (bun $want_bun)"
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error >&2; else npm install --no-audit --no-fund --loglevel=error >&2; fi
fi
ln -sf "$root/node_modules/.bin/bun" "$tools/bin/bun"

# --- python venv for PyPI-provided tools ------------------------------------------------
venv="$tools/venv" # made by ensure_venv (scripts/venv.sh): complete or absent, never half-made

# --- zig ---------------------------------------------------------------------------------
zig_ok() { [ -x "$1" ] && [ "$("$1" version 2>/dev/null)" = "$ZIG_VERSION" ]; }
if ! zig_ok "$tools/bin/zig"; then
  sys_zig=$(command -v zig 2>/dev/null || true)
  if [ -n "$sys_zig" ] && zig_ok "$sys_zig"; then
    ln -sf "$sys_zig" "$tools/bin/zig"
  else
    ensure_venv "$venv" || exit 1
    log "installing ziglang==$ZIG_VERSION from PyPI"
    venv_pip "$venv" install -q --disable-pip-version-check "ziglang==$ZIG_VERSION" >&2
    zig_bin=$("$venv/bin/python" -c 'import ziglang,os;print(os.path.join(os.path.dirname(ziglang.__file__),"zig"))')
    ln -sf "$zig_bin" "$tools/bin/zig"
  fi
  zig_ok "$tools/bin/zig" || { log "zig $ZIG_VERSION not usable at $tools/bin/zig"; exit 1; }
fi

# --- nvcc (CUDA 13.0) --------------------------------------------------------------------
nvcc_ok() { [ -x "$1" ] && "$1" --version 2>/dev/null | grep -q "release $CUDA_RELEASE"; }
if ! nvcc_ok "$tools/bin/nvcc"; then
  found=""
  for cand in "$(command -v nvcc 2>/dev/null || true)" /usr/local/cuda/bin/nvcc /usr/local/cuda-$CUDA_RELEASE/bin/nvcc; do
    if [ -n "$cand" ] && nvcc_ok "$cand"; then found=$cand; break; fi
  done
  if [ -z "$found" ]; then
    ensure_venv "$venv" || exit 1
    log "installing nvcc $CUDA_NVCC_VERSION from PyPI (nvidia-cuda-nvcc, -runtime, -cccl)"
    venv_pip "$venv" install -q --disable-pip-version-check \
      "nvidia-cuda-nvcc==$CUDA_NVCC_VERSION" "nvidia-cuda-runtime==$CUDA_RUNTIME_VERSION" \
      "nvidia-cuda-cccl==$CUDA_CCCL_VERSION" "nvidia-nvvm==$CUDA_NVVM_VERSION" \
      "nvidia-cuda-crt==$CUDA_CRT_VERSION" >&2
    found=$("$venv/bin/python" -c 'import nvidia,os;print(os.path.join(list(nvidia.__path__)[0],"cu13","bin","nvcc"))')
  fi
  # A wrapper, not a symlink: nvcc finds nvcc.profile (and its headers) next to its real path.
  printf '#!/bin/sh\nexec "%s" "$@"\n' "$found" > "$tools/bin/nvcc"
  chmod +x "$tools/bin/nvcc"
  nvcc_ok "$tools/bin/nvcc" || { log "nvcc for CUDA $CUDA_RELEASE not usable at $tools/bin/nvcc"; exit 1; }
fi

# --- build -------------------------------------------------------------------------------
if [ "${1:-}" = "--build" ]; then
  ( cd zig && "$tools/bin/zig" build -Doptimize=ReleaseFast -Dnvcc="$tools/bin/nvcc" ) >&2 || { log "zig build failed"; exit 1; }
fi
