# Project-local Python venvs for PyPI-provided tools, made safely (sourced by bootstrap.sh and
# other install scripts). A venv is complete or absent: it is built under a temporary name and
# renamed into place, so an interrupted first run can't leave a half-made venv that every later
# run trips over (".tools/venv/bin/pip: not found"); concurrent runs serialise on a lock file
# next to it. A venv that already works is taken as it is, symlinked or not (helper worktrees
# link .tools/venv to the main checkout's).

# venv_ok DIR: DIR runs python with pip.
venv_ok() {
  [ -x "$1/bin/python" ] && "$1/bin/python" -m pip --version >/dev/null 2>&1
}

# with_lock FILE CMD...: runs CMD holding an exclusive flock on FILE (waits up to 30 min).
with_lock() {
  _lock=$1
  shift
  if command -v flock >/dev/null 2>&1; then
    ( flock -w 1800 9 || { echo "[venv] could not lock $_lock" >&2; exit 1; }; "$@" ) 9>"$_lock"
  else
    "$@"
  fi
}

# ensure_venv DIR: makes DIR a working venv unless it is one already.
ensure_venv() {
  venv_ok "$1" && return 0
  mkdir -p "$(dirname "$1")"
  with_lock "$1.lock" _make_venv "$1"
}

_make_venv() {
  venv_ok "$1" && return 0 # another run made it while this one waited for the lock
  rm -rf "$1".tmp.* # left by interrupted runs (none can be running: we hold the lock)
  _tmp="$1.tmp.$$"
  echo "[venv] creating $1" >&2
  if ! python3 -m venv "$_tmp" >&2 || ! venv_ok "$_tmp"; then
    rm -rf "$_tmp"
    echo "[venv] python3 -m venv $_tmp failed (Debian/Ubuntu: apt-get install python3-venv)" >&2
    return 1
  fi
  rm -rf "$1" # a half-made venv from before, or a symlink to a broken one (the link only)
  mv "$_tmp" "$1"
}

# venv_pip DIR ARGS...: pip in DIR's python (never bin/pip: its #! line names the build path),
# serialised with other installs into the same venv, wherever it is linked from.
venv_pip() {
  _dir=$1
  shift
  _real=$(cd "$_dir" && pwd -P)
  with_lock "$_real.lock" "$_dir/bin/python" -m pip "$@"
}
