"""dist.all_reduce through the moonring backend next to Gloo, same machine, same run:
    .tools/torch-venv/bin/python python/torch_tests/compare_gloo.py [--nproc 2] [--rounds 2]
Gloo and moonring alternate (`rounds` times each) so load changes hit both; the best median
per size is reported with `uptime` before and after."""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "tests"), HERE, os.path.join(HERE, "..")]

from launcher import World  # noqa: E402
from runner import run_ranks  # noqa: E402

SCRIPT = os.path.join(HERE, "bench_allreduce.py")


def one(backend: str, nproc: int, world=None) -> dict:
    with tempfile.TemporaryDirectory() as d:
        env = {"MOONRING_BASE_PORT": str(world.base_port), "MOONRING_TOKEN": world.token} if world else {}
        return run_ranks(SCRIPT, [backend], nproc, d, env=env, timeout_s=900)[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    uptime = lambda: subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()  # noqa: E731
    print("before:", uptime())
    best: dict = {"gloo": {}, "moonring": {}}
    with World(a.nproc) as w:
        for _ in range(a.rounds):
            for backend in ("gloo", "moonring"):
                res = one(backend, a.nproc, w if backend == "moonring" else None)
                for size, v in res.items():
                    prev = best[backend].get(size)
                    if prev is None or v["median_us"] < prev["median_us"]:
                        best[backend][size] = v
    print("after: ", uptime())
    print(f"dist.all_reduce float32, {a.nproc} ranks, best median of {a.rounds} rounds")
    print(f"{'bytes':>10} {'gloo us':>12} {'moonring us':>12} {'moonring/gloo':>14}")
    for size in sorted(best["gloo"], key=int):
        g, m = best["gloo"][size]["median_us"], best["moonring"][size]["median_us"]
        print(f"{int(size):>10} {g:>12.1f} {m:>12.1f} {m / g:>13.2f}x")
    print(json.dumps(best))


if __name__ == "__main__":
    main()
