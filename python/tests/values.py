"""Per-rank inputs whose reductions are exact in every dtype (so f64 references compare exactly)."""
import numpy as np

import moonring.dtypes as mdt

FLOATS = ["float16", "bfloat16", "float32", "float64"]
INTS = ["int8", "uint8", "int16", "int32", "int64"]
ALL = FLOATS + INTS + ["bool"]


def values(dtype: str, rank: int, shape=(2, 3), redop: str = "sum", salt: int = 0) -> np.ndarray:
    rng = np.random.default_rng(1000 * rank + 17 * salt + len(dtype))
    n = int(np.prod(shape))
    if dtype == "bool":
        v = rng.integers(0, 2, n).astype(bool)
    elif dtype in FLOATS:
        pool = np.array([-2, -1, -0.5, 0.5, 1, 2]) if redop == "prod" else np.arange(-32, 33) / 4
        v = rng.choice(pool, n)
    elif dtype == "uint8":
        v = rng.integers(0, 4 if redop == "prod" else 60, n)
    else:
        v = rng.integers(-3, 4, n) if redop == "prod" else rng.integers(-40, 41, n)
    return v.astype(mdt.numpy_dtype(dtype)).reshape(shape)


def f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).astype(np.float64) if a.dtype != np.int64 and a.dtype != bool else np.asarray(a)


def reference(arrays, redop: str, dtype: str) -> np.ndarray:
    """The reduction in float64 (floats) or int64 (ints, exact) or bool."""
    if dtype == "bool":
        stack = np.stack([a.astype(bool) for a in arrays])
        if redop in ("sum", "max", "bor"):
            return np.logical_or.reduce(stack)
        if redop in ("prod", "min", "band"):
            return np.logical_and.reduce(stack)
        if redop == "bxor":
            return np.logical_xor.reduce(stack)
    wide = np.float64 if dtype in FLOATS else np.int64
    stack = np.stack([a.astype(wide) for a in arrays])
    fn = {"sum": np.sum, "prod": np.prod, "min": np.min, "max": np.max,
          "avg": lambda s, axis: np.sum(s, axis=axis) / len(arrays),
          "band": lambda s, axis: np.bitwise_and.reduce(s, axis=axis),
          "bor": lambda s, axis: np.bitwise_or.reduce(s, axis=axis),
          "bxor": lambda s, axis: np.bitwise_xor.reduce(s, axis=axis)}[redop]
    return fn(stack, axis=0)


def redops_for(dtype: str):
    if dtype in FLOATS:
        return ["sum", "prod", "min", "max", "avg"]
    return ["sum", "prod", "min", "max", "band", "bor", "bxor"]


def assert_reduced(got: np.ndarray, ref: np.ndarray, redop: str, dtype: str) -> None:
    assert got.dtype == mdt.numpy_dtype(dtype), (got.dtype, dtype)
    assert got.shape == ref.shape
    if redop == "avg":  # sum/N is not exact: within the dtype's rounding
        tol = {"float16": 1e-3, "bfloat16": 8e-3, "float32": 1e-6, "float64": 1e-13}[dtype]
        np.testing.assert_allclose(got.astype(np.float64), ref, rtol=tol, atol=tol)
    elif dtype == "bool":
        np.testing.assert_array_equal(got, ref)
    elif dtype in FLOATS:
        np.testing.assert_array_equal(got.astype(np.float64), ref)
    else:
        np.testing.assert_array_equal(got.astype(np.int64), ref)
