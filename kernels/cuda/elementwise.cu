// Memory-bound per-token kernels: RMSNorm (+ residual add, also in place), SiLU-and-mul, rotary embedding,
// the fused per-head q/k norm + rotary, and the scatter of new K/V into the paged cache. Layouts: see
// kernels/backend.py.
//
// All of them move data 8 elements (16 bytes for 16-bit types) at a time; the Python launcher checks
// that the sizes are multiples of 8 and the pointers 16-byte aligned.
#include "common.cuh"

namespace mili {

constexpr int kElementwiseThreads = 256;

// out = weight * round(s * inv_rms) for one row, lane `lane` of the row's warp taking every 32nd chunk.
template <typename T>
__device__ __forceinline__ void write_normed_row(T* __restrict__ out, const T* source,
                                                 const T* __restrict__ weight, int hidden, int lane,
                                                 float inv_rms) {
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
    ov.store(out + col);
  }
}

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
  write_normed_row(out + base, source, weight, hidden, lane, inv_rms);
}

// In place: residual = round(x + residual), then out = weight * round(residual * rsqrt(mean(residual^2) +
// eps)). One warp per row; each lane re-reads only the residual chunks it wrote itself.
template <typename T>
__device__ void fused_add_rms_norm_impl(T* __restrict__ out, T* __restrict__ residual,
                                        const T* __restrict__ x, const T* __restrict__ weight, int num_rows,
                                        int hidden, float eps) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * (kElementwiseThreads / 32) + threadIdx.x / 32;
  if (row >= num_rows) return;
  const size_t base = static_cast<size_t>(row) * hidden;
  float sum_sq = 0.f;
  for (int col = lane * 8; col < hidden; col += 32 * 8) {
    Vec8<T> xv, rv;
    xv.load(x + base + col);
    rv.load(residual + base + col);
    float s[8], r[8];
    xv.to_floats(s);
    rv.to_floats(r);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      s[i] = round_to<T>(s[i] + r[i]);
      sum_sq += s[i] * s[i];
    }
    rv.from_floats(s);
    rv.store(residual + base + col);
  }
  const float inv_rms = rsqrtf(warp_sum(sum_sq) / static_cast<float>(hidden) + eps);
  write_normed_row(out + base, residual + base, weight, hidden, lane, inv_rms);
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

// NeoX rotation of one 8-wide chunk pair (x1 from the first half of a head, x2 from the second) by the
// cos/sin of the same columns, in float32. The _rn intrinsics keep nvcc from contracting a product and
// the sum into one fma: torch rounds each product, and bf16 output then matches it bit for bit.
__device__ __forceinline__ void rotate_chunk_pair(float x1[8], float x2[8], const float* cos_sin, int half,
                                                  int col) {
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float c = cos_sin[col + i];
    const float s = cos_sin[half + col + i];
    const float r1 = __fsub_rn(__fmul_rn(x1[i], c), __fmul_rn(x2[i], s));
    x2[i] = __fadd_rn(__fmul_rn(x2[i], c), __fmul_rn(x1[i], s));
    x1[i] = r1;
  }
}

