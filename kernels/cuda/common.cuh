// Shared helpers for MILI's kernels: element types, 8-wide vector loads, warp reductions.
//
// Every kernel is a template over the element type `T` (float, __half, __nv_bfloat16) and is exported
// with C linkage per type as `<kernel>_<suffix>` (f32, f16, bf16) so the Python loader can find it by
// name in the cubin. Arithmetic is done in fp32; values are rounded to `T` where the torch reference
// rounds, so results match `mili.kernels.torch_ops` to within one rounding step.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace mili {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Round an fp32 value through T and back (what a torch op producing T does to its result).
template <typename T>
__device__ __forceinline__ float round_to(float x) {
  return to_float(from_float<T>(x));
}

// Eight consecutive elements of T: one 16-byte transaction for 16-bit types, two for float.
template <typename T>
struct Vec8 {
  static constexpr int kWords = sizeof(T) * 8 / 16;  // uint4 words per 8 elements
  uint4 words[kWords];

  __device__ __forceinline__ void load(const T* ptr) {
    const uint4* src = reinterpret_cast<const uint4*>(ptr);
#pragma unroll
    for (int i = 0; i < kWords; ++i) words[i] = src[i];
  }
  __device__ __forceinline__ void store(T* ptr) const {
    uint4* dst = reinterpret_cast<uint4*>(ptr);
#pragma unroll
    for (int i = 0; i < kWords; ++i) dst[i] = words[i];
  }
  __device__ __forceinline__ void to_floats(float out[8]) const {
    const T* elems = reinterpret_cast<const T*>(words);
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = to_float(elems[i]);
  }
  __device__ __forceinline__ void from_floats(const float in[8]) {
    T* elems = reinterpret_cast<T*>(words);
#pragma unroll
    for (int i = 0; i < 8; ++i) elems[i] = from_float<T>(in[i]);
  }
};

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

// Sum over the whole block; every thread gets the result. `scratch` holds one float per warp.
template <int kThreads>
__device__ __forceinline__ float block_sum(float x, float* scratch) {
  constexpr int kWarps = kThreads / 32;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  x = warp_sum(x);
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) total += scratch[w];
  __syncthreads();  // scratch may be reused right after
  return total;
}

}  // namespace mili

// Export one C-linkage entry point per element type for a kernel template `NAME##_impl`.
#define MILI_FOR_EACH_DTYPE(MACRO) \
  MACRO(float, f32)                \
  MACRO(__half, f16)               \
  MACRO(__nv_bfloat16, bf16)
