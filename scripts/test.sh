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
echo "== bun test (one process per file)"
# One bun process per test file: a file's leftovers (a fetch still waiting on a killed rank,
# Bun's per-process cap of 256 concurrent fetches, timers) can't starve the next file, as they
# did in one shared process (the dashboard, 256-rank and netns kill tests failed only there).
failed=""
# The 1,024-rank world (about 90 s) runs in CI only: `npm run test:scale` (.ci/run); so do the
# suites across network namespaces (tests/netns and the fault suite there: `npm run test:netns`).
files=$(find tests -name '*.test.ts' | grep -v '^tests/scale/world-1024' | grep -v '^tests/netns/' | sort)
for f in $files; do
  bun test "./$f" || failed="$failed $f"
done
if [ -n "$failed" ]; then
  echo "== bun test: failed files:$failed"
  exit 1
fi
echo "== REST fuzz (schemathesis against a launched rank's /openapi.json; scripts/fuzz-rest.sh)"
sh scripts/fuzz-rest.sh
echo "== python client tests (pytest, .tools/py-venv)"
py=$(sh scripts/python-env.sh client)
"$py" -m pytest -q python/tests
