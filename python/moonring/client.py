"""The numpy client: torch.distributed-named collectives over this process's rank service.

Every call returns new arrays (pass `out=` to write a tensor result in place). Bodies are raw
little-endian bytes (application/octet-stream) for the single-tensor ops and p2p, JSON with
base64 blocks for the list ops (scatter, reduce_scatter, all_to_all); every answer is read as
raw bytes straight into the result array. Large arrays go through shared host buffers when the
service offers them (moonring.shm).
"""
from __future__ import annotations

import base64
import datetime
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from . import dtypes as _dt
from ._http import HttpTransport, Response
from .errors import InvalidRequest, MoonringError, NotReady, ServiceUnreachable, Unauthorized

Timeout = Union[None, float, int, datetime.timedelta]
DEFAULT_PORT = 29500
OCTET = "application/octet-stream"
SMALL_JSON_BYTES = int(os.environ.get("MOONRING_SMALL_JSON_BYTES", 16 * 1024))


class ReduceOp:
    """Reduce ops, named as torch.distributed.ReduceOp; values are the REST names."""

    SUM = "sum"
    PRODUCT = "prod"
    MIN = "min"
    MAX = "max"
    AVG = "avg"
    BAND = "band"
    BOR = "bor"
    BXOR = "bxor"


_REDOPS = {"sum": "sum", "prod": "prod", "product": "prod", "min": "min", "max": "max", "avg": "avg",
           "band": "band", "bor": "bor", "bxor": "bxor"}


def redop_name(op: Any) -> str:
    """The REST name of a reduce op given as a string, a ReduceOp attribute or a torch ReduceOp."""
    text = str(getattr(op, "name", op)).lower()
    text = text.rsplit(".", 1)[-1]
    if text not in _REDOPS:
        raise InvalidRequest(f"reduce op {op!r} is not supported; use one of sum, prod, min, max, avg, band, bor, bxor")
    return _REDOPS[text]


def timeout_ms(timeout: Timeout) -> Optional[int]:
    if timeout is None:
        return None
    seconds = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else float(timeout)
    if seconds <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    return max(1, int(round(seconds * 1000)))


@dataclass
class OpInfo:
    """What the service said about a completed call: `contributors` are the ranks whose data is
    in the result (a reduction is exactly the reduction over them), `active_ranks` 0/1 per slot,
    `failed_ranks` the ranks found failed during the call. Ranks of the call's group."""

    op: str
    seq: Optional[int] = None
    active_ranks: List[int] = field(default_factory=list)
    contributors: List[int] = field(default_factory=list)
    failed_ranks: List[int] = field(default_factory=list)
    elapsed_ms: Optional[float] = None
    group: Optional[str] = None


def _int_list(text: Optional[str]) -> List[int]:
    if not text:
        return []
    return [int(x) for x in text.split(",") if x.strip() != ""]


def _tensor_json(a: Any, dtype: Optional[str] = None) -> Optional[Dict[str, Any]]:
    if a is None:
        return None
    name, w = _dt.as_wire(a, dtype)
    return {"dtype": name, "shape": list(w.shape), "b64": base64.b64encode(_dt.byte_view(w)).decode("ascii")}


def _same_dtype(dt: np.dtype, name: str) -> bool:
    """Whether an array of numpy dtype `dt` holds moonring `name` values (bfloat16 may be held
    as 16-bit integer bit patterns: torch.bfloat16 tensors are viewed that way)."""
    if name == "bfloat16" and dt.kind in "iu" and dt.itemsize == 2:
        return True
    try:
        return _dt.dtype_name(dt) == name
    except TypeError:
        return False


