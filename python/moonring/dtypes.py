"""moonring dtypes <-> numpy dtypes (little-endian, C order)."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

try:  # bfloat16 arrays need ml_dtypes; without it bfloat16 travels as raw uint16 bit patterns
    import ml_dtypes as _ml_dtypes

    BFLOAT16: Optional[np.dtype] = np.dtype(_ml_dtypes.bfloat16)
except Exception:  # pragma: no cover - depends on the environment
    BFLOAT16 = None

DTYPES = ("float16", "bfloat16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")
ITEMSIZE: Dict[str, int] = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int8": 1, "uint8": 1, "int16": 2, "int32": 4, "int64": 8, "bool": 1}
FLOATING = frozenset(("float16", "bfloat16", "float32", "float64"))

_NUMPY: Dict[str, np.dtype] = {
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "bool": np.dtype("?"),
    "bfloat16": BFLOAT16 if BFLOAT16 is not None else np.dtype("<u2"),
}


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype arrays of moonring dtype `name` come back as (bfloat16 without
    ml_dtypes: uint16 bit patterns)."""
    try:
        return _NUMPY[name]
    except KeyError:
        raise TypeError(f"unknown moonring dtype {name!r}; expected one of {', '.join(DTYPES)}") from None


def dtype_name(dt: np.dtype) -> str:
    """The moonring name of a numpy dtype (TypeError for dtypes moonring does not carry)."""
    dt = np.dtype(dt)
    if BFLOAT16 is not None and dt == BFLOAT16:
        return "bfloat16"
    kind_size = (dt.kind, dt.itemsize)
    names = {("f", 2): "float16", ("f", 4): "float32", ("f", 8): "float64", ("i", 1): "int8", ("u", 1): "uint8",
             ("i", 2): "int16", ("i", 4): "int32", ("i", 8): "int64", ("b", 1): "bool"}
    if kind_size in names:
        return names[kind_size]
    raise TypeError(f"numpy dtype {dt} is not carried by moonring; use one of {', '.join(DTYPES)}"
                    + ("" if BFLOAT16 is not None else " (bfloat16: install ml_dtypes, or pass uint16 bits with dtype='bfloat16')"))


def as_wire(array, dtype: Optional[str] = None):
    """(name, C-contiguous little-endian ndarray) for `array`. `dtype` overrides the name: a
    uint16 array sent as "bfloat16" carries bfloat16 bit patterns."""
    a = np.asarray(array)
    if dtype is not None:
        if dtype not in ITEMSIZE:
            raise TypeError(f"unknown moonring dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
        if a.dtype.itemsize != ITEMSIZE[dtype]:
            a = a.astype(numpy_dtype(dtype))
        name = dtype
    else:
        name = dtype_name(a.dtype)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    # not np.ascontiguousarray: it turns a 0-d array into shape (1,)
    return name, (a if a.flags.c_contiguous else a.copy(order="C"))


def byte_view(a: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array (zero copy)."""
    return memoryview(a.reshape(-1).view(np.uint8)) if a.size else memoryview(b"")
