"""Peer benchmark on the GPU machine: NCCL (through torch.distributed) timed like nccl-tests.

    torchrun --nproc_per_node 2 bench/nccl_bench.py --min-bytes 8 --max-bytes 1073741824 \
        --ops allreduce,allgather,reduce_scatter --dtype float32 --json

Sizes double from min to max. `bytes` follows nccl-tests: allreduce/broadcast/reduce = the
tensor; allgather/reduce_scatter/alltoall = the total (n x per-rank part). busbw factors:
allreduce 2(n-1)/n; allgather, reduce_scatter, alltoall (n-1)/n; broadcast, reduce 1.
"""
import argparse, json, os, sys, time
import torch
import torch.distributed as dist

FACTORS = {
    "allreduce": lambda n: 2 * (n - 1) / n,
    "allgather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "alltoall": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
    "reduce": lambda n: 1.0,
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def run_op(op, n, total_elems, dtype, dev):
    part = max(total_elems // n, 1)
    if op == "allreduce":
        t = torch.ones(total_elems, dtype=dtype, device=dev)
        return lambda: dist.all_reduce(t)
    if op == "broadcast":
        t = torch.ones(total_elems, dtype=dtype, device=dev)
        return lambda: dist.broadcast(t, 0)
    if op == "reduce":
        t = torch.ones(total_elems, dtype=dtype, device=dev)
        return lambda: dist.reduce(t, 0)
    if op == "allgather":
        src = torch.ones(part, dtype=dtype, device=dev)
        dst = torch.empty(part * n, dtype=dtype, device=dev)
        return lambda: dist.all_gather_into_tensor(dst, src)
    if op == "reduce_scatter":
        src = torch.ones(part * n, dtype=dtype, device=dev)
        dst = torch.empty(part, dtype=dtype, device=dev)
        return lambda: dist.reduce_scatter_tensor(dst, src)
    if op == "alltoall":
        src = torch.ones(part * n, dtype=dtype, device=dev)
        dst = torch.empty(part * n, dtype=dtype, device=dev)
        return lambda: dist.all_to_all_single(dst, src)
    raise SystemExit(f"unknown op {op}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--min-bytes", type=int, default=8)
    p.add_argument("--max-bytes", type=int, default=1 << 30)
    p.add_argument("--ops", default="allreduce,allgather,reduce_scatter")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    dist.init_process_group("nccl")
    rank, n = dist.get_rank(), dist.get_world_size()
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    torch.cuda.set_device(dev)
    dtype = DTYPES[a.dtype]
    esize = torch.tensor([], dtype=dtype).element_size()
    if rank == 0 and not a.json:
        print(f"# NCCL {torch.cuda.nccl.version()} on {torch.cuda.get_device_name(dev)} x{n}")
        print(f"{'op':>15} {'size(B)':>12} {'count':>12} {'type':>9} {'time(us)':>10} {'algbw(GB/s)':>12} {'busbw(GB/s)':>12}")
    for op in a.ops.split(","):
        size = a.min_bytes
        while size <= a.max_bytes:
            elems = max(size // esize, 1)
            fn = run_op(op, n, elems, dtype, dev)
            iters = 50 if size <= (16 << 20) else 10
            for _ in range(5):
                fn()
            torch.cuda.synchronize(); dist.barrier()
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            torch.cuda.synchronize()
            us = (time.perf_counter() - start) / iters * 1e6
            algbw = size / us / 1e3
            busbw = algbw * FACTORS[op](n)
            if rank == 0:
                if a.json:
                    print(json.dumps({"peer": "nccl", "op": op, "bytes": size, "count": elems, "dtype": a.dtype,
                                      "time_us": round(us, 2), "algbw_gbps": round(algbw, 3),
                                      "busbw_gbps": round(busbw, 3), "gpu": torch.cuda.get_device_name(dev)}), flush=True)
                else:
                    print(f"{op:>15} {size:>12} {elems:>12} {a.dtype:>9} {us:>10.1f} {algbw:>12.2f} {busbw:>12.2f}", flush=True)
            size *= 2
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
