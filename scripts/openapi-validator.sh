#!/bin/sh
# Validates an OpenAPI document with openapi-spec-validator (PyPI), installed on first use into
# a git-ignored venv of its own (.tools/openapi-venv; pinned). Usage: openapi-validator.sh FILE.
# Exit 0: valid; 1: invalid (the validator's message on stderr); 3: the validator can't be installed.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
version=0.8.4
venv="$root/.tools/openapi-venv"
if [ ! -x "$venv/bin/openapi-spec-validator" ] || [ "$(cat "$venv/.version" 2>/dev/null)" != "$version" ]; then
  echo "[openapi-validator] installing openapi-spec-validator==$version into $venv" >&2
  python3 -m venv "$venv" >&2 || exit 3
  "$venv/bin/pip" install -q --disable-pip-version-check "openapi-spec-validator==$version" >&2 || exit 3
  echo "$version" > "$venv/.version"
fi
exec "$venv/bin/openapi-spec-validator" "$@"
