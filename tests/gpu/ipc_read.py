"""Maps a moonring device buffer into PyTorch without a copy (GET /buffers/:id/ipc) and prints
what it sees as one JSON line: {"dtype", "shape", "device", "sum", "head": [...]}.

    python3 tests/gpu/ipc_read.py http://127.0.0.1:29500 r0b1 [--add 1]

--add X adds X to the mapped tensor in place (the rank then sees the change: zero copy both
ways). The same code is the snippet of docs/gpu-interop.md. Needs PyTorch with CUDA and the
driver's libcuda.so.1 (for cuIpcOpenMemHandle; torch has no public API for a raw handle).
"""
import base64, ctypes, json, sys, urllib.request

import torch

TORCH_DTYPES = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
    "bfloat16": torch.bfloat16, "int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16,
    "int32": torch.int32, "int64": torch.int64, "bool": torch.bool,
}


class _IpcHandle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_ubyte * 64)]


def map_buffer(url, buffer_id):
    """Returns (tensor, close) for a moonring device buffer; call close() when done with it."""
    meta = json.load(urllib.request.urlopen(f"{url}/buffers/{buffer_id}/ipc"))
    device = int(meta["device_index"])
    torch.cuda.set_device(device)
    torch.empty(1, device=device)  # makes the device's primary context current (the driver API needs one)
    cuda = ctypes.CDLL("libcuda.so.1")
    cuda.cuIpcOpenMemHandle_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), _IpcHandle, ctypes.c_uint]
    cuda.cuIpcCloseMemHandle.argtypes = [ctypes.c_uint64]
    handle = _IpcHandle()
    ctypes.memmove(handle.reserved, base64.b64decode(meta["handle"]), 64)
    base = ctypes.c_uint64()
    CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS = 1
    rc = cuda.cuIpcOpenMemHandle_v2(ctypes.byref(base), handle, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS)
    if rc != 0:
        raise RuntimeError(f"cuIpcOpenMemHandle failed: CUresult {rc}")
    dtype = TORCH_DTYPES[meta["dtype"]]
    itemsize = torch.empty(0, dtype=dtype).element_size()
    numel = 1
    for d in meta["shape"]:
        numel *= d

    # __cuda_array_interface__ has no bfloat16: map raw bytes, then view them as the dtype.
    class _Raw:
        __cuda_array_interface__ = {
            "shape": (numel * itemsize,), "typestr": "|u1", "data": (base.value + int(meta["offset"]), False),
            "strides": None, "version": 3,
        }

    raw = torch.as_tensor(_Raw(), device=f"cuda:{device}")
    tensor = raw.view(dtype).view(meta["shape"])

    def close():
        torch.cuda.synchronize(device)
        cuda.cuIpcCloseMemHandle(base)

    return tensor, close


if __name__ == "__main__":
    url, buffer_id = sys.argv[1], sys.argv[2]
    add = float(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--add" else None
    t, close = map_buffer(url, buffer_id)
    out = {
        "dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape), "device": str(t.device),
        "sum": float(t.double().sum().item()), "head": [float(x) for x in t.flatten()[:8].double().tolist()],
    }
    if add is not None:
        t.add_(add)
    close()
    print(json.dumps(out))
