// Memory-bound per-token kernels: RMSNorm (+ fused residual add), SiLU-and-mul, rotary embedding, and
// the scatter of new K/V into the paged cache. Layouts: see kernels/backend.py.
//
// All of them move data 8 elements (16 bytes for 16-bit types) at a time; the Python launcher checks
// that the sizes are multiples of 8 and the pointers 16-byte aligned.
#include "common.cuh"

namespace mili {

constexpr int kElementwiseThreads = 256;

// One warp per row of `hidden` elements. out = weight * round(s * rsqrt(mean(s^2) + eps)), where
// s = round(x + residual) when `residual` is given (and is also written to `residual_out`), else x.
template <typename T>
__device__ void rms_norm_impl(T* __restrict__ out, T* __restrict__ residual_out, const T* __restrict__ x,
                              const T* __restrict__ residual, const T* __restrict__ weight, int num_rows,
                              int hidden, float eps) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * (kElementwiseThreads / 32) + threadIdx.x / 32;
  if (row >= num_rows) return;
  const size_t base = static_cast<size_t>(row) * hidden;
  const T* source = residual != nullptr ? residual_out + base : x + base;

  float sum_sq = 0.f;
  for (int col = lane * 8; col < hidden; col += 32 * 8) {
    Vec8<T> xv;
    xv.load(x + base + col);
    float s[8];
    xv.to_floats(s);
    if (residual != nullptr) {
      Vec8<T> rv;
      rv.load(residual + base + col);
      float r[8];
      rv.to_floats(r);
#pragma unroll
      for (int i = 0; i < 8; ++i) s[i] = round_to<T>(s[i] + r[i]);
      Vec8<T> sv;
      sv.from_floats(s);
      sv.store(residual_out + base + col);
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) sum_sq += s[i] * s[i];
  }
  const float inv_rms = rsqrtf(warp_sum(sum_sq) / static_cast<float>(hidden) + eps);

  // Second pass re-reads s (this lane's own writes, or x) from L1/L2 rather than holding a whole row.
  for (int col = lane * 8; col < hidden; col += 32 * 8) {
    Vec8<T> sv, wv;
    sv.load(source + col);
    wv.load(weight + col);
    float s[8], w[8];
    sv.to_floats(s);
    wv.to_floats(w);
#pragma unroll
    for (int i = 0; i < 8; ++i) s[i] = w[i] * round_to<T>(s[i] * inv_rms);
    Vec8<T> ov;
    ov.from_floats(s);
    ov.store(out + base + col);
  }
}

// x [rows, 2I] -> out [rows, I] = round(silu(gate)) * up, gate = x[:, :I], up = x[:, I:].
template <typename T>
__device__ void silu_and_mul_impl(T* __restrict__ out, const T* __restrict__ x, int inner) {
  const int row = blockIdx.x;  // rows on x: grid.y is limited to 65535
  const int col = (blockIdx.y * kElementwiseThreads + threadIdx.x) * 8;
  if (col >= inner) return;
  const T* gate_row = x + static_cast<size_t>(row) * 2 * inner;
  Vec8<T> gv, uv;
  gv.load(gate_row + col);
  uv.load(gate_row + inner + col);
  float g[8], u[8];
  gv.to_floats(g);
  uv.to_floats(u);
#pragma unroll
  for (int i = 0; i < 8; ++i) g[i] = round_to<T>(g[i] / (1.f + __expf(-g[i]))) * u[i];
  Vec8<T> ov;
  ov.from_floats(g);
  ov.store(out + static_cast<size_t>(row) * inner + col);
}

// Rotate one head vector in place (NeoX style): the first and second halves pair up element-wise.
template <typename T>
__device__ __forceinline__ void rotate_head_chunk(T* head, const float* cos_sin, int half, int col) {
  Vec8<T> v1, v2;
  v1.load(head + col);
  v2.load(head + half + col);
  float x1[8], x2[8], c[8], s[8];
  v1.to_floats(x1);
  v2.to_floats(x2);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    c[i] = cos_sin[col + i];
    s[i] = cos_sin[half + col + i];
  }
  float r1[8], r2[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    r1[i] = x1[i] * c[i] - x2[i] * s[i];
    r2[i] = x2[i] * c[i] + x1[i] * s[i];
  }
  v1.from_floats(r1);
  v2.from_floats(r2);
  v1.store(head + col);
  v2.store(head + half + col);
}

