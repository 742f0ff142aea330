"""CUDA tensors through the rank's device buffers: the rank allocates a buffer on its GPU
(POST /buffers, device cuda), GET /buffers/:id/ipc gives its cudaIpcMemHandle_t, this process
opens it with the driver (cuIpcOpenMemHandle) and wraps it as a torch tensor. A collective then
copies the tensor into the buffer GPU to GPU, runs {"buffer": id} on the rank (the CUDA IPC
direct path among the ranks of a host) and copies the result back: no host round trip.
Buffers are mapped once and pooled per (dtype, shape). Used by moonring.torch for all_reduce,
reduce and broadcast of CUDA tensors; anything that fails to map falls back to host staging."""
from __future__ import annotations

import base64
import ctypes
from typing import Any, Dict, Optional

import torch

from .shm import BufferPool

POOL_PER_SHAPE = 2


class DeviceSetupError(RuntimeError):
    """The device buffer could not be made or mapped (before any collective was sent)."""
CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS = 1


class _IpcHandle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_ubyte * 64)]


def _driver() -> Any:
    cuda = ctypes.CDLL("libcuda.so.1")
    cuda.cuIpcOpenMemHandle_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), _IpcHandle, ctypes.c_uint]
    cuda.cuIpcOpenMemHandle_v2.restype = ctypes.c_int
    cuda.cuIpcCloseMemHandle.argtypes = [ctypes.c_uint64]
    cuda.cuIpcCloseMemHandle.restype = ctypes.c_int
    return cuda


class DeviceBuffer:
    """A rank's device buffer mapped into this process: `tensor` is a torch view of it."""

    def __init__(self, cuda: Any, meta: Dict[str, Any], torch_dtype: torch.dtype):
        self.cuda = cuda
        self.id: str = meta["buffer"]
        self.key = (meta["dtype"], tuple(meta["shape"]))
        self.device = int(meta["device_index"])
        torch.cuda.set_device(self.device)
        torch.empty(1, device=f"cuda:{self.device}")  # the device's primary context is current
        handle = _IpcHandle()
        ctypes.memmove(handle.reserved, base64.b64decode(meta["handle"]), 64)
        base = ctypes.c_uint64()
        rc = cuda.cuIpcOpenMemHandle_v2(ctypes.byref(base), handle, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS)
        if rc != 0:
            raise OSError(f"cuIpcOpenMemHandle of rank buffer {self.id}: CUresult {rc}")
        self.base = base.value
        nbytes = int(meta["bytes"])

        class _Raw:  # bytes; bfloat16 has no typestr, so view afterwards
            __cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "strides": None,
                                        "data": (self.base + int(meta.get("offset", 0)), False), "version": 3}

        raw = torch.as_tensor(_Raw(), device=f"cuda:{self.device}")
        self.tensor = raw.view(torch_dtype).view(tuple(meta["shape"]))

    def close(self) -> None:
        self.tensor = None  # type: ignore[assignment]
        torch.cuda.synchronize(self.device)
        self.cuda.cuIpcCloseMemHandle(self.base)


class DeviceBuffers(BufferPool):
    device = "cuda"
    per_key = POOL_PER_SHAPE

    def __init__(self, client: Any):
        super().__init__(client)
        self._cuda: Any = None
        self._broken: Optional[str] = None  # why this path is off (then: host staging)

    def usable(self) -> bool:
        return self._broken is None and torch.cuda.is_available()

    def disable(self, why: str) -> None:
        self._broken = why

    def _map(self, ipc: Dict[str, Any], torch_dtype: torch.dtype) -> DeviceBuffer:
        if self._cuda is None:
            self._cuda = _driver()
        return DeviceBuffer(self._cuda, ipc, torch_dtype)

    def run(self, coll: Any, op: str, t: torch.Tensor, name: str, params: Dict[str, Any], timeout: Any,
            stream: Any, write_back: bool) -> None:
        """op (allreduce, reduce, broadcast) on CUDA tensor `t` in a mapped device buffer of
        the rank. `stream` is the caller's current stream: the copies are ordered after its work."""
        try:
            buf = self.take(name, tuple(t.shape), t.dtype)
        except Exception as e:  # noqa: BLE001 - the caller falls back to host staging
            raise DeviceSetupError(f"rank device buffer for {name}{list(t.shape)}: {e}") from e
        try:
            with torch.cuda.stream(stream):
                buf.tensor.copy_(t)
            stream.synchronize()
            body = {"buffer": buf.id, **params, **coll._common(None, timeout)}
            doc = self.client._transport.request("POST", f"/collective/{op}", body=body,
                                                 timeout=coll._http_timeout(timeout)).json()
            self.client._record_json(op, doc, coll._group)
            if write_back and doc.get("result") is not None:
                with torch.cuda.stream(stream):
                    t.copy_(buf.tensor)
                stream.synchronize()
        finally:
            self.give(buf)
