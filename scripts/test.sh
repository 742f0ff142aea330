#!/bin/sh
# npm test: type check, Zig unit + multi-rank tests, then bun tests. Runs after `bootstrap.sh --build`.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
echo "== tsc --noEmit"
tsc -p . --noEmit
sh scripts/setup-verbs.sh
echo "== zig build test"
( cd zig && zig build test -Doptimize=ReleaseSafe -Dnvcc="$root/.tools/bin/nvcc" --summary all )
echo "== bun test"
bun test
echo "== REST fuzz (schemathesis against a launched rank's /openapi.json; scripts/fuzz-rest.sh)"
sh scripts/fuzz-rest.sh
echo "== python client tests (pytest, .tools/py-venv)"
py=$(sh scripts/python-env.sh client)
"$py" -m pytest -q python/tests
