"""Every collective of the numpy client, every dtype, roots 0 and last, against references
computed here in float64 / int64 (3 real rank services from `launch`)."""
import numpy as np
import pytest

import moonring.dtypes as mdt
from launcher import per_rank
from values import ALL, FLOATS, assert_reduced, redops_for, reference, values

CASES = [(d, op) for d in ALL for op in redops_for(d)]


@pytest.fixture(params=["json", "octet"])
def wire(request, clients):
    """Small arrays go as JSON (the service's fast path), others as octet-stream: both, here."""
    saved = [c.small_json_bytes for c in clients]
    for c in clients:
        c.small_json_bytes = 1 << 30 if request.param == "json" else -1
    yield request.param
    for c, v in zip(clients, saved):
        c.small_json_bytes = v


@pytest.mark.parametrize("dtype,redop", CASES)
def test_all_reduce(clients, wire, dtype, redop):
    xs = [values(dtype, r, redop=redop) for r in range(len(clients))]
    got = per_rank([lambda c=c, x=x: c.all_reduce(x, op=redop) for c, x in zip(clients, xs)])
    ref = reference(xs, redop, dtype)
    for g in got:
        assert_reduced(g, ref, redop, dtype)
    info = clients[0].last_op
    assert info.op == "allreduce" and info.contributors == [0, 1, 2] and info.active_ranks == [1, 1, 1]


@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("root", [0, 2])
def test_reduce(clients, wire, dtype, root):
    redop = "max" if dtype == "bool" else "sum"
    xs = [values(dtype, r, shape=(5,), salt=root) for r in range(3)]
    got = per_rank([lambda c=c, x=x: c.reduce(x, dst=root, op=redop) for c, x in zip(clients, xs)])
    for r, g in enumerate(got):
        if r == root:
            assert_reduced(g, reference(xs, redop, dtype), redop, dtype)
        else:
            assert g is None


@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("root", [0, 2])
def test_broadcast(clients, wire, dtype, root):
    xs = [values(dtype, r, shape=(3, 2), salt=5) for r in range(3)]
    got = per_rank([lambda c=c, x=x: c.broadcast(x, src=root) for c, x in zip(clients, xs)])
    for g in got:
        assert g.dtype == xs[root].dtype
        np.testing.assert_array_equal(g, xs[root])


@pytest.mark.parametrize("dtype", ALL)
def test_all_gather(clients, wire, dtype):
    xs = [values(dtype, r, shape=(4,), salt=7) for r in range(3)]
    got = per_rank([lambda c=c, x=x: c.all_gather(x) for c, x in zip(clients, xs)])
    for g in got:
        assert len(g) == 3
        for j in range(3):
            assert g[j].dtype == xs[j].dtype
            np.testing.assert_array_equal(g[j], xs[j])


@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("root", [0, 2])
def test_gather(clients, wire, dtype, root):
    xs = [values(dtype, r, shape=(2, 2), salt=9) for r in range(3)]
    got = per_rank([lambda c=c, x=x: c.gather(x, dst=root) for c, x in zip(clients, xs)])
    for r, g in enumerate(got):
        if r != root:
            assert g is None
            continue
        for j in range(3):
            np.testing.assert_array_equal(g[j], xs[j])


@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("root", [0, 2])
def test_scatter(clients, dtype, root):
    parts = [values(dtype, 10 + j, shape=(3,), salt=root) for j in range(3)]
    got = per_rank([lambda c=c: c.scatter(parts if c.rank == root else None, src=root) for c in clients])
    for r, g in enumerate(got):
        assert g.dtype == parts[r].dtype
        np.testing.assert_array_equal(g, parts[r])


