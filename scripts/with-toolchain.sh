#!/bin/sh
# Runs a command with the bootstrapped toolchain (.tools/bin: bun, zig, nvcc) first on PATH.
root=$(cd "$(dirname "$0")/.." && pwd)
PATH="$root/.tools/bin:$root/node_modules/.bin:$PATH"
export PATH
exec "$@"