// Rotate one head vector in place (NeoX style): the first and second halves pair up element-wise.
template <typename T>
__device__ __forceinline__ void rotate_head_chunk(T* head, const float* cos_sin, int half, int col) {
  Vec8<T> v1, v2;
  v1.load(head + col);
  v2.load(head + half + col);
  float x1[8], x2[8];
  v1.to_floats(x1);
  v2.to_floats(x2);
  rotate_chunk_pair(x1, x2, cos_sin, half, col);
  v1.from_floats(x1);
  v2.from_floats(x2);
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

// Fused q/k norm + rotary: q [T, Hq, D] and k [T, Hk, D] (token strides given, heads dense: views of a
// fused qkv) -> dense q_out [T, Hq, D], k_out [T, Hk, D]. Each head is optionally RMS-normalized with its
// weight [D] (q_weight and k_weight both given, or both null), rounded as `rms_norm` rounds, then rotated
// as `rotary_embedding` rotates. D / 16 consecutive threads share a head (a power of two <= 32, checked
// by the launcher, so a head's threads sit in one warp): thread j holds columns [8j, 8j + 8) of each
// half, so its rotation pairs are its own, and the head's sum of squares is a shuffle over the group.
template <typename T>
__device__ void qk_norm_rotary_impl(T* __restrict__ q_out, T* __restrict__ k_out, const T* __restrict__ q,
                                    const T* __restrict__ k, const T* __restrict__ q_weight,
                                    const T* __restrict__ k_weight, const int64_t* __restrict__ positions,
                                    const float* __restrict__ cos_sin_cache, int64_t q_token_stride,
                                    int64_t k_token_stride, int num_tokens, int num_q_heads, int num_kv_heads,
                                    int head_dim, float eps) {
  const int half = head_dim / 2;
  const int threads_per_head = half / 8;
  const int heads = num_q_heads + num_kv_heads;
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * kElementwiseThreads + threadIdx.x;
  const int64_t item = thread / threads_per_head;  // one (token, head)
  const int col = static_cast<int>(thread % threads_per_head) * 8;
  // Threads past the last head still join the shuffle below (it needs the whole warp), on zeros.
  const bool valid = item < static_cast<int64_t>(num_tokens) * heads;
  const int64_t token = valid ? item / heads : 0;
  const int head = valid ? static_cast<int>(item % heads) : 0;
  const bool is_q = head < num_q_heads;
  const int kv_head = head - num_q_heads;
  const T* src = is_q ? q + token * q_token_stride + static_cast<int64_t>(head) * head_dim
                      : k + token * k_token_stride + static_cast<int64_t>(kv_head) * head_dim;
  T* dst = is_q ? q_out + (token * num_q_heads + head) * head_dim
                : k_out + (token * num_kv_heads + kv_head) * head_dim;
  const T* weight = is_q ? q_weight : k_weight;

  float x1[8], x2[8];
  if (valid) {
    Vec8<T> v1, v2;
    v1.load(src + col);
    v2.load(src + half + col);
    v1.to_floats(x1);
    v2.to_floats(x2);
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) x1[i] = x2[i] = 0.f;
  }
  if (weight != nullptr) {  // the same for every thread of the launch
    float sum_sq = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) sum_sq += x1[i] * x1[i] + x2[i] * x2[i];
    for (int offset = threads_per_head / 2; offset > 0; offset >>= 1)
      sum_sq += __shfl_xor_sync(0xffffffffu, sum_sq, offset);
    const float inv_rms = rsqrtf(sum_sq / static_cast<float>(head_dim) + eps);
    if (valid) {
      Vec8<T> w1, w2;
      w1.load(weight + col);
      w2.load(weight + half + col);
      float a[8], b[8];
      w1.to_floats(a);
      w2.to_floats(b);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        x1[i] = round_to<T>(a[i] * round_to<T>(x1[i] * inv_rms));
        x2[i] = round_to<T>(b[i] * round_to<T>(x2[i] * inv_rms));
      }
    }
  }
  if (!valid) return;
  rotate_chunk_pair(x1, x2, cos_sin_cache + positions[token] * head_dim, half, col);
  Vec8<T> o1, o2;
  o1.from_floats(x1);
  o2.from_floats(x2);
  o1.store(dst + col);
  o2.store(dst + half + col);
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
      fused_add_rms_norm_##SUFFIX(T* out, T* residual, const T* x, const T* weight, int num_rows,        \
                                  int hidden, float eps) {                                               \
    mili::fused_add_rms_norm_impl<T>(out, residual, x, weight, num_rows, hidden, eps);                   \
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
  extern "C" __global__ void __launch_bounds__(mili::kElementwiseThreads) qk_norm_rotary_##SUFFIX(      \
      T* q_out, T* k_out, const T* q, const T* k, const T* q_weight, const T* k_weight,                  \
      const int64_t* positions, const float* cos_sin_cache, int64_t q_token_stride,                      \
      int64_t k_token_stride, int num_tokens, int num_q_heads, int num_kv_heads, int head_dim,           \
      float eps) {                                                                                       \
    mili::qk_norm_rotary_impl<T>(q_out, k_out, q, k, q_weight, k_weight, positions, cos_sin_cache,      \
                                 q_token_stride, k_token_stride, num_tokens, num_q_heads, num_kv_heads,  \
                                 head_dim, eps);                                                         \
  }                                                                                                      \
  extern "C" __global__ void __launch_bounds__(mili::kElementwiseThreads)                                \
      store_kv_##SUFFIX(T* k_cache, T* v_cache, const T* k, const T* v, const int64_t* slot_mapping,     \
                        int64_t k_token_stride, int64_t v_token_stride, int row_elems) {                 \
    mili::store_kv_impl<T>(k_cache, v_cache, k, v, slot_mapping, k_token_stride, v_token_stride,        \
                           row_elems);                                                                   \
  }

MILI_FOR_EACH_DTYPE(MILI_ELEMENTWISE_EXPORTS)
