#!/bin/sh
# npm run test:python: the torch.distributed backend tests (python/torch_tests) on CPU, with
# torch from PyPI in the cached .tools/torch-venv (installed once; ~3-5 GB with nvidia-* deps).
# CUDA-tensor tests skip, saying so, without a GPU. Extra arguments go to pytest.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=$(sh scripts/python-env.sh torch)
echo "== python torch backend tests (pytest, .tools/torch-venv)"
"$py" -m pytest -q python/torch_tests "$@"