class _Answer:
    """Receives an octet-stream answer straight into numpy memory and decodes it. With `out`
    (a C-contiguous array of the result's dtype and size) the bytes land in `out` directly."""

    def __init__(self, out: Optional[np.ndarray] = None):
        self.out = out
        self.raw: Optional[np.ndarray] = None
        self.into_out = False

    def target(self, headers: Dict[str, str], length: int) -> memoryview:
        out = self.out
        if (out is not None and headers.get("x-moonring-result", "tensor") == "tensor"
                and out.flags.c_contiguous and out.flags.writeable and out.nbytes == length
                and _same_dtype(out.dtype, headers.get("x-moonring-dtype", ""))):
            self.raw = out.reshape(-1).view(np.uint8)
            self.into_out = True
        else:
            self.raw = np.empty(length, dtype=np.uint8)
        return memoryview(self.raw)

    def decode(self, resp: Response) -> Any:
        h = resp.headers
        raw = self.raw if self.raw is not None else np.frombuffer(resp.body or b"", dtype=np.uint8).copy()
        kind = h.get("x-moonring-result", "tensor")
        if kind == "null":
            return None
        dt = _dt.numpy_dtype(h["x-moonring-dtype"]) if h.get("x-moonring-dtype") else np.dtype(np.uint8)
        if kind == "tensor":
            arr = raw.view(dt).reshape(tuple(_int_list(h.get("x-moonring-shape", ""))))
            if self.out is None:
                return arr
            if not self.into_out:
                np.copyto(self.out, arr.reshape(self.out.shape), casting="same_kind")
            return self.out
        shapes = json.loads(h.get("x-moonring-shapes", "[]"))
        blocks: List[Optional[np.ndarray]] = []
        off = 0
        for s in shapes:
            if s is None:
                blocks.append(None)
                continue
            n = int(np.prod(s, dtype=np.int64)) * dt.itemsize
            blocks.append(raw[off:off + n].view(dt).reshape(tuple(s)))
            off += n
        return blocks


