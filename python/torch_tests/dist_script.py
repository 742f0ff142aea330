"""A torch.distributed program written for backend "gloo" (the semantics of the Mooncake PG
backend's Python tests, plus every dtype, roots 0 and last, uneven all_to_all, async ops,
groups). Run once per rank with the torchrun variables; argv[1] is the backend name, results
go to $RESULTS_DIR/rank<r>.json. The same file runs with gloo and with moonring: the tests
compare the two, case by case."""
import datetime
import json
import os
import sys
import traceback

import torch
import torch.distributed as dist

backend = sys.argv[1] if __name__ == "__main__" else "gloo"
if backend == "moonring":
    import moonring.torch  # noqa: F401  (registers the backend; the only moonring line)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int16,
          torch.int32, torch.int64, torch.bool]
OPS = {"sum": dist.ReduceOp.SUM, "product": dist.ReduceOp.PRODUCT, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX,
       "band": dist.ReduceOp.BAND, "bor": dist.ReduceOp.BOR, "bxor": dist.ReduceOp.BXOR, "avg": dist.ReduceOp.AVG}


def name(dt):
    return str(dt).replace("torch.", "")


def values(dt, rank, n=6, op="sum", salt=0):
    """Per-rank values whose reductions are exact in every dtype."""
    g = torch.Generator().manual_seed(1000 * rank + 7 * salt + n)
    if dt == torch.bool:
        return torch.randint(0, 2, (n,), generator=g).bool()
    if dt.is_floating_point:
        if op == "product":
            pool = torch.tensor([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0])
            return pool[torch.randint(0, 6, (n,), generator=g)].to(dt)
        return (torch.randint(-32, 33, (n,), generator=g).double() / 4).to(dt)
    if dt == torch.uint8:
        return torch.randint(0, 4 if op == "product" else 60, (n,), generator=g).to(dt)
    lo, hi = (-3, 4) if op == "product" else (-40, 41)
    return torch.randint(lo, hi, (n,), generator=g).to(dt)


def out(t):
    if t is None:
        return None
    if isinstance(t, (list, tuple)):
        return [out(x) for x in t]
    t = t.detach().cpu()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.double()
    return {"dtype": name(t.dtype), "shape": list(t.shape), "values": t.tolist()}


