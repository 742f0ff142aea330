"""torch.distributed backend "moonring": importing this module registers it.

    import torch.distributed as dist
    import moonring.torch                    # registers the backend
    dist.init_process_group("moonring")      # torchrun env, or rank=/world_size=/store=

Each process talks to its own rank service (found as moonring.connect() finds it: MOONRING_URL,
MOONRING_UNIX, MOONRING_PORT, or MOONRING_BASE_PORT + RANK). CPU tensors travel in place: the
answer is read straight into the tensor's memory (shared host buffers for large ones when the
service offers them). all_reduce, reduce and broadcast of CUDA tensors run in the rank's
device buffers mapped over CUDA IPC (GPU to GPU, no host round trip); other ops stage CUDA
tensors through host memory.

Every op runs on a worker thread of its process group, in issue order (so `async_op=True` calls
return at once and ranks still match calls in order); point-to-point ops run on one worker per
(direction, peer, tag), so a batch of isend/irecv never waits on itself. What the service said
about the last op (contributors, active and failed ranks) is `last_op(group)`.
"""
from __future__ import annotations

import atexit
import datetime
import queue
import threading
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from . import client as _client
from .client import Client, Group, OpInfo
from .errors import MoonringError

BACKEND_NAME = "moonring"
MAX_TIMEOUT = datetime.timedelta(hours=24)  # the service's largest timeout_ms
P2P_LANES_LIMIT = 256  # worker threads for point-to-point streams per process group

_DTYPES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float64: "float64",
           torch.int8: "int8", torch.uint8: "uint8", torch.int16: "int16", torch.int32: "int32", torch.int64: "int64",
           torch.bool: "bool"}
_REDOPS = [(dist.ReduceOp.SUM, "sum"), (dist.ReduceOp.PRODUCT, "prod"), (dist.ReduceOp.MIN, "min"),
           (dist.ReduceOp.MAX, "max"), (dist.ReduceOp.AVG, "avg"), (dist.ReduceOp.BAND, "band"),
           (dist.ReduceOp.BOR, "bor"), (dist.ReduceOp.BXOR, "bxor")]


def _redop(op: Any) -> str:
    for torch_op, name in _REDOPS:
        if op == torch_op:
            return name
    raise ValueError(f"moonring: reduce op {op} is not supported (SUM, PRODUCT, MIN, MAX, AVG, BAND, BOR, BXOR)")


def _dtype(t: torch.Tensor) -> str:
    try:
        return _DTYPES[t.dtype]
    except KeyError:
        raise TypeError(f"moonring: tensor dtype {t.dtype} is not supported; use one of "
                        f"{', '.join(str(d) for d in _DTYPES)}") from None


