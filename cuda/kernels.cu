// moonring CUDA kernels, compiled by zig/build.zig into one fatbin (sm_80, sm_90 SASS +
// compute_90 PTX) that libmoonring.so embeds and loads with cuModuleLoadData.
//
// Every kernel is `extern "C"` so zig/src/cuda/driver.zig finds it by name. All take a 1-D
// grid-stride loop, so any grid size is correct; the host picks blockDim = mr::kThreads.
//
// Instantiated from the op x dtype table (ops_table.cuh, generated from src/ops/table.json):
//   mr_reduce_<redop>_<dtype>(T* dst, const T* src, u64 count)            dst = dst op src
//   mr_reduce2_<redop>_<dtype>(T* dst, const T* a, const T* b, u64 count)  dst = a op b
//   mr_reduceN_<redop>_<dtype>(T* dst, mr::Sources srcs, u64 count)       dst = s0 op s1 op ...
//   mr_scale_<dtype>(T* dst, u64 count, double divisor)   float dtypes:    dst = dst / divisor
// and, dtype-independent:
//   mr_copy_strided(u8* dst, const u8* src, u64 block_bytes, u64 blocks,
//                   u64 dst_stride_bytes, u64 src_stride_bytes)
//
// Semantics of each op and dtype: see mr_ops.cuh.
#include <stdint.h>
#include <string.h>

#include "mr_ops.cuh"
#include "ops_table.cuh"

