#!/bin/sh
# Project-local Python environments, created once and reused (git-ignored, under .tools/):
#   sh scripts/python-env.sh client   -> .tools/py-venv     numpy, ml_dtypes, pytest
#   sh scripts/python-env.sh torch    -> .tools/torch-venv  the same plus torch==TORCH_VERSION
#                                     (scripts/toolchain.env; PyPI, ~3-5 GB with its nvidia-* deps,
#                                     used on CPU)
# Prints the venv's python. A venv counts as complete only once its stamp (the requirement
# list it was built from) is written last; a half-built one (killed install, full disk) is
# removed and built again; a complete one with an older list gets the new packages added. flock serialises concurrent callers (parallel CI steps, helpers).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
kind=${1:-client}
. "$root/scripts/toolchain.env"  # TORCH_VERSION
case "$kind" in
  client) venv="$root/.tools/py-venv"; reqs="numpy ml_dtypes pytest setuptools wheel" ;;
  torch)  venv="$root/.tools/torch-venv"; reqs="numpy ml_dtypes pytest setuptools wheel torch==$TORCH_VERSION" ;;
  *) echo "usage: $0 client|torch" >&2; exit 2 ;;
esac
log() { echo "[python-env] $*" >&2; }
mkdir -p "$root/.tools"
stamp="$venv/.complete"
exec 9>"$venv.lock"
flock 9
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$reqs" ] && [ -x "$venv/bin/python" ]; then
  echo "$venv/bin/python"
  exit 0
fi
if [ -f "$stamp" ] && [ -x "$venv/bin/python" ]; then
  # complete, built from another requirement list: add what is new (no re-download of torch)
  log "updating $venv ($reqs)"
  rm -f "$stamp"
else
  if [ -e "$venv" ]; then log "removing incomplete $venv"; rm -rf "$venv"; fi
  log "creating $venv ($reqs)"
  python3 -m venv "$venv" >&2
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input $reqs >&2
"$venv/bin/python" -c 'import numpy, pytest' >&2
printf '%s' "$reqs" > "$stamp"
echo "$venv/bin/python"