def _np(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a contiguous CPU tensor (bfloat16 as int16 bit patterns)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy()
    return t.numpy()


def _copy_in(dst: torch.Tensor, block: Optional[np.ndarray]) -> None:
    """Copies a result block into a torch tensor (None: an inactive rank's slot, left as is)."""
    if block is None:
        return
    if dst.dtype == torch.bfloat16 or block.dtype.itemsize == 2 and block.dtype.kind == "V" or str(block.dtype) == "bfloat16":
        src = torch.from_numpy(np.ascontiguousarray(block).view(np.int16)).view(torch.bfloat16)
    else:
        src = torch.from_numpy(np.ascontiguousarray(block))
    with torch.no_grad():
        dst.copy_(src.reshape(dst.shape))


def _stream_of(t: torch.Tensor) -> Any:
    """The caller's current CUDA stream for a CUDA tensor (the op is ordered after its work)."""
    return torch.cuda.current_stream(t.device) if t.is_cuda else None


class _Staged:
    """A contiguous CPU tensor holding `t`'s values for the op; written back into `t` at the end
    when it is another tensor (non-contiguous, or CUDA: staged through host memory)."""

    def __init__(self, t: torch.Tensor, write_back: bool = True):
        self.t = t
        self.write_back = write_back
        if t.device.type == "cpu" and t.is_contiguous():
            self.c = t
        else:
            self.c = t.detach().to("cpu", copy=True).contiguous()

    def __enter__(self) -> torch.Tensor:
        return self.c

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None and self.write_back and self.c is not self.t:
            with torch.no_grad():
                self.t.copy_(self.c)


class _Work(dist._Work):
    """An op queued on a lane; wait() blocks until it ran and raises its error if it failed."""

    def __init__(self, fn: Callable[[], None], result: List[torch.Tensor], backend: "MoonringBackend", op: str):
        super().__init__()
        self._fn = fn
        self._result = result
        self._backend = backend
        self._op = op
        self._done = threading.Event()
        self._error: Optional[BaseException] = None
        self._future: torch.futures.Future = torch.futures.Future()

    def _run(self) -> None:
        try:
            self._fn()
            self._backend._last = self._backend._client.last_op
        except BaseException as e:  # noqa: BLE001 - handed to wait()
            self._error = e
        finally:
            self._done.set()
            if self._error is None:
                self._future.set_result(self._result)
            else:
                self._future.set_exception(self._error)

    def wait(self, timeout: Any = None) -> bool:
        seconds = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else None
        if not self._done.wait(seconds if seconds and seconds > 0 else None):
            raise TimeoutError(f"moonring: {self._op} did not complete within {timeout}")
        if self._error is not None:
            raise self._error
        return True

    def is_completed(self) -> bool:
        return self._done.is_set()

    def is_success(self) -> bool:
        return self._done.is_set() and self._error is None

    def exception(self) -> Optional[BaseException]:
        return self._error

    def result(self) -> List[torch.Tensor]:
        self.wait()
        return self._result

    def get_future(self) -> torch.futures.Future:
        return self._future


class _Lane:
    """One worker thread running queued works in order. A synchronous op (async_op=False) finding
    the lane idle runs on the caller's thread instead (no thread hand-off on the latency path);
    `_exec` keeps it from overlapping a queued work."""

    def __init__(self, name: str):
        self._queue: "queue.SimpleQueue[Optional[_Work]]" = queue.SimpleQueue()
        self._exec = threading.Lock()
        self._count_lock = threading.Lock()
        self._pending = 0  # submitted and not yet finished
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: _Work, inline: bool = False) -> None:
        with self._count_lock:
            run_here = inline and self._pending == 0
            self._pending += 1
        if run_here:
            with self._exec:
                self._finished(work)
        else:
            self._queue.put(work)

    def _finished(self, work: _Work) -> None:
        try:
            work._run()
        finally:
            with self._count_lock:
                self._pending -= 1

    def stop(self) -> None:
        """Lets queued works finish, then ends the thread (joined: none is left running)."""
        self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _loop(self) -> None:
        while True:
            work = self._queue.get()
            if work is None:
                return
            with self._exec:
                self._finished(work)


