"""CUDA tensors through the moonring backend, against references (GPU machine only):
    npm run test:python -- -k cuda        (launches the ranks with --device cuda)"""
import json
import os

import pytest
import torch

from launcher import World
from runner import run_ranks

SCRIPT = os.path.join(os.path.dirname(__file__), "cuda_script.py")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: CUDA tensor tests skipped")


def test_cuda_tensors_through_device_buffers(tmp_path):
    world = max(2, min(4, torch.cuda.device_count()))
    with World(world, args=["--device", "cuda"]) as w:
        run_ranks(SCRIPT, [], world, str(tmp_path), env={"MOONRING_BASE_PORT": str(w.base_port), "MOONRING_TOKEN": w.token})
    n = 1 << 20
    k = torch.arange(n, dtype=torch.float64)
    for r in range(world):
        res = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert res["device_path"], f"rank {r}: device buffers not used: {res['broken']}"
        for dt in ("torch.float32", "torch.bfloat16", "torch.float16", "torch.int64"):
            # values below 2^8: exact in every dtype; sums of them are exact in float64
            assert res[f"all_reduce_{dt}"] == float((k % 11 * world + sum(range(world))).sum()), (r, dt)
            assert res[f"broadcast_{dt}"] == float((k % 3 * world).sum()), (r, dt)
            if r == 0:
                assert res[f"reduce_{dt}"] == float((k % 5 + world - 1).sum()), dt
        assert res["all_gather"] == [[float(j)] * 2 for j in range(world)]
    assert json.loads((tmp_path / f"rank{world - 1}.json").read_text())["recv"] == [0.0, 1.0, 2.0, 3.0]