namespace mr {

// Threads per block the host launches with (driver.zig: threads_per_block); kernels assume it
// only through __launch_bounds__. kMinBlocksPerSm blocks stay resident per SM (<= 64 registers
// a thread; driver.zig: blocks_per_sm): 1024 threads x 4 x 16-byte loads in flight is far more
// than an SM needs to saturate HBM.
constexpr int kThreads = 512;
constexpr int kMinBlocksPerSm = 2;
constexpr int kVecBytes = 16;
constexpr int kUnroll = 4;
// Sources of one mr_reduceN_* call, passed by value (kernel parameter space).
constexpr int kSourcesMax = 8;
struct Sources {
  const void* ptr[kSourcesMax];
  uint32_t count;
};

__device__ __forceinline__ uint64_t thread_index() {
  return static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ uint64_t thread_stride() {
  return static_cast<uint64_t>(gridDim.x) * blockDim.x;
}

template <typename Op, typename T>
__device__ __forceinline__ T combine(T a, T b) {
  return Elem<T>::store(Op::apply(Elem<T>::load(a), Elem<T>::load(b)));
}

template <typename Op, typename T>
__device__ __forceinline__ uint4 combine_vec(uint4 a, uint4 b) {
  constexpr int kLanes = kVecBytes / sizeof(T);
  T as[kLanes], bs[kLanes], rs[kLanes];
  memcpy(as, &a, kVecBytes);
  memcpy(bs, &b, kVecBytes);
#pragma unroll
  for (int lane = 0; lane < kLanes; lane++) rs[lane] = combine<Op, T>(as[lane], bs[lane]);
  uint4 r;
  memcpy(&r, rs, kVecBytes);
  return r;
}

// Elements before the first 16-byte aligned one, when every pointer has the same offset
// modulo 16 (then the rest is vectorised); `count` (all scalar) otherwise.
template <typename T>
__device__ __forceinline__ uint64_t head_count(uintptr_t misaligned_or, uintptr_t dst, uint64_t count) {
  if (misaligned_or != 0) return count;
  const uintptr_t offset = dst % kVecBytes;
  const uint64_t head = offset == 0 ? 0 : (kVecBytes - offset) / sizeof(T);
  return head < count ? head : count;
}

// dst[i] = a[i] op b[i]. dst may equal a or b (in place); no other overlap.
template <typename Op, typename T>
__device__ __forceinline__ void reduce_range(T* dst, const T* a, const T* b, uint64_t count) {
  constexpr int kLanes = kVecBytes / sizeof(T);
  const uintptr_t d = reinterpret_cast<uintptr_t>(dst);
  const uintptr_t mismatch = ((d ^ reinterpret_cast<uintptr_t>(a)) | (d ^ reinterpret_cast<uintptr_t>(b))) %
                             kVecBytes;
  const uint64_t head = head_count<T>(mismatch, d, count);
  const uint64_t tid = thread_index();
  const uint64_t stride = thread_stride();
  for (uint64_t i = tid; i < head; i += stride) dst[i] = combine<Op, T>(a[i], b[i]);

  const uint64_t vecs = (count - head) / kLanes;
  uint4* dv = reinterpret_cast<uint4*>(dst + head);
  const uint4* av = reinterpret_cast<const uint4*>(a + head);
  const uint4* bv = reinterpret_cast<const uint4*>(b + head);
  uint64_t i = tid;
  for (; i + (kUnroll - 1) * stride < vecs; i += kUnroll * stride) {
    uint4 x[kUnroll], y[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
      x[u] = av[i + u * stride];
      y[u] = bv[i + u * stride];
    }
#pragma unroll
    for (int u = 0; u < kUnroll; u++) dv[i + u * stride] = combine_vec<Op, T>(x[u], y[u]);
  }
  for (; i < vecs; i += stride) dv[i] = combine_vec<Op, T>(av[i], bv[i]);

  for (uint64_t j = head + vecs * kLanes + tid; j < count; j += stride) dst[j] = combine<Op, T>(a[j], b[j]);
}

// dst[i] = s0[i] op s1[i] op ... (left to right, accumulated in the accumulation type and
// rounded once). dst may equal a source. Scalar loads: meant for a few peer buffers.
template <typename Op, typename T>
__device__ __forceinline__ void reduce_many(T* dst, const Sources& srcs, uint64_t count) {
  using Acc = typename Elem<T>::acc;
  const uint32_t n = srcs.count < kSourcesMax ? srcs.count : kSourcesMax;
  if (n == 0) return;
  for (uint64_t i = thread_index(); i < count; i += thread_stride()) {
    Acc acc = Elem<T>::load(static_cast<const T*>(srcs.ptr[0])[i]);
#pragma unroll
    for (uint32_t s = 1; s < kSourcesMax; s++) {
      if (s < n) acc = Op::apply(acc, Elem<T>::load(static_cast<const T*>(srcs.ptr[s])[i]));
    }
    dst[i] = Elem<T>::store(acc);
  }
}

template <typename T>
__device__ __forceinline__ T scale_one(T x, typename Elem<T>::acc divisor) {
  return Elem<T>::store(Elem<T>::load(x) / divisor);
}

template <typename T>
__device__ __forceinline__ void scale_range(T* dst, uint64_t count, double divisor_f64) {
  using Acc = typename Elem<T>::acc;
  constexpr int kLanes = kVecBytes / sizeof(T);
  const Acc divisor = static_cast<Acc>(divisor_f64);
  const uintptr_t d = reinterpret_cast<uintptr_t>(dst);
  const uint64_t head = head_count<T>(0, d, count);
  const uint64_t tid = thread_index();
  const uint64_t stride = thread_stride();
  for (uint64_t i = tid; i < head; i += stride) dst[i] = scale_one<T>(dst[i], divisor);
  const uint64_t vecs = (count - head) / kLanes;
  uint4* dv = reinterpret_cast<uint4*>(dst + head);
  for (uint64_t i = tid; i < vecs; i += stride) {
    T xs[kLanes];
    uint4 v = dv[i];
    memcpy(xs, &v, kVecBytes);
#pragma unroll
    for (int lane = 0; lane < kLanes; lane++) xs[lane] = scale_one<T>(xs[lane], divisor);
    memcpy(&v, xs, kVecBytes);
    dv[i] = v;
  }
  for (uint64_t j = head + vecs * kLanes + tid; j < count; j += stride) dst[j] = scale_one<T>(dst[j], divisor);
}

template <int W> struct Word;
template <> struct Word<16> { using type = uint4; };
template <> struct Word<8> { using type = uint2; };
template <> struct Word<4> { using type = uint32_t; };
template <> struct Word<2> { using type = uint16_t; };
template <> struct Word<1> { using type = uint8_t; };

// blockIdx.y strides over blocks, x over the words of one block.
template <int W>
__device__ __forceinline__ void copy_strided(uint8_t* dst, const uint8_t* src, uint64_t block_bytes, uint64_t blocks,
                                             uint64_t dst_stride, uint64_t src_stride) {
  using Word = typename Word<W>::type;
  const uint64_t words = block_bytes / W;
  for (uint64_t blk = blockIdx.y; blk < blocks; blk += gridDim.y) {
    Word* d = reinterpret_cast<Word*>(dst + blk * dst_stride);
    const Word* s = reinterpret_cast<const Word*>(src + blk * src_stride);
    for (uint64_t i = thread_index(); i < words; i += thread_stride()) d[i] = s[i];
  }
}

}  // namespace mr

#define MR_DEFINE_REDUCE(redop, redop_code, short, c_type, dtype_code, kind)                                   \
  extern "C" __global__ void __launch_bounds__(mr::kThreads, mr::kMinBlocksPerSm)                              \
      mr_reduce_##redop##_##short(c_type* dst, const c_type* src, uint64_t count) {                            \
    mr::reduce_range<mr::op_##redop<mr::kind_##kind>, c_type>(dst, dst, src, count);                           \
  }                                                                                                            \
  extern "C" __global__ void __launch_bounds__(mr::kThreads, mr::kMinBlocksPerSm)                              \
      mr_reduce2_##redop##_##short(c_type* dst, const c_type* a, const c_type* b, uint64_t count) {            \
    mr::reduce_range<mr::op_##redop<mr::kind_##kind>, c_type>(dst, a, b, count);                               \
  }                                                                                                            \
  extern "C" __global__ void __launch_bounds__(mr::kThreads, mr::kMinBlocksPerSm)                              \
      mr_reduceN_##redop##_##short(c_type* dst, mr::Sources srcs, uint64_t count) {                            \
    mr::reduce_many<mr::op_##redop<mr::kind_##kind>, c_type>(dst, srcs, count);                                \
  }