class MoonringBackend(dist.ProcessGroup):
    """A c10d process group whose ops are REST calls to this process's rank service.

    A ProcessGroup subclass, not a c10d Backend one: torch 2.11's Backend binding has no Python
    constructor ("No constructor defined!"), while a ProcessGroup that a register_backend
    creator returns becomes the group itself (torch's test_c10d_pypg.py, torchft); tested on
    torch 2.11 and 2.15. It is its own backend for every device."""

    # plain attributes: torch reads them off the backend (batch_isend_irecv: coalescing)
    supports_coalescing = False
    supports_splitting = False
    supports_shrinking = False

    def __init__(self, coll: "Client | Group", client: Client, rank: int, size: int, timeout: datetime.timedelta, name: str):
        super().__init__(rank, size)
        self._coll = coll
        self._client = client
        self._rank = rank
        self._size = size
        self._timeout = min(timeout, MAX_TIMEOUT) if timeout and timeout.total_seconds() > 0 else MAX_TIMEOUT
        self._name = name
        self._lane = _Lane(f"moonring-{name}")
        self._p2p: Dict[Any, _Lane] = {}
        self._p2p_lock = threading.Lock()
        self._last: Optional[OpInfo] = None

    # -- plumbing -----------------------------------------------------------------------
    def getBackendName(self) -> str:
        return BACKEND_NAME

    def _get_backend(self, device: Any = None) -> "MoonringBackend":
        """No c10d Backend is registered under this group: torch asking for the group's backend
        of a device (batch_isend_irecv, moonring's helpers) gets the group itself."""
        return self

    get_backend = _get_backend  # torch 2.15 also asks through the public name

    def _op_timeout(self, opts: Any) -> datetime.timedelta:
        t = getattr(opts, "timeout", None)
        if isinstance(t, datetime.timedelta) and t.total_seconds() > 0:
            return min(t, MAX_TIMEOUT)
        return self._timeout

    def _submit(self, op: str, fn: Callable[[], None], result: List[torch.Tensor], lane: Optional[_Lane] = None,
                opts: Any = None) -> _Work:
        work = _Work(fn, result, self, op)
        (lane or self._lane).submit(work, inline=opts is not None and getattr(opts, "asyncOp", True) is False)
        return work

    def _p2p_lane(self, key: Any) -> _Lane:
        with self._p2p_lock:
            lane = self._p2p.get(key)
            if lane is None:
                if len(self._p2p) >= P2P_LANES_LIMIT:
                    raise RuntimeError(f"moonring: more than {P2P_LANES_LIMIT} (peer, tag) streams in one process group")
                lane = self._p2p[key] = _Lane(f"moonring-{self._name}-{key}")
            return lane

    def shutdown(self) -> None:
        """Called by dist.destroy_process_group(): stops the workers, forgets the backend (a
        Python backend still alive at interpreter teardown aborts the process in c10d)."""
        for key, b in list(_backends.items()):
            if b is self:
                del _backends[key]
        self._lane.stop()
        with self._p2p_lock:
            for lane in self._p2p.values():
                lane.stop()
            self._p2p.clear()

    def _device(self) -> Any:
        """The rank's device buffers for CUDA tensors (one pool per client), or None."""
        from .cuda_ipc import DeviceBuffers

        dev = getattr(self._client, "_dev", None)
        if dev is None:
            dev = self._client._dev = DeviceBuffers(self._client)
        return dev if dev.usable() else None

    def _in_place(self, op: str, t: torch.Tensor, params: Dict[str, Any], tmo: Any, stream: Any, write_back: bool,
                  host: Callable[[], None]) -> None:
        """A CUDA tensor through a mapped device buffer of the rank (CUDA IPC); else `host`."""
        dev = self._device() if stream is not None else None
        if dev is not None:
            from .cuda_ipc import DeviceSetupError

            try:
                dev.run(self._coll, op, t, _dtype(t), params, tmo, stream, write_back)
                return
            except DeviceSetupError as e:
                dev.disable(str(e))
                warnings.warn(f"moonring: CUDA tensors staged through host memory: {e}")
        host()

    # -- reductions and broadcast (in place) -------------------------------------------
    def _in_place_op(self, op: str, tensors: Sequence[torch.Tensor], opts: Any, params: Dict[str, Any],
                     write_back: bool, call: Callable[[np.ndarray, str, Any], None]) -> _Work:
        """allreduce / reduce / broadcast: each tensor in place (device buffers for CUDA, else
        `call(numpy view, dtype name, timeout)` on a host copy of it)."""
        tmo = self._op_timeout(opts)
        streams = [_stream_of(t) for t in tensors]

        def run() -> None:
            for t, stream in zip(tensors, streams):
                def host(t: torch.Tensor = t) -> None:
                    with _Staged(t, write_back=write_back) as c:
                        call(_np(c), _dtype(t), tmo)
                self._in_place(op, t, params, tmo, stream, write_back, host)
        return self._submit(op, run, list(tensors), opts=opts)

    def allreduce(self, tensors: Sequence[torch.Tensor], opts: Any = None) -> _Work:
        red = _redop(opts.reduceOp)
        return self._in_place_op("allreduce", tensors, opts, {"op": red}, True,
                                 lambda a, dt, tmo: self._coll.all_reduce(a, op=red, out=a, dtype=dt, timeout=tmo))

    def allreduce_coalesced(self, tensors: Sequence[torch.Tensor], opts: Any = None) -> _Work:
        return self.allreduce(tensors, opts)

    def reduce(self, tensors: Sequence[torch.Tensor], opts: Any = None) -> _Work:
        red, root = _redop(opts.reduceOp), int(opts.rootRank)
        mine = self._rank == root
        return self._in_place_op("reduce", tensors, opts, {"op": red, "dst": root}, mine,
                                 lambda a, dt, tmo: self._coll.reduce(a, dst=root, op=red, out=a if mine else None,
                                                                      dtype=dt, timeout=tmo))

    def broadcast(self, tensors: Sequence[torch.Tensor], opts: Any = None) -> _Work:
        root = int(opts.rootRank)
        return self._in_place_op("broadcast", tensors, opts, {"src": root}, True,
                                 lambda a, dt, tmo: self._coll.broadcast(a, src=root, out=a, dtype=dt, timeout=tmo))

    # -- gathers ------------------------------------------------------------------------
    def allgather(self, output_tensors: Sequence[Sequence[torch.Tensor]], input_tensors: Sequence[torch.Tensor], opts: Any = None) -> _Work:
        tmo = self._op_timeout(opts)

        def run() -> None:
            for outs, t in zip(output_tensors, input_tensors):
                with _Staged(t, write_back=False) as c:
                    blocks = self._coll.all_gather(_np(c), dtype=_dtype(t), timeout=tmo)
                for o, b in zip(outs, blocks):
                    _copy_in(o, b)
        return self._submit("allgather", run, [o for outs in output_tensors for o in outs], opts=opts)

    def _allgather_base(self, output: torch.Tensor, input: torch.Tensor, opts: Any = None) -> _Work:
        tmo = self._op_timeout(opts)

        def run() -> None:
            with _Staged(input, write_back=False) as c:
                blocks = self._coll.all_gather(_np(c), dtype=_dtype(input), timeout=tmo)
            parts = output.view(-1).split(input.numel()) if output.is_contiguous() else None
            if parts is None:
                raise ValueError("moonring: all_gather_into_tensor needs a contiguous output tensor")
            for o, b in zip(parts, blocks):
                _copy_in(o, b)
        return self._submit("allgather", run, [output], opts=opts)

    def allgather_into_tensor_coalesced(self, outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor], opts: Any = None) -> _Work:
        works = [self._allgather_base(o, i, opts) for o, i in zip(outputs, inputs)]
        return works[-1] if works else self.barrier(opts)

    def gather(self, output_tensors: Sequence[Sequence[torch.Tensor]], input_tensors: Sequence[torch.Tensor], opts: Any = None) -> _Work:
        root, tmo = int(opts.rootRank), self._op_timeout(opts)

        def run() -> None:
            t = input_tensors[0]
            with _Staged(t, write_back=False) as c:
                blocks = self._coll.gather(_np(c), dst=root, dtype=_dtype(t), timeout=tmo)
            if self._rank == root:
                for o, b in zip(output_tensors[0], blocks):
                    _copy_in(o, b)
        return self._submit("gather", run, [o for outs in output_tensors for o in outs], opts=opts)

    def scatter(self, output_tensors: Sequence[torch.Tensor], input_tensors: Sequence[Sequence[torch.Tensor]], opts: Any = None) -> _Work:
        root, tmo = int(opts.rootRank), self._op_timeout(opts)

        def run() -> None:
            out = output_tensors[0]
            staged = [_Staged(x, write_back=False).c for x in input_tensors[0]] if self._rank == root else None
            with _Staged(out) as c:
                a = _np(c)
                self._coll.scatter([_np(x) for x in staged] if staged is not None else None, src=root, out=a,
                                   dtype=_dtype(out), timeout=tmo)
        return self._submit("scatter", run, list(output_tensors), opts=opts)

    # -- reduce_scatter / all_to_all ----------------------------------------------------
    def reduce_scatter(self, output_tensors: Sequence[torch.Tensor], input_tensors: Sequence[Sequence[torch.Tensor]], opts: Any = None) -> _Work:
        red, tmo = _redop(opts.reduceOp), self._op_timeout(opts)

        def run() -> None:
            for out, ins in zip(output_tensors, input_tensors):
                staged = [_Staged(x, write_back=False).c for x in ins]
                with _Staged(out) as c:
                    a = _np(c)
                    self._coll.reduce_scatter([_np(x) for x in staged], op=red, out=a, dtype=_dtype(out), timeout=tmo)
        return self._submit("reduce_scatter", run, list(output_tensors), opts=opts)

    def _reduce_scatter_base(self, output: torch.Tensor, input: torch.Tensor, opts: Any = None) -> _Work:
        chunks = list(input.contiguous().view(-1).split(output.numel()))
        return self.reduce_scatter([output], [chunks], opts)

    def reduce_scatter_tensor_coalesced(self, outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor], opts: Any = None) -> _Work:
        works = [self._reduce_scatter_base(o, i, opts) for o, i in zip(outputs, inputs)]
        return works[-1] if works else self.barrier(opts)

    def alltoall(self, output_tensors: Sequence[torch.Tensor], input_tensors: Sequence[torch.Tensor], opts: Any = None) -> _Work:
        tmo = self._op_timeout(opts)

        def run() -> None:
            staged = [_Staged(x, write_back=False).c for x in input_tensors]
            blocks = self._coll.all_to_all([_np(x) for x in staged], dtype=_dtype(input_tensors[0]), timeout=tmo)
            for o, b in zip(output_tensors, blocks):
                _copy_in(o, b)
        return self._submit("alltoall", run, list(output_tensors), opts=opts)

    def alltoall_base(self, output: torch.Tensor, input: torch.Tensor, output_split_sizes: Sequence[int],
                      input_split_sizes: Sequence[int], opts: Any = None) -> _Work:
        n = self._size
        ins = list(torch.split(input, list(input_split_sizes) or [input.shape[0] // n] * n, dim=0))
        outs = list(torch.split(output, list(output_split_sizes) or [output.shape[0] // n] * n, dim=0))
        return self.alltoall(outs, ins, opts)

    def allgather_coalesced(self, output_lists: Sequence[Sequence[torch.Tensor]], input_list: Sequence[torch.Tensor], opts: Any = None) -> _Work:
        return self.allgather(output_lists, input_list, opts)

    def gather_into_tensor(self, output: torch.Tensor, input: torch.Tensor, opts: Any = None) -> _Work:
        outs = list(output.view(-1).split(input.numel())) if self._rank == int(opts.rootRank) else []
        return self.gather([outs] if outs else [], [input], opts)

    # torch >= 2.10 names of the single-tensor ops
    all_gather_single = _allgather_base
    reduce_scatter_single = _reduce_scatter_base
    all_gather_single_coalesced = allgather_into_tensor_coalesced
    reduce_scatter_single_coalesced = reduce_scatter_tensor_coalesced
    all_to_all_single = alltoall_base
    gather_single = gather_into_tensor

    def barrier(self, opts: Any = None) -> _Work:
        tmo = self._op_timeout(opts)
        return self._submit("barrier", lambda: self._coll.barrier(timeout=tmo), [], opts=opts)

    # -- point to point -----------------------------------------------------------------
    @staticmethod
    def _tag(tag: int) -> Optional[str]:
        return None if int(tag) == 0 else str(int(tag))  # torch's default tag 0 = moonring's default

    def send(self, tensors: Sequence[torch.Tensor], dstRank: int, tag: int) -> _Work:
        t, dst, mtag = tensors[0], int(dstRank), self._tag(tag)

        def run() -> None:
            with _Staged(t, write_back=False) as c:
                self._coll.send(_np(c), dst=dst, tag=mtag, dtype=_dtype(t), timeout=self._timeout)
        return self._submit("send", run, list(tensors), self._p2p_lane(("send", dst, mtag)))

    def recv(self, tensors: Sequence[torch.Tensor], srcRank: int, tag: int) -> _Work:
        t, src, mtag = tensors[0], int(srcRank), self._tag(tag)

        def run() -> None:
            with _Staged(t) as c:
                got = self._coll.recv(src=src, tag=mtag, out=_np(c), timeout=self._timeout)
                if got.nbytes != c.numel() * c.element_size():
                    raise ValueError(f"moonring: recv from {src}: got {got.nbytes} bytes for a tensor of {c.numel() * c.element_size()}")
        return self._submit("recv", run, list(tensors), self._p2p_lane(("recv", src, mtag)))

    def recv_anysource(self, tensors: Sequence[torch.Tensor], tag: int) -> _Work:
        raise RuntimeError("moonring: recv without src (any source) is not supported; pass src")


# -- registration ---------------------------------------------------------------------
_world_client: Optional[Client] = None
_backends: Dict[str, MoonringBackend] = {}
_lock = threading.Lock()


def _connect_world(rank: int, size: int) -> Client:
    global _world_client
    with _lock:
        c = _world_client
        if c is None or c.rank != rank:
            c = _client.connect(rank=rank)
            if c.rank != rank:
                c.close()
                raise ValueError(f"moonring: torch rank {rank} reached the rank service of rank {c.rank} at {c.url}; "
                                 "point each process at its own service (MOONRING_URL / MOONRING_PORT / MOONRING_BASE_PORT + RANK)")
            _world_client = c
    if c.world_size != size:
        raise ValueError(f"moonring: torch world size {size} but the moonring world at {c.url} has {c.world_size} ranks")
    return c


def _create_backend(opts: Any, backend_options: Any = None) -> MoonringBackend:
    rank, size = int(opts.group_rank), int(opts.group_size)
    ranks = [int(r) for r in (opts.global_ranks_in_group or [])]
    timeout = opts.timeout if isinstance(opts.timeout, datetime.timedelta) else datetime.timedelta(minutes=30)
    group_id = str(opts.group_id)
    if not ranks:  # the default (world) group
        client = _connect_world(rank, size)
        coll: Any = client
        name = "world"
    else:
        client = _world_client or _connect_world(dist.get_rank(), dist.get_world_size())
        # torch names groups alike on every rank (same call order); the ranks make the name
        # unique across re-initialisations in one moonring world
        name = f"torch{group_id}-" + "_".join(str(r) for r in ranks)
        coll = client.new_group(ranks, name=name)
        if coll.rank != rank:
            raise ValueError(f"moonring: group {name}: torch group rank {rank}, moonring group rank {coll.rank}")
    backend = MoonringBackend(coll, client, rank, size, timeout, name)
    _backends[name if ranks else "world"] = backend
    return backend


def _backend_of(group: Any = None) -> MoonringBackend:
    pg = group if group is not None else dist.group.WORLD
    if pg is None:
        raise RuntimeError("moonring: no process group (call dist.init_process_group('moonring') first)")
    b = pg if isinstance(pg, MoonringBackend) else None
    if b is None:
        raise TypeError(f"process group {pg} does not use the moonring backend")
    return b


def get_client(group: Any = None) -> "Client | Group":
    """The numpy-level client (world) or Group behind a process group."""
    return _backend_of(group)._coll


def last_op(group: Any = None) -> Optional[OpInfo]:
    """What the service said about the group's last completed op: contributors (ranks whose data
    is in the result), active_ranks (0/1 per group rank), failed_ranks, seq, elapsed_ms."""
    return _backend_of(group)._last


def active_ranks(group: Any = None) -> List[int]:
    """Group ranks active in the last op (after a failure: the survivors)."""
    info = last_op(group)
    return [r for r, a in enumerate(info.active_ranks) if a] if info else list(range(_backend_of(group)._size))


def failed_ranks(group: Any = None) -> List[int]:
    """Group ranks found failed during the last op."""
    info = last_op(group)
    return list(info.failed_ranks) if info else []


def contributors(group: Any = None) -> List[int]:
    """Group ranks whose data is in the last op's result."""
    info = last_op(group)
    return list(info.contributors) if info else []


@atexit.register
def _forget_all() -> None:
    global _world_client
    _backends.clear()
    if _world_client is not None:
        _world_client.close()
        _world_client = None


def register() -> None:
    """Registers the backend (done on import; safe to call again)."""
    if BACKEND_NAME.upper() in getattr(dist.Backend, "_plugins", {}):
        return
    dist.Backend.register_backend(BACKEND_NAME, _create_backend, extended_api=True, devices=["cpu", "cuda"])


register()

__all__ = ["MoonringBackend", "register", "get_client", "last_op", "active_ranks", "failed_ranks", "contributors",
           "MoonringError"]
