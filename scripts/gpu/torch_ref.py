"""PyTorch reference for tests/gpu/bench.ts: in-place elementwise sum (a.add_(b)) bandwidth
with CUDA events, same sizes and the same 3 x bytes accounting, so moonring's mr_reduce_sum_*
kernels can be compared with what PyTorch reaches on the same GPU.

    python3 scripts/gpu/torch_ref.py [--json out.json] [--quick]
"""
import argparse
import json

import torch


def device_ms(fn, target_ms=100.0):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    one = max(start.elapsed_time(end), 0.001)
    reps = max(3, min(1000, int(target_ms / one) + 1))
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = [1 << 20, 64 << 20] if args.quick else [64 << 10, 1 << 20, 16 << 20, 256 << 20, 1 << 30]
    dtypes = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16, "f64": torch.float64,
              "i32": torch.int32, "i8": torch.int8}
    print(f"# torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    results = []
    for short, dtype in dtypes.items():
        for nbytes in sizes:
            n = nbytes // torch.empty((), dtype=dtype).element_size()
            a = torch.zeros(n, dtype=dtype, device="cuda")
            b = torch.zeros(n, dtype=dtype, device="cuda")
            ms = device_ms(lambda: a.add_(b))
            row = {"torch": f"add_ {short}", "bytes": nbytes, "us": round(ms * 1000, 2),
                   "GBps": round(3 * nbytes / ms / 1e6, 1)}
            results.append(row)
            print(json.dumps(row), flush=True)
            del a, b
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(0), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