MR_FOR_EACH_REDOP_DTYPE(MR_DEFINE_REDUCE)
#undef MR_DEFINE_REDUCE

// mr_scale_<dtype> for float dtypes only (avg's final division).
#define MR_DEFINE_SCALE_float(short, c_type)                                                                   \
  extern "C" __global__ void __launch_bounds__(mr::kThreads, mr::kMinBlocksPerSm)                              \
      mr_scale_##short(c_type* dst, uint64_t count, double divisor) {                                          \
    mr::scale_range<c_type>(dst, count, divisor);                                                              \
  }
#define MR_DEFINE_SCALE_int(short, c_type)
#define MR_DEFINE_SCALE_bool(short, c_type)
#define MR_DEFINE_SCALE(short, c_type, code, kind) MR_DEFINE_SCALE_##kind(short, c_type)
MR_FOR_EACH_DTYPE(MR_DEFINE_SCALE)
#undef MR_DEFINE_SCALE

extern "C" __global__ void __launch_bounds__(mr::kThreads, mr::kMinBlocksPerSm)
    mr_copy_strided(uint8_t* dst, const uint8_t* src, uint64_t block_bytes, uint64_t blocks, uint64_t dst_stride,
                    uint64_t src_stride) {
  const uint64_t align = reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) | block_bytes |
                         dst_stride | src_stride;
  if (align % 16 == 0) {
    mr::copy_strided<16>(dst, src, block_bytes, blocks, dst_stride, src_stride);
  } else if (align % 8 == 0) {
    mr::copy_strided<8>(dst, src, block_bytes, blocks, dst_stride, src_stride);
  } else if (align % 4 == 0) {
    mr::copy_strided<4>(dst, src, block_bytes, blocks, dst_stride, src_stride);
  } else if (align % 2 == 0) {
    mr::copy_strided<2>(dst, src, block_bytes, blocks, dst_stride, src_stride);
  } else {
    mr::copy_strided<1>(dst, src, block_bytes, blocks, dst_stride, src_stride);
  }
}