// One block per token: q [T, Hq, D] and k [T, Hk, D] (token strides given; heads contiguous) rotated
// by cos_sin_cache[positions[t]] (float32 [max_positions, D], cos then sin).
template <typename T>
__device__ void rotary_embedding_impl(T* __restrict__ q, T* __restrict__ k,
                                      const int64_t* __restrict__ positions,
                                      const float* __restrict__ cos_sin_cache, int64_t q_token_stride,
                                      int64_t k_token_stride, int num_q_heads, int num_kv_heads,
                                      int head_dim) {
  const int token = blockIdx.x;
  const int half = head_dim / 2;
  const int chunks_per_head = half / 8;
  const float* cos_sin = cos_sin_cache + positions[token] * head_dim;
  const int total = (num_q_heads + num_kv_heads) * chunks_per_head;
  for (int i = threadIdx.x; i < total; i += kElementwiseThreads) {
    const int head = i / chunks_per_head;
    const int col = (i % chunks_per_head) * 8;
    T* head_ptr = head < num_q_heads
                      ? q + token * q_token_stride + static_cast<int64_t>(head) * head_dim
                      : k + token * k_token_stride + static_cast<int64_t>(head - num_q_heads) * head_dim;
    rotate_head_chunk(head_ptr, cos_sin, half, col);
  }
}

// One block per token: copy k[t], v[t] ([Hk, D], token strides given) to slot slot_mapping[t] of the
// paged caches [num_blocks, block_size, Hk, D] (a slot indexes the flattened first two dims).
// Negative slots are padding and are skipped.
template <typename T>
__device__ void store_kv_impl(T* __restrict__ k_cache, T* __restrict__ v_cache, const T* __restrict__ k,
                              const T* __restrict__ v, const int64_t* __restrict__ slot_mapping,
                              int64_t k_token_stride, int64_t v_token_stride, int row_elems) {
  const int token = blockIdx.x;
  const int64_t slot = slot_mapping[token];
  if (slot < 0) return;
  // A pure copy: move 16-byte words, whatever T is.
  constexpr int kElemsPerWord = 16 / sizeof(T);
  const uint4* k_row = reinterpret_cast<const uint4*>(k + token * k_token_stride);
  const uint4* v_row = reinterpret_cast<const uint4*>(v + token * v_token_stride);
  uint4* k_dst = reinterpret_cast<uint4*>(k_cache + slot * row_elems);
  uint4* v_dst = reinterpret_cast<uint4*>(v_cache + slot * row_elems);
  const int row_words = row_elems / kElemsPerWord;
  for (int w = threadIdx.x; w < row_words; w += kElementwiseThreads) {
    const uint4 kw = k_row[w];
    const uint4 vw = v_row[w];
    k_dst[w] = kw;
    v_dst[w] = vw;
  }
}

}  // namespace mili

#define MILI_ELEMENTWISE_EXPORTS(T, SUFFIX)                                                              \
  extern "C" __global__ void __launch_bounds__(mili::kElementwiseThreads)                                \
      rms_norm_##SUFFIX(T* out, T* residual_out, const T* x, const T* residual, const T* weight,         \
                        int num_rows, int hidden, float eps) {                                           \
    mili::rms_norm_impl<T>(out, residual_out, x, residual, weight, num_rows, hidden, eps);               \
  }                                                                                                      \
  extern "C" __global__ void __launch_bounds__(mili::kElementwiseThreads)                                \
      silu_and_mul_##SUFFIX(T* out, const T* x, int inner) {                                             \
    mili::silu_and_mul_impl<T>(out, x, inner);                                                           \
  }                                                                                                      \
  extern "C" __global__ void __launch_bounds__(mili::kElementwiseThreads) rotary_embedding_##SUFFIX(     \
      T* q, T* k, const int64_t* positions, const float* cos_sin_cache, int64_t q_token_stride,          \
      int64_t k_token_stride, int num_q_heads, int num_kv_heads, int head_dim) {                         \
    mili::rotary_embedding_impl<T>(q, k, positions, cos_sin_cache, q_token_stride, k_token_stride,      \
                                   num_q_heads, num_kv_heads, head_dim);                                 \
  }                                                                                                      \
  extern "C" __global__ void __launch_bounds__(mili::kElementwiseThreads)                                \
      store_kv_##SUFFIX(T* k_cache, T* v_cache, const T* k, const T* v, const int64_t* slot_mapping,     \
                        int64_t k_token_stride, int64_t v_token_stride, int row_elems) {                 \
    mili::store_kv_impl<T>(k_cache, v_cache, k, v, slot_mapping, k_token_stride, v_token_stride,        \
                           row_elems);                                                                   \
  }

MILI_FOR_EACH_DTYPE(MILI_ELEMENTWISE_EXPORTS)