class _Collectives:
    """The torch.distributed-named calls; bound to the world (Client) or a named group (Group).
    `dst`/`src` are ranks of the group."""

    _client: "Client"
    _group: Optional[str]

    # -- plumbing -----------------------------------------------------------------------
    def _common(self, tag: Any, timeout: Timeout) -> Dict[str, Any]:
        p: Dict[str, Any] = {}
        if self._group is not None:
            p["group"] = self._group
        if tag is not None:
            p["tag"] = str(tag)
        t = timeout_ms(timeout)
        if t is not None:
            p["timeout_ms"] = t
        return p

    def _http_timeout(self, timeout: Timeout) -> Optional[float]:
        t = timeout_ms(timeout)
        # the service answers 504 at timeout_ms; the socket waits a little longer than that
        return None if t is None else t / 1000.0 + 30.0

    def _octet(self, op: str, array: Any, params: Dict[str, Any], out: Optional[np.ndarray], timeout: Timeout,
               dtype: Optional[str] = None, path: Optional[str] = None) -> Any:
        name, a = _dt.as_wire(array, dtype)
        if a.nbytes <= self._client.small_json_bytes and path is None:
            # small: a JSON body takes the service's fast path (no router), measured faster
            # than an octet-stream body there; the answer is still raw bytes
            body = {"tensor": {"dtype": name, "shape": list(a.shape),
                               "b64": base64.b64encode(_dt.byte_view(a)).decode("ascii")}, **params}
            return self._json(op, body, timeout, out)
        params = {"dtype": name, "shape": ",".join(str(d) for d in a.shape), **params}
        ans = _Answer(out)
        resp = self._client._transport.request(
            "POST", path or f"/collective/{op}", body=_dt.byte_view(a), params=params,
            headers={"Content-Type": OCTET, "Accept": OCTET}, into=ans.target, timeout=self._http_timeout(timeout))
        self._client._record(op, resp, self._group)
        return ans.decode(resp)

    def _json(self, op: str, body: Dict[str, Any], timeout: Timeout, out: Optional[np.ndarray] = None) -> Any:
        ans = _Answer(out)
        resp = self._client._transport.request(
            "POST", f"/collective/{op}", body=body, headers={"Accept": OCTET}, into=ans.target,
            timeout=self._http_timeout(timeout))
        self._client._record(op, resp, self._group)
        return ans.decode(resp)

    def _shm_ok(self, array: Any) -> bool:
        return self._client._shm is not None and self._client._shm.wants(array)

    # -- collectives --------------------------------------------------------------------
    def all_reduce(self, array: Any, op: Any = ReduceOp.SUM, *, tag: Any = None, timeout: Timeout = None,
                   out: Optional[np.ndarray] = None, dtype: Optional[str] = None) -> np.ndarray:
        """The reduction of every rank's array (a new array, or `out`)."""
        if self._shm_ok(array):
            return self._client._shm.run(self, "allreduce", array, {"op": redop_name(op)}, tag, timeout, out, dtype)
        return self._octet("allreduce", array, {"op": redop_name(op), **self._common(tag, timeout)}, out, timeout, dtype)

    def reduce(self, array: Any, dst: int = 0, op: Any = ReduceOp.SUM, *, tag: Any = None, timeout: Timeout = None,
               out: Optional[np.ndarray] = None, dtype: Optional[str] = None) -> Optional[np.ndarray]:
        """The reduction on `dst`; None on the other ranks."""
        if self._shm_ok(array):
            return self._client._shm.run(self, "reduce", array, {"op": redop_name(op), "dst": int(dst)}, tag, timeout, out, dtype)
        return self._octet("reduce", array, {"op": redop_name(op), "dst": int(dst), **self._common(tag, timeout)}, out, timeout, dtype)

    def broadcast(self, array: Any, src: int = 0, *, tag: Any = None, timeout: Timeout = None,
                  out: Optional[np.ndarray] = None, dtype: Optional[str] = None) -> np.ndarray:
        """`src`'s array on every rank (others pass an array of the same dtype and shape)."""
        if self._shm_ok(array):
            return self._client._shm.run(self, "broadcast", array, {"src": int(src)}, tag, timeout, out, dtype)
        return self._octet("broadcast", array, {"src": int(src), **self._common(tag, timeout)}, out, timeout, dtype)

    def all_gather(self, array: Any, *, tag: Any = None, timeout: Timeout = None,
                   dtype: Optional[str] = None) -> List[Optional[np.ndarray]]:
        """Every rank's array, index j = rank j's (None for inactive ranks)."""
        return self._octet("allgather", array, self._common(tag, timeout), None, timeout, dtype)

    def gather(self, array: Any, dst: int = 0, *, tag: Any = None, timeout: Timeout = None,
               dtype: Optional[str] = None) -> Optional[List[Optional[np.ndarray]]]:
        """On `dst`: every rank's array (index j = rank j's); None on the other ranks."""
        return self._octet("gather", array, {"dst": int(dst), **self._common(tag, timeout)}, None, timeout, dtype)

    def scatter(self, arrays: Optional[Sequence[Any]] = None, src: int = 0, *, tag: Any = None,
                timeout: Timeout = None, out: Optional[np.ndarray] = None, dtype: Optional[str] = None) -> np.ndarray:
        """`arrays[r]` of `src` on rank r. Only `src` gives `arrays` (one per rank)."""
        body: Dict[str, Any] = {"src": int(src), **self._common(tag, timeout)}
        if arrays is not None:
            body["tensors"] = [_tensor_json(a, dtype) for a in arrays]
        return self._json("scatter", body, timeout, out)

    def reduce_scatter(self, arrays: Sequence[Any], op: Any = ReduceOp.SUM, *, tag: Any = None,
                       timeout: Timeout = None, out: Optional[np.ndarray] = None, dtype: Optional[str] = None) -> np.ndarray:
        """On rank r: the reduction over ranks of their `arrays[r]`."""
        body = {"tensors": [_tensor_json(a, dtype) for a in arrays], "op": redop_name(op), **self._common(tag, timeout)}
        return self._json("reduce_scatter", body, timeout, out)

    def all_to_all(self, arrays: Sequence[Any], *, tag: Any = None, timeout: Timeout = None,
                   dtype: Optional[str] = None) -> List[Optional[np.ndarray]]:
        """Rank r sends `arrays[j]` to rank j and gets back index j = rank j's `arrays[r]`.
        Sizes may differ (uneven splits)."""
        body = {"tensors": [_tensor_json(a, dtype) for a in arrays], **self._common(tag, timeout)}
        return self._json("alltoall", body, timeout)

    def barrier(self, *, tag: Any = None, timeout: Timeout = None) -> None:
        """Returns once every active rank of the group has entered."""
        resp = self._client._transport.request("POST", "/collective/barrier", body=self._common(tag, timeout),
                                               timeout=self._http_timeout(timeout))
        self._client._record_json("barrier", resp.json(), self._group)

    # -- point to point (ranks of the group; the service takes global ranks) ------------
    def _global(self, r: int) -> int:
        return int(r)

    def send(self, array: Any, dst: int, *, tag: Any = None, timeout: Timeout = None, dtype: Optional[str] = None) -> None:
        """Returns once `dst` has the data. Sends to one peer with one tag arrive in order."""
        name, a = _dt.as_wire(array, dtype)
        params: Dict[str, Any] = {"dtype": name, "shape": ",".join(str(d) for d in a.shape), "dst": self._global(dst)}
        if tag is not None:
            params["tag"] = str(tag)
        t = timeout_ms(timeout)
        if t is not None:
            params["timeout_ms"] = t
        self._client._transport.request("POST", "/p2p/send", body=_dt.byte_view(a), params=params,
                                        headers={"Content-Type": OCTET}, timeout=self._http_timeout(timeout))

    def recv(self, src: int, *, tag: Any = None, timeout: Timeout = None, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The next array `src` sent with `tag` (a new array, or `out`)."""
        body: Dict[str, Any] = {"src": self._global(src)}
        if tag is not None:
            body["tag"] = str(tag)
        t = timeout_ms(timeout)
        if t is not None:
            body["timeout_ms"] = t
        ans = _Answer(out)
        resp = self._client._transport.request("POST", "/p2p/recv", body=body, headers={"Accept": OCTET},
                                               into=ans.target, timeout=self._http_timeout(timeout))
        return ans.decode(resp)


class Group(_Collectives):
    """A named group (POST /groups): the same calls, ranks are group ranks (i-th smallest global)."""

    def __init__(self, client: "Client", name: str, ranks: Sequence[int], group_rank: Optional[int]):
        self._client = client
        self._group = name
        self.name = name
        self.ranks = list(ranks)
        self.rank = group_rank
        self.size = len(self.ranks)

    def _global(self, r: int) -> int:
        return self.ranks[int(r)]

    def __repr__(self) -> str:
        return f"moonring.Group({self.name!r}, ranks={self.ranks}, rank={self.rank})"


class Client(_Collectives):
    """One rank's view of its rank service (use moonring.connect())."""

    def __init__(self, url: str, *, token: Optional[str] = None, wait: float = 60.0, shm: Optional[bool] = None):
        self._client = self
        self._group = None
        self._transport = HttpTransport(url, token=token)
        self.url = self._transport.url
        self.small_json_bytes = SMALL_JSON_BYTES  # arrays up to this size go as JSON (fast path)
        self._local = threading.local()
        self._last_lock = threading.Lock()
        self._last: Optional[OpInfo] = None
        health = self.wait_ready(wait)
        if "rank" not in health:  # with a token set, /health tells strangers readiness only
            raise Unauthorized(f"rank service {self.url}: the bearer token is missing or wrong "
                               "(set MOONRING_TOKEN or pass token=)", status=401, code="unauthorized")
        self.rank: int = int(health["rank"])
        self.world_size: int = int(health["world_size"])
        self.device: str = str(health.get("device", "cpu"))
        self.pid: Optional[int] = health.get("pid")
        from .shm import SharedBuffers  # local: shm imports client names

        self._shm: Optional[SharedBuffers] = SharedBuffers.probe(self) if shm is not False else None

    # -- service ------------------------------------------------------------------------
    def health(self) -> Dict[str, Any]:
        try:
            return self._transport.request("GET", "/health").json()
        except NotReady as e:  # 503 carries the same document
            return {"ready": False, "error": e.message, **e.details}

    def wait_ready(self, wait: float = 60.0) -> Dict[str, Any]:
        """Polls GET /health until the rank is ready (rendezvous done); NotReady after `wait` s."""
        deadline = time.monotonic() + wait
        last: Any = None
        while True:
            try:
                h = self._transport.request("GET", "/health").json()
                if h.get("ready"):
                    return h
                last = h
            except (NotReady, ServiceUnreachable) as e:
                last = e
            if time.monotonic() >= deadline:
                raise NotReady(f"rank service {self.url} not ready after {wait:g} s: {last}", status=503, code="not_ready")
            time.sleep(0.05)

    def cluster(self) -> Dict[str, Any]:
        return self._transport.request("GET", "/cluster").json()

    def close(self) -> None:
        if self._shm is not None:
            self._shm.close()
        dev = getattr(self, "_dev", None)  # moonring.cuda_ipc's pool, made by moonring.torch
        if dev is not None:
            dev.close()
        self._transport.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"moonring.Client({self.url!r}, rank={self.rank}, world_size={self.world_size})"

    # -- last op ------------------------------------------------------------------------
    @property
    def last_op(self) -> Optional[OpInfo]:
        """The last collective this thread completed (falls back to the client's last)."""
        return getattr(self._local, "last", None) or self._last

    def active_ranks(self) -> List[int]:
        """Ranks active in the last op (global ranks, or group ranks for a group's op)."""
        info = self.last_op
        return [r for r, a in enumerate(info.active_ranks) if a] if info else []

    def failed_ranks(self) -> List[int]:
        info = self.last_op
        return list(info.failed_ranks) if info else []

    def _set_last(self, info: OpInfo) -> None:
        self._local.last = info
        with self._last_lock:
            self._last = info

    def _record(self, op: str, resp: Response, group: Optional[str]) -> None:
        h = resp.headers
        elapsed = h.get("x-moonring-elapsed-ms")
        seq = h.get("x-moonring-seq")
        self._set_last(OpInfo(op=h.get("x-moonring-op", op), seq=int(seq) if seq else None,
                              active_ranks=_int_list(h.get("x-moonring-active-ranks")),
                              contributors=_int_list(h.get("x-moonring-contributors")),
                              failed_ranks=_int_list(h.get("x-moonring-failed-ranks")),
                              elapsed_ms=float(elapsed) if elapsed else None, group=group))

    def _record_json(self, op: str, doc: Dict[str, Any], group: Optional[str]) -> None:
        self._set_last(OpInfo(op=doc.get("op", op), seq=doc.get("seq"), active_ranks=list(doc.get("active_ranks") or []),
                              contributors=list(doc.get("contributors") or []),
                              failed_ranks=list(doc.get("failed_ranks") or []),
                              elapsed_ms=doc.get("elapsed_ms"), group=group))

    # -- groups and membership ----------------------------------------------------------
    def new_group(self, ranks: Sequence[int], name: Optional[str] = None) -> Group:
        """Defines (or reuses) a named group of global `ranks`; every member calls it, as
        torch's new_group. The default name is derived from the ranks."""
        ranks = sorted(int(r) for r in ranks)
        if name is None:
            name = "g" + "_".join(str(r) for r in ranks)
        doc = self._transport.request("POST", "/groups", body={"name": name, "ranks": ranks}).json()
        return Group(self, doc["name"], doc["ranks"], doc.get("group_rank"))

    def activate(self, ranks: Sequence[int]) -> Dict[str, Any]:
        """Admits `awaiting` ranks (replacements, joiners) into the active world."""
        return self._transport.request("POST", "/membership/activate", body={"ranks": [int(r) for r in ranks]}).json()

    def deactivate(self, ranks: Sequence[int]) -> Dict[str, Any]:
        """Removes ranks gracefully (state `left`)."""
        return self._transport.request("POST", "/membership/deactivate", body={"ranks": [int(r) for r in ranks]}).json()


def _unix_path(path: str, rank: Optional[int]) -> str:
    """serve --unix PATH: {rank} in PATH is the rank; launch --unix PATH without {rank} puts
    rank r on PATH.r."""
    if rank is None and os.environ.get("RANK") is not None:
        rank = int(os.environ["RANK"])
    if "{rank}" in path:
        if rank is None:
            raise ValueError(f"MOONRING_UNIX={path!r} has {{rank}}: pass rank= or set RANK")
        return path.replace("{rank}", str(rank))
    if rank is not None and not os.path.exists(path) and os.path.exists(f"{path}.{rank}"):
        return f"{path}.{rank}"
    return path


def resolve_url(url: Optional[str] = None, *, rank: Optional[int] = None, unix_socket: Optional[str] = None) -> str:
    """Where this process's rank service is, in order: `url`; `unix_socket`; MOONRING_URL;
    MOONRING_UNIX (a Unix socket path as serve/launch --unix take it); else http://MOONRING_HOST (127.0.0.1):
    MOONRING_PORT, or MOONRING_BASE_PORT (launch --port; default 29500) + rank, where rank is
    `rank` or RANK (torchrun) — launch puts rank r on port base + r, serve defaults to 29500 + rank."""
    if url:
        return url
    if unix_socket:
        return f"unix://{_unix_path(unix_socket, rank)}"
    env = os.environ
    if env.get("MOONRING_URL"):
        return env["MOONRING_URL"]
    if env.get("MOONRING_UNIX"):
        return f"unix://{_unix_path(env['MOONRING_UNIX'], rank)}"
    host = env.get("MOONRING_HOST") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if env.get("MOONRING_PORT"):
        port = int(env["MOONRING_PORT"])
    else:
        if rank is None:
            rank_text = env.get("RANK")
            if rank_text is None:
                raise ValueError("moonring.connect(): no rank service given: pass a URL or rank, or set MOONRING_URL, "
                                 "MOONRING_UNIX, MOONRING_PORT or RANK (with MOONRING_BASE_PORT for launch --port)")
            rank = int(rank_text)
        port = int(env.get("MOONRING_BASE_PORT") or DEFAULT_PORT) + int(rank)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def connect(url: Optional[str] = None, *, rank: Optional[int] = None, unix_socket: Optional[str] = None,
            token: Optional[str] = None, wait: float = 60.0, shm: Optional[bool] = None) -> Client:
    """Connects to this process's rank service (see resolve_url for how it is found) and waits
    up to `wait` seconds for it to be ready. `token` defaults to MOONRING_TOKEN (sent as
    Authorization: Bearer). `shm=False` never uses shared host buffers."""
    if token is None:
        token = os.environ.get("MOONRING_TOKEN") or None
    return Client(resolve_url(url, rank=rank, unix_socket=unix_socket), token=token, wait=wait, shm=shm)