def main():
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=60))
    last = world - 1
    results = {}
    cases = []

    def case(fn):
        cases.append(fn)
        return fn

    # --- the Mooncake PG collective tests -------------------------------------------
    def mc_allreduce(kind):
        def run():
            if kind == "sum":
                t, op = torch.tensor([rank + 1], dtype=torch.int32), dist.ReduceOp.SUM
            elif kind in ("min", "max"):
                t, op = torch.tensor([rank + 10], dtype=torch.int32), OPS[kind]
            else:
                t, op = torch.tensor([2], dtype=torch.int32), dist.ReduceOp.PRODUCT
            dist.all_reduce(t, op=op)
            return int(t.item())
        run.__name__ = f"mooncake_allreduce_{kind}"
        return run

    for k in ("sum", "min", "max", "product"):
        case(mc_allreduce(k))

    @case
    def mooncake_broadcast():
        t = torch.tensor([111 if rank == 0 else -1], dtype=torch.int32)
        dist.broadcast(t, src=0)
        return int(t.item())

    @case
    def mooncake_all_gather_into_tensor():
        g = torch.empty(world, dtype=torch.int32)
        dist.all_gather_into_tensor(g, torch.tensor([rank], dtype=torch.int32))
        return g.tolist()

    @case
    def mooncake_all_gather_list():
        local = torch.tensor([rank], dtype=torch.int32)
        g = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(g, local)
        return [int(x.item()) for x in g]

    @case
    def mooncake_reduce_scatter_sum():
        inp = torch.arange(rank * world, (rank + 1) * world, dtype=torch.int32)
        o = torch.empty(1, dtype=torch.int32)
        dist.reduce_scatter_tensor(o, inp, op=dist.ReduceOp.SUM)
        return o.tolist()

    @case
    def mooncake_barrier():
        dist.barrier()
        return "ok"

    @case
    def mooncake_gather():
        t = torch.tensor([rank], dtype=torch.int32)
        if rank == 0:
            gl = [torch.empty_like(t) for _ in range(world)]
            dist.gather(t, gl, dst=0)
            return [int(x.item()) for x in gl]
        dist.gather(t, dst=0)
        return None

    @case
    def mooncake_scatter():
        t = torch.zeros(1, dtype=torch.int32)
        if rank == 0:
            dist.scatter(t, [torch.tensor([p], dtype=torch.int32) for p in range(world)], src=0)
        else:
            dist.scatter(t, src=0)
        return int(t.item())

    @case
    def mooncake_reduce():
        t = torch.tensor([1], dtype=torch.int32)
        dist.reduce(t, dst=0, op=dist.ReduceOp.SUM)
        return int(t.item()) if rank == 0 else None

    @case
    def mooncake_async_allreduce():
        t = torch.tensor([rank + 1], dtype=torch.int32)
        w = dist.all_reduce(t, op=dist.ReduceOp.SUM, async_op=True)
        w.wait()
        return int(t.item())

    @case
    def async_two_ops_then_wait():
        a = torch.tensor([rank + 1], dtype=torch.int32)
        b = torch.tensor([(rank + 1) * 10], dtype=torch.int32)
        wa = dist.all_reduce(a, async_op=True)
        wb = dist.all_reduce(b, async_op=True)
        wa.wait()
        wb.wait()
        return [int(a.item()), int(b.item())]

    # --- the Mooncake PG p2p tests --------------------------------------------------
    @case
    def mooncake_ring_send_recv():
        s = torch.tensor([rank], dtype=torch.int64)
        r = torch.empty_like(s)
        ops = [dist.P2POp(dist.isend, s, (rank + 1) % world), dist.P2POp(dist.irecv, r, (rank - 1 + world) % world)]
        for w in dist.batch_isend_irecv(ops):
            w.wait()
        return int(r.item())

    @case
    def mooncake_direct_and_batch_send_recv():
        if rank > 1:
            return "skip"
        peer = 1 - rank
        if rank == 0:
            d = torch.tensor([12], dtype=torch.int32)
            dist.send(d, dst=peer)
            b = torch.tensor([1200], dtype=torch.int32)
            for w in dist.batch_isend_irecv([dist.P2POp(dist.isend, b, peer=peer)]):
                w.wait()
        else:
            d = torch.empty(1, dtype=torch.int32)
            dist.recv(d, src=peer)
            b = torch.empty(1, dtype=torch.int32)
            for w in dist.batch_isend_irecv([dist.P2POp(dist.irecv, b, peer=peer)]):
                w.wait()
        return [int(d.item()), int(b.item())]

    @case
    def mooncake_ordering_between_two_ranks():
        if rank >= 2:
            return "skip"
        if rank == 0:
            ts = [torch.tensor([i], dtype=torch.int64) for i in range(4)]
            for w in dist.batch_isend_irecv([dist.P2POp(dist.isend, t, peer=1) for t in ts]):
                w.wait()
            return "ok"
        ts = [torch.empty(1, dtype=torch.int64) for _ in range(4)]
        for w in dist.batch_isend_irecv([dist.P2POp(dist.irecv, t, peer=0) for t in ts]):
            w.wait()
        return [int(t.item()) for t in ts]

    @case
    def mooncake_multiple_senders_to_same_receiver():
        if rank == 0:
            s, r = torch.tensor([100], dtype=torch.int64), torch.empty(1, dtype=torch.int64)
            for w in dist.batch_isend_irecv([dist.P2POp(dist.isend, s, peer=1), dist.P2POp(dist.irecv, r, peer=1)]):
                w.wait()
            return int(r.item())
        if rank == 1:
            r0, r2 = torch.empty(1, dtype=torch.int64), torch.empty(1, dtype=torch.int64)
            s = torch.tensor([101], dtype=torch.int64)
            ops = [dist.P2POp(dist.irecv, r0, peer=0), dist.P2POp(dist.irecv, r2, peer=2), dist.P2POp(dist.isend, s, peer=0)]
            for w in dist.batch_isend_irecv(ops):
                w.wait()
            return sorted([int(r0.item()), int(r2.item())])
        if rank == 2:
            for w in dist.batch_isend_irecv([dist.P2POp(dist.isend, torch.tensor([200], dtype=torch.int64), peer=1)]):
                w.wait()
            return "ok"
        return "skip"

    @case
    def send_recv_tagged_2d():
        # rank 0 -> last with tag 5, a 2-D float64 tensor; last answers with tag 6
        if rank == 0:
            dist.send(torch.arange(6, dtype=torch.float64).reshape(2, 3) * 1.5, dst=last, tag=5)
            t = torch.empty(3, dtype=torch.int16)
            dist.recv(t, src=last, tag=6)
            return out(t)
        if rank == last:
            t = torch.empty(2, 3, dtype=torch.float64)
            dist.recv(t, src=0, tag=5)
            dist.send(torch.tensor([7, -8, 9], dtype=torch.int16), dst=0, tag=6)
            return out(t)
        return None

    @case
    def isend_irecv_overlap():
        peer = rank ^ 1
        if peer >= world:
            return "skip"
        s = torch.full((1000,), float(rank), dtype=torch.float32)
        r = torch.empty(1000, dtype=torch.float32)
        ws = [dist.isend(s, peer), dist.irecv(r, peer)]
        for w in ws:
            w.wait()
        return out(r[:3])

    # --- every dtype, every op, roots 0 and last --------------------------------------
    for dt in DTYPES:
        ops = ["sum", "product", "min", "max"] + ([] if dt.is_floating_point else ["band", "bor", "bxor"])
        for opname in ops:
            def allreduce_case(dt=dt, opname=opname):
                t = values(dt, rank, op=opname).reshape(2, 3)
                dist.all_reduce(t, op=OPS[opname])
                return out(t)
            allreduce_case.__name__ = f"all_reduce_{opname}_{name(dt)}"
            case(allreduce_case)
        for root in (0, last):
            def reduce_case(dt=dt, root=root):
                t = values(dt, rank, n=5, salt=1)
                dist.reduce(t, dst=root, op=dist.ReduceOp.MAX)
                return out(t) if rank == root else None
            reduce_case.__name__ = f"reduce_max_root{root}_{name(dt)}"
            case(reduce_case)

            def broadcast_case(dt=dt, root=root):
                t = values(dt, rank, n=7, salt=2)
                dist.broadcast(t, src=root)
                return out(t)
            broadcast_case.__name__ = f"broadcast_root{root}_{name(dt)}"
            case(broadcast_case)

            def gather_case(dt=dt, root=root):
                t = values(dt, rank, n=3, salt=3)
                gl = [torch.empty_like(t) for _ in range(world)] if rank == root else None
                dist.gather(t, gl, dst=root)
                return out(gl)
            gather_case.__name__ = f"gather_root{root}_{name(dt)}"
            case(gather_case)

            def scatter_case(dt=dt, root=root):
                t = torch.empty(4, dtype=dt)
                sl = [values(dt, 50 + p, n=4, salt=4) for p in range(world)] if rank == root else None
                dist.scatter(t, sl, src=root)
                return out(t)
            scatter_case.__name__ = f"scatter_root{root}_{name(dt)}"
            case(scatter_case)

        def all_gather_case(dt=dt):
            t = values(dt, rank, n=4, salt=5)
            gl = [torch.empty_like(t) for _ in range(world)]
            dist.all_gather(gl, t)
            return out(gl)
        all_gather_case.__name__ = f"all_gather_{name(dt)}"
        case(all_gather_case)

        def reduce_scatter_case(dt=dt):
            ins = [values(dt, 10 * rank + j, n=3, salt=6) for j in range(world)]
            o = torch.empty(3, dtype=dt)
            dist.reduce_scatter(o, ins, op=dist.ReduceOp.SUM if dt != torch.bool else dist.ReduceOp.MAX)
            return out(o)
        reduce_scatter_case.__name__ = f"reduce_scatter_{name(dt)}"
        case(reduce_scatter_case)

        def all_to_all_single_uneven(dt=dt):
            # rank r sends (j + r) % 3 + 1 rows of 2 to rank j
            in_splits = [(j + rank) % 3 + 1 for j in range(world)]
            out_splits = [(rank + j) % 3 + 1 for j in range(world)]
            inp = values(dt, rank, n=2 * sum(in_splits), salt=7).reshape(-1, 2)
            o = torch.empty(sum(out_splits), 2, dtype=dt)
            dist.all_to_all_single(o, inp, out_splits, in_splits)
            return out(o)
        all_to_all_single_uneven.__name__ = f"all_to_all_single_uneven_{name(dt)}"
        case(all_to_all_single_uneven)

    @case
    def all_to_all_list_uneven():
        ins = [torch.full((j + 1,), 10 * rank + j, dtype=torch.int32) for j in range(world)]
        outs = [torch.empty(rank + 1, dtype=torch.int32) for _ in range(world)]
        dist.all_to_all(outs, ins)
        return out(outs)

    @case
    def all_to_all_single_even():
        inp = torch.arange(world * 2, dtype=torch.float32) + 100 * rank
        o = torch.empty(world * 2, dtype=torch.float32)
        dist.all_to_all_single(o, inp)
        return out(o)

    @case
    def moonring_only_non_contiguous_all_reduce():
        # gloo reduces the view's first numel elements of storage instead (wrong values)
        base = torch.arange(12, dtype=torch.float32).reshape(3, 4) * (rank + 1)
        view = base[:, ::2]
        dist.all_reduce(view)
        return out(base)

    @case
    def new_group_first_and_last():
        g = dist.new_group([0, last])
        if rank not in (0, last):
            return None
        t = torch.tensor([rank + 1.0])
        dist.all_reduce(t, group=g)
        b = torch.tensor([rank * 1.0])
        dist.broadcast(b, src=last, group=g)
        return [t.item(), b.item(), dist.get_rank(g), dist.get_world_size(g)]

    @case
    def new_group_gather_dst_global_last():
        g = dist.new_group(list(range(1, world)))
        if rank == 0:
            return None
        t = torch.tensor([rank * 3], dtype=torch.int64)
        gl = [torch.empty_like(t) for _ in range(world - 1)] if rank == last else None
        dist.gather(t, gl, dst=last, group=g)
        return out(gl)

    for dt, n in ((torch.float32, 1 << 18), (torch.bfloat16, 1 << 18), (torch.int64, 1 << 16)):
        def large_case(dt=dt, n=n):
            # 256 KiB and more: through the rank's shared host buffers under moonring
            t = (torch.arange(n) % 7 + rank).to(dt)
            dist.all_reduce(t)
            b = (torch.arange(n) % 5 * (rank + 1)).to(dt)
            dist.broadcast(b, src=last)
            r = (torch.arange(n) % 3 + rank).to(dt)
            dist.reduce(r, dst=0, op=dist.ReduceOp.MAX)
            return [out(t[:5]), float(t.double().sum()), float(b.double().sum()), float(r.double().sum()) if rank == 0 else None]
        large_case.__name__ = f"large_{name(dt)}"
        case(large_case)

    @case
    def object_collectives():
        objs = [None]
        if rank == last:
            objs = [{"from": rank, "list": [1, 2, 3]}]
        dist.broadcast_object_list(objs, src=last)
        gathered = [None] * world
        dist.all_gather_object(gathered, ("rank", rank))
        gl = [None] * world if rank == 0 else None
        dist.gather_object({"r": rank}, gl, dst=0)
        got = [None]
        dist.scatter_object_list(got, [f"to {p}" for p in range(world)] if rank == 0 else None, src=0)
        return [objs[0], [list(x) for x in gathered], gl, got[0]]

    @case
    def send_recv_object_list():
        if rank == 0:
            dist.send_object_list([{"k": "v"}, 42], dst=last)
            return None
        if rank == last:
            objs = [None, None]
            dist.recv_object_list(objs, src=0)
            return objs
        return None

    @case
    def world_info():
        return [dist.get_rank(), dist.get_world_size(), dist.is_initialized()]

    # --- beyond gloo: checked against references, not against gloo --------------------
    @case
    def moonring_only_avg():
        t = torch.tensor([rank * 1.0, 2.0 * rank + 1])
        dist.all_reduce(t, op=dist.ReduceOp.AVG)
        return out(t)

    @case
    def moonring_only_last_op():
        if backend != "moonring":
            return None
        t = torch.ones(2)
        dist.all_reduce(t)
        info = moonring.torch.last_op()
        return [info.op, info.contributors, moonring.torch.active_ranks(), moonring.torch.failed_ranks()]

    @case
    def moonring_only_mismatch_error():
        if backend != "moonring":
            return None
        t = torch.zeros(2 if rank == 0 else 3)
        try:
            dist.all_reduce(t)
        except Exception as e:  # noqa: BLE001
            return [type(e).__name__, sorted(getattr(e, "ranks", []))]
        return "no error"

    path = os.path.join(os.environ["RESULTS_DIR"], f"rank{rank}.json")
    trace = os.environ.get("DIST_TRACE") == "1"
    for fn in cases:
        if trace:
            print("case", fn.__name__, flush=True)
        try:
            results[fn.__name__] = {"ok": fn()}
        except Exception as e:  # noqa: BLE001 - recorded, compared by the test
            results[fn.__name__] = {"error": f"{type(e).__name__}: {e}"[:300]}
            print(f"case {fn.__name__}: {traceback.format_exc()[-1500:]}", flush=True)
            # no re-aligning barrier: the errors expected (a dtype or op the backend lacks) are
            # raised on every rank alike before any data moves
    with open(path + ".tmp", "w") as f:
        json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()
    os.replace(path + ".tmp", path)  # complete only once every rank got through


if __name__ == "__main__":
    main()
