"""Shared host buffers: a rank's host buffer (POST /buffers, device cpu) lives in a /dev/shm
file the rank answers for at GET /buffers/:id/ipc ({"kind": "shm", "path", "offset", "bytes"}).
This process maps it, fills it in place, runs the collective with {"buffer": id} and reads the
result in place: the array never crosses HTTP. Used for arrays of at least MOONRING_SHM_MIN_BYTES
(default 256 KiB) when the service offers it; buffers are pooled per (dtype, shape)."""
from __future__ import annotations

import mmap
import os
import threading
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from . import dtypes as _dt
from .errors import MoonringError

MIN_BYTES_DEFAULT = 256 * 1024
POOL_PER_SHAPE = 4  # idle buffers kept per (dtype, shape); more are deleted when released


class SharedBuffer:
    """One mapped host buffer of the rank: `array` is its numpy view."""

    def __init__(self, owner: "SharedBuffers", meta: Dict[str, Any]):
        self.owner = owner
        self.id: str = meta["buffer"]
        self.dtype: str = meta["dtype"]
        self.shape: Tuple[int, ...] = tuple(meta["shape"])
        self.key = (self.dtype, self.shape)
        nbytes = int(meta["bytes"])
        offset = int(meta.get("offset", 0))
        fd = os.open(meta["path"], os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, offset + nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        raw = np.frombuffer(self._map, dtype=np.uint8, count=nbytes, offset=offset)
        self.array: np.ndarray = raw.view(_dt.numpy_dtype(self.dtype)).reshape(self.shape)

    def close(self) -> None:
        self.array = None  # type: ignore[assignment]
        try:
            self._map.close()
        except BufferError:
            pass  # a caller still holds a view: the mapping goes when it does


class BufferPool:
    """Buffers of the rank mapped into this process, pooled per (dtype, shape): `_map(ipc,
    extra)` maps one from its GET /buffers/:id/ipc answer (host: shm file; moonring.cuda_ipc:
    CUDA IPC handle)."""

    device = "cpu"
    per_key = POOL_PER_SHAPE

    def __init__(self, client: Any):
        self.client = client
        self._lock = threading.Lock()
        self._idle: Dict[Tuple[str, Tuple[int, ...]], List[Any]] = {}

    def _map(self, ipc: Dict[str, Any], extra: Any) -> Any:
        raise NotImplementedError

    def _create(self, dtype: str, shape: Tuple[int, ...], extra: Any = None) -> Any:
        t = self.client._transport
        meta = t.request("POST", "/buffers", body={"dtype": dtype, "shape": list(shape), "device": self.device}).json()
        try:
            return self._map(t.request("GET", f"/buffers/{meta['buffer']}/ipc").json(), extra)
        except BaseException:
            t.request("DELETE", f"/buffers/{meta['buffer']}")
            raise

    def _delete(self, buf: Any) -> None:
        buf.close()
        try:
            self.client._transport.request("DELETE", f"/buffers/{buf.id}")
        except MoonringError:
            pass

    def take(self, dtype: str, shape: Tuple[int, ...], extra: Any = None) -> Any:
        with self._lock:
            idle = self._idle.get((dtype, shape))
            if idle:
                return idle.pop()
        return self._create(dtype, shape, extra)

    def give(self, buf: Any) -> None:
        with self._lock:
            idle = self._idle.setdefault(buf.key, [])
            if len(idle) < self.per_key:
                idle.append(buf)
                return
        self._delete(buf)

    def close(self) -> None:
        with self._lock:
            bufs = [b for idle in self._idle.values() for b in idle]
            self._idle.clear()
        for b in bufs:
            self._delete(b)


class SharedBuffers(BufferPool):
    def __init__(self, client: Any, min_bytes: int):
        super().__init__(client)
        self.min_bytes = min_bytes
        self._supported: Optional[bool] = None

    @classmethod
    def probe(cls, client: Any) -> Optional["SharedBuffers"]:
        if os.environ.get("MOONRING_SHM", "1") == "0":
            return None
        return cls(client, int(os.environ.get("MOONRING_SHM_MIN_BYTES", MIN_BYTES_DEFAULT)))

    # -- support ------------------------------------------------------------------------
    def supported(self) -> bool:
        """Whether the rank offers mappable host buffers on this host (asked once)."""
        if self._supported is None:
            try:
                buf = self._create("uint8", (1,))
                self._delete(buf)
                self._supported = True
            except (MoonringError, OSError, KeyError, ValueError):
                self._supported = False
        return self._supported

    def wants(self, array: Any) -> bool:
        nbytes = getattr(array, "nbytes", 0)
        return nbytes >= self.min_bytes and self.supported()

    def _map(self, ipc: Dict[str, Any], extra: Any) -> SharedBuffer:
        if ipc.get("kind") != "shm" or not ipc.get("path"):
            raise ValueError(f"buffer {ipc.get('buffer')} is not a shared host buffer: {ipc}")
        return SharedBuffer(self, ipc)

    # -- in-place collectives -----------------------------------------------------------
    def run(self, coll: Any, op: str, array: Any, params: Dict[str, Any], tag: Any, timeout: Any,
            out: Optional[np.ndarray], dtype: Optional[str] = None) -> Optional[np.ndarray]:
        """allreduce / reduce / broadcast through a pooled shared buffer of the array's shape.
        `dtype` names the values when the array holds raw bits (bfloat16 as int16)."""
        name, a = _dt.as_wire(array, dtype)
        buf = self.take(name, tuple(a.shape))
        try:
            np.copyto(buf.array.view(a.dtype) if buf.array.dtype != a.dtype else buf.array, a, casting="no")
            body = {"buffer": buf.id, **params, **coll._common(tag, timeout)}
            resp = self.client._transport.request("POST", f"/collective/{op}", body=body, timeout=coll._http_timeout(timeout))
            doc = resp.json()
            self.client._record_json(op, doc, coll._group)
            if doc.get("result") is None:
                return None
            if out is not None:
                res = buf.array if buf.array.dtype == out.dtype else buf.array.view(out.dtype)
                np.copyto(out, res.reshape(out.shape), casting="no")
                return out
            return buf.array.copy()
        finally:
            self.give(buf)
