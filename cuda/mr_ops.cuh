// Element types and reduce operators for the moonring CUDA kernels.
//
// Semantics (must match the CPU reductions in zig/src/reduce.zig and the table in
// src/ops/table.json):
//  - float16 / bfloat16 are loaded into float, combined in float and rounded back to nearest
//    even. One float op on two halves (or two bf16) is exact enough that the result equals the
//    correctly rounded 16-bit result (float has >= 2p+2 significand bits).
//  - Integer sum / prod wrap around (two's complement), computed in unsigned arithmetic of at
//    least 32 bits so no C++ signed overflow (undefined behaviour) can happen.
//  - min / max on floats propagate NaN (like torch.minimum/maximum): if either input is NaN
//    the result is NaN (dst's NaN when both are).
//  - bool (one byte, nonzero = true) results are always 0 or 1. sum/prod/min/max on bool mean
//    the table's `bool_as`: sum = or, prod = and, min = and, max = or. The GPU test
//    (tests/gpu/kernels.test.ts) checks this against table.json.
//  - avg: the elementwise step is sum; the division by n happens once, at the end of a
//    collective, with the mr_scale_<dtype> kernel (in the accumulation type).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace mr {

// ---- element types: storage type <-> accumulation type ---------------------------------------
template <typename T>
struct Elem {
  using acc = T;
  static __device__ __forceinline__ acc load(T x) { return x; }
  static __device__ __forceinline__ T store(acc x) { return x; }
};
template <>
struct Elem<__half> {
  using acc = float;
  static __device__ __forceinline__ acc load(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half store(acc x) { return __float2half_rn(x); }
};
template <>
struct Elem<__nv_bfloat16> {
  using acc = float;
  static __device__ __forceinline__ acc load(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 store(acc x) { return __float2bfloat16_rn(x); }
};

// Unsigned type of at least 32 bits for wrapping integer arithmetic (u16 * u16 would promote
// to signed int and overflow).
template <int Bytes> struct Wide;
template <> struct Wide<1> { using type = uint32_t; };
template <> struct Wide<2> { using type = uint32_t; };
template <> struct Wide<4> { using type = uint32_t; };
template <> struct Wide<8> { using type = uint64_t; };

// ---- kinds (the table's dtype kinds) ----------------------------------------------------------
struct kind_float {};
struct kind_int {};
struct kind_bool {};

// ---- operators: Op<Kind>::apply(acc a, acc b) -------------------------------------------------
// Each operator is a template over the dtype kind; unsupported (op, kind) pairs are left
// undefined so an X-macro entry the table does not allow fails to compile.
template <typename K> struct op_sum;
template <typename K> struct op_prod;
template <typename K> struct op_min;
template <typename K> struct op_max;
template <typename K> struct op_avg;
template <typename K> struct op_band;
template <typename K> struct op_bor;
template <typename K> struct op_bxor;

template <>
struct op_sum<kind_float> {
  template <typename A> static __device__ __forceinline__ A apply(A a, A b) { return a + b; }
};
template <>
struct op_prod<kind_float> {
  template <typename A> static __device__ __forceinline__ A apply(A a, A b) { return a * b; }
};
template <>
struct op_min<kind_float> {
  template <typename A> static __device__ __forceinline__ A apply(A a, A b) {
    return (a != a) ? a : (b != b) ? b : (b < a ? b : a);
  }
};
template <>
struct op_max<kind_float> {
  template <typename A> static __device__ __forceinline__ A apply(A a, A b) {
    return (a != a) ? a : (b != b) ? b : (b > a ? b : a);
  }
};
// avg: the elementwise step is a sum; mr_scale_<dtype> divides by n at the end.
template <> struct op_avg<kind_float> : op_sum<kind_float> {};

template <>
struct op_sum<kind_int> {
  template <typename A> static __device__ __forceinline__ A apply(A a, A b) {
    using W = typename Wide<sizeof(A)>::type;
    return static_cast<A>(static_cast<W>(a) + static_cast<W>(b));
  }
};
template <>
struct op_prod<kind_int> {
  template <typename A> static __device__ __forceinline__ A apply(A a, A b) {
    using W = typename Wide<sizeof(A)>::type;
    return static_cast<A>(static_cast<W>(a) * static_cast<W>(b));
  }
};
template <>
struct op_min<kind_int> {
  template <typename A> static __device__ __forceinline__ A apply(A a, A b) { return b < a ? b : a; }
};
template <>
struct op_max<kind_int> {
  template <typename A> static __device__ __forceinline__ A apply(A a, A b) { return b > a ? b : a; }
};
template <>
struct op_band<kind_int> {
  template <typename A> static __device__ __forceinline__ A apply(A a, A b) { return a & b; }
};
template <>
struct op_bor<kind_int> {
  template <typename A> static __device__ __forceinline__ A apply(A a, A b) { return a | b; }
};
template <>
struct op_bxor<kind_int> {
  template <typename A> static __device__ __forceinline__ A apply(A a, A b) { return a ^ b; }
};

// bool: logical ops on nonzero-ness, result 0 or 1.
template <>
struct op_band<kind_bool> {
  template <typename A> static __device__ __forceinline__ A apply(A a, A b) {
    return static_cast<A>((a != 0) & (b != 0));
  }
};
template <>
struct op_bor<kind_bool> {
  template <typename A> static __device__ __forceinline__ A apply(A a, A b) {
    return static_cast<A>((a != 0) | (b != 0));
  }
};
template <>
struct op_bxor<kind_bool> {
  template <typename A> static __device__ __forceinline__ A apply(A a, A b) {
    return static_cast<A>((a != 0) ^ (b != 0));
  }
};
// The table's bool_as (src/ops/table.json): sum = or, prod = and, min = and, max = or.
template <> struct op_sum<kind_bool> : op_bor<kind_bool> {};
template <> struct op_prod<kind_bool> : op_band<kind_bool> {};
template <> struct op_min<kind_bool> : op_band<kind_bool> {};
template <> struct op_max<kind_bool> : op_bor<kind_bool> {};

}  // namespace mr