@pytest.mark.parametrize("dtype", ALL)
def test_reduce_scatter(clients, dtype):
    redop = "bor" if dtype == "bool" else "sum"
    lists = [[values(dtype, 3 * r + j, shape=(2,), salt=11) for j in range(3)] for r in range(3)]
    got = per_rank([lambda c=c, l=l: c.reduce_scatter(l, op=redop) for c, l in zip(clients, lists)])
    for r, g in enumerate(got):
        assert_reduced(g, reference([lists[s][r] for s in range(3)], redop, dtype), redop, dtype)


@pytest.mark.parametrize("dtype", ALL)
def test_all_to_all_uneven(clients, dtype):
    # rank r sends j + r + 1 elements to rank j (every block a different size, one empty-free)
    lists = [[values(dtype, 5 * r + j, shape=(j + r + 1,), salt=13) for j in range(3)] for r in range(3)]
    got = per_rank([lambda c=c, l=l: c.all_to_all(l) for c, l in zip(clients, lists)])
    for r, g in enumerate(got):
        for j in range(3):
            np.testing.assert_array_equal(g[j], lists[j][r])


def test_barrier(clients):
    assert per_rank([lambda c=c: c.barrier() for c in clients]) == [None, None, None]
    assert clients[1].last_op.op == "barrier"


@pytest.mark.parametrize("dtype", ALL)
def test_send_recv(clients, wire, dtype):
    x = values(dtype, 0, shape=(2, 5), salt=17)
    y = values(dtype, 1, shape=(7,), salt=17)

    def rank0():
        clients[0].send(x, dst=2)
        return clients[0].recv(src=2)

    def rank2():
        got = clients[2].recv(src=0)
        clients[2].send(y, dst=0)
        return got

    got0, _, got2 = per_rank([rank0, lambda: None, rank2])
    np.testing.assert_array_equal(got2, x)
    np.testing.assert_array_equal(got0, y)
    assert got2.dtype == x.dtype and got0.dtype == y.dtype


def test_send_recv_tags_and_order(clients):
    # sends return once the receiver has the data: the tag-7 send runs in its own thread while
    # the receiver takes tag 7 first, then the four "a" messages in order
    def sender():
        for i in range(4):
            clients[1].send(np.array([i], np.int32), dst=0, tag="a")

    def receiver():
        tagged = clients[0].recv(src=1, tag=7)
        ordered = [int(clients[0].recv(src=1, tag="a")[0]) for _ in range(4)]
        return tagged, ordered

    (tagged, ordered), _, _ = per_rank([receiver, sender, lambda: clients[1].send(np.array([99], np.int32), dst=0, tag=7)])
    assert int(tagged[0]) == 99 and ordered == [0, 1, 2, 3]


def test_random_floats_large(clients):
    # 1 MiB per rank of random float32/float64: f64 reference within rounding
    for dtype, rtol in (("float32", 1e-6), ("float64", 1e-14)):
        xs = [np.random.default_rng(r).standard_normal(1 << 17).astype(mdt.numpy_dtype(dtype)) for r in range(3)]
        got = per_rank([lambda c=c, x=x: c.all_reduce(x) for c, x in zip(clients, xs)])
        ref = sum(x.astype(np.float64) for x in xs)
        for g in got:
            np.testing.assert_allclose(g.astype(np.float64), ref, rtol=rtol, atol=rtol * 10)


def test_scalar_and_out_in_place(clients, wire):
    xs = [np.float64(r + 0.5) for r in range(3)]
    got = per_rank([lambda c=c, x=x: c.all_reduce(np.asarray(x)) for c, x in zip(clients, xs)])
    assert all(g.shape == () and float(g) == 4.5 for g in got)
    outs = [np.zeros((2, 2), np.int32) for _ in range(3)]
    res = per_rank([lambda c=c, o=o: c.all_reduce(np.full((2, 2), c.rank + 1, np.int32), out=o)
                    for c, o in zip(clients, outs)])
    for o, g in zip(outs, res):
        assert g is o
        np.testing.assert_array_equal(o, np.full((2, 2), 6, np.int32))


