"""CUDA tensors through the moonring backend (run by test_cuda.py on a GPU machine): all_reduce,
reduce and broadcast through the rank's device buffers over CUDA IPC; all_gather and p2p staged."""
import datetime
import json
import os

import torch
import torch.distributed as dist

import moonring.torch


def main():
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    last = world - 1
    dev = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(dev)
    dist.init_process_group("moonring", timeout=datetime.timedelta(seconds=120))
    res = {}
    for dt in (torch.float32, torch.bfloat16, torch.float16, torch.int64):
        n = 1 << 20
        t = (torch.arange(n, device=dev) % 11 + rank).to(dt)
        dist.all_reduce(t)
        res[f"all_reduce_{dt}"] = float(t.double().sum())
        b = (torch.arange(n, device=dev) % 3 * (rank + 1)).to(dt)
        dist.broadcast(b, src=last)
        res[f"broadcast_{dt}"] = float(b.double().sum())
        r = (torch.arange(n, device=dev) % 5 + rank).to(dt)
        dist.reduce(r, dst=0, op=dist.ReduceOp.MAX)
        res[f"reduce_{dt}"] = float(r.double().sum()) if rank == 0 else None
        w = dist.all_reduce(torch.ones(16, device=dev, dtype=dt), async_op=True)
        w.wait()
    g = [torch.zeros(2, device=dev) for _ in range(world)]
    dist.all_gather(g, torch.full((2,), float(rank), device=dev))
    res["all_gather"] = [x.tolist() for x in g]
    if rank == 0:
        dist.send(torch.arange(4.0, device=dev), dst=last)
    elif rank == last:
        x = torch.empty(4, device=dev)
        dist.recv(x, src=0)
        res["recv"] = x.tolist()
    pool = moonring.torch.get_client()._dev
    res["device_path"] = pool is not None and pool._broken is None and bool(pool._idle)
    res["broken"] = pool._broken if pool is not None else "no pool"
    dist.destroy_process_group()
    with open(os.path.join(os.environ["RESULTS_DIR"], f"rank{rank}.json"), "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main()
