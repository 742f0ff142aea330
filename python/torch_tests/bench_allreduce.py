"""dist.all_reduce timings for one backend (argv[1]); run by compare_gloo.py as N processes.
Rank 0 writes {bytes: {"median_us", "min_us", "iters"}} to $RESULTS_DIR/rank0.json."""
import datetime
import json
import os
import sys
import time

import torch
import torch.distributed as dist

backend = sys.argv[1]
if backend == "moonring":
    import moonring.torch  # noqa: F401

SIZES = [int(s) for s in os.environ.get("BENCH_SIZES", f"8,{1 << 20},{64 << 20}").split(",")]


def iters_for(nbytes: int) -> int:
    return 300 if nbytes <= 4096 else 40 if nbytes <= (4 << 20) else 8


def main() -> None:
    rank = int(os.environ["RANK"])
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=120))
    out = {}
    for nbytes in SIZES:
        t = torch.ones(max(1, nbytes // 4), dtype=torch.float32)
        for _ in range(3):  # warm-up (connections, buffers)
            dist.all_reduce(t)
        n = iters_for(nbytes)
        times = []
        for _ in range(n):
            t.fill_(1.0)
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(t)
            times.append(time.perf_counter() - start)
        assert float(t[0]) == dist.get_world_size(), float(t[0])
        times.sort()
        out[nbytes] = {"median_us": times[len(times) // 2] * 1e6, "min_us": times[0] * 1e6, "iters": n}
    dist.destroy_process_group()
    path = os.path.join(os.environ["RESULTS_DIR"], f"rank{rank}.json")
    with open(path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