def test_non_contiguous_and_big_endian(clients):
    base = [np.arange(12, dtype=">i4").reshape(3, 4) * (r + 1) for r in range(3)]
    got = per_rank([lambda c=c, b=b: c.all_reduce(b[:, ::2]) for c, b in zip(clients, base)])
    want = (np.arange(12).reshape(3, 4) * 6)[:, ::2]
    for g in got:
        assert g.dtype == np.dtype("<i4")
        np.testing.assert_array_equal(g, want)


def test_bfloat16_raw_bits(clients):
    # without ml_dtypes, bfloat16 travels as uint16 bit patterns: 1.0 is 0x3f80
    bits = np.full(3, 0x3F80, np.uint16)
    got = per_rank([lambda c=c: c.all_reduce(bits, dtype="bfloat16") for c in clients])
    for g in got:
        assert float(g.astype(np.float32)[0]) == 3.0 if mdt.BFLOAT16 is not None else g.view(np.uint16)[0] == 0x4040


def test_group(clients):
    groups = per_rank([lambda c=c: c.new_group([0, 2]) for c in clients])
    assert [g.rank for g in groups] == [0, None, 1] and groups[0].ranks == [0, 2]
    got = per_rank([lambda g=groups[0]: g.all_reduce(np.array([1.0, 2.0])), lambda: None,
                    lambda g=groups[2]: g.all_reduce(np.array([10.0, 20.0]))])
    np.testing.assert_array_equal(got[0], [11.0, 22.0])
    np.testing.assert_array_equal(got[2], [11.0, 22.0])
    # group root 1 is global rank 2; p2p takes group ranks too
    got = per_rank([lambda g=groups[0]: g.gather(np.array([5]), dst=1), lambda: None,
                    lambda g=groups[2]: g.gather(np.array([6]), dst=1)])
    assert got[0] is None and [int(a[0]) for a in got[2]] == [5, 6]
    got = per_rank([lambda g=groups[0]: g.send(np.array([3]), dst=1), lambda: None,
                    lambda g=groups[2]: g.recv(src=0)])
    assert int(got[2][0]) == 3


@pytest.mark.parametrize("dtype", ["float64", "int32", "bfloat16"])
def test_large_arrays_through_shared_buffers(clients, dtype):
    """Arrays of MOONRING_SHM_MIN_BYTES (256 KiB) and more are filled into a mapped host buffer
    of the rank and reduced in place there (only {"buffer": id} crosses HTTP)."""
    assert all(c._shm is not None and c._shm.supported() for c in clients)
    n = 1 << 17  # 1 MiB of float64, 512 KiB of int32, 256 KiB of bfloat16
    xs = [values(dtype, r, shape=(n,), salt=23) for r in range(3)]
    got = per_rank([lambda c=c, x=x: c.all_reduce(x) for c, x in zip(clients, xs)])
    for g in got:
        assert_reduced(g, reference(xs, "sum", dtype), "sum", dtype)
    assert (mdt.numpy_dtype(dtype).name if dtype != "bfloat16" else "bfloat16", (n,)) in \
        {(d, s) for (d, s) in clients[0]._shm._idle}, "the shared buffer path was not taken"
    assert clients[1].last_op.contributors == [0, 1, 2]
    # reduce: the result on dst only; broadcast from the last rank; out= written in place
    got = per_rank([lambda c=c, x=x: c.reduce(x, dst=2, op="max") for c, x in zip(clients, xs)])
    assert got[0] is None and got[1] is None
    assert_reduced(got[2], reference(xs, "max", dtype), "max", dtype)
    outs = [np.empty_like(x) for x in xs]
    got = per_rank([lambda c=c, x=x, o=o: c.broadcast(x, src=2, out=o) for c, x, o in zip(clients, xs, outs)])
    for g, o in zip(got, outs):
        assert g is o
        np.testing.assert_array_equal(o.view(np.uint8), xs[2].view(np.uint8))
