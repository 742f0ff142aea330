#!/bin/sh
# Standing REST fuzzing (issue 18): schemathesis (PyPI, pinned) in a git-ignored venv of its own
# (.tools/fuzz-venv, made once), run by tests/fuzz/rest-fuzz.ts against a launched rank's
# /openapi.json with a fixed seed and a bounded number of cases. Run by scripts/test.sh
# (npm test). Exit 0: no finding; 1: findings (listed); 3: schemathesis can't be installed.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/venv.sh
version=4.32.5
venv="$root/.tools/fuzz-venv"
if [ "$(cat "$venv/.schemathesis" 2>/dev/null)" != "$version" ] || [ ! -x "$venv/bin/schemathesis" ]; then
  echo "[fuzz-rest] installing schemathesis==$version into $venv" >&2
  ensure_venv "$venv" || exit 3
  venv_pip "$venv" install -q --disable-pip-version-check "schemathesis==$version" >&2 || exit 3
  echo "$version" > "$venv/.schemathesis"
fi
exec bun tests/fuzz/rest-fuzz.ts "$venv/bin/schemathesis" "$@"
