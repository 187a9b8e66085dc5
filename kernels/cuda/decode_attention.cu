// Paged decode attention: one new query token per sequence against its whole cached context.
//
// Grid (head_groups, batch, splits). A CTA takes kHeads query heads that share one KV head (GQA) and
// one partition of kPartition context tokens, so each K/V row is read from memory once for all the
// query heads that use it. Within a CTA, kHeadDim / 8 threads share a token (8 dims each):
//   1. logits[h][t] = scale * q[h] . k[t] for the partition, into shared memory;
//   2. per head, max and exp-sum over the partition (one warp per head);
//   3. acc[h] = sum_t exp(logit - max) * v[t], reduced across threads into shared memory.
// With one split the CTA normalizes and writes the output. With several, it writes its unnormalized
// accumulator, max and exp-sum, and decode_reduce_* combines the splits (rescaling by exp(max_s - max)).
// Everything accumulates in fp32.
#include "common.cuh"

namespace mili {

constexpr int kDecodeThreads = 128;
constexpr int kDecodeWarps = kDecodeThreads / 32;
constexpr int kPartition = 512;  // context tokens per split; keep in sync with cuda_backend.py
constexpr int kDecodeUnroll = 4;  // K/V rows in flight per thread
constexpr int kMaxSplits = 1024;  // decode_reduce's shared weights; the launcher checks it

struct DecodeParams {
  const int* block_tables;  // [B, max_blocks_per_seq]
  const int* context_lens;  // [B]
  int64_t q_seq_stride;     // elements between sequences in q
  int max_blocks_per_seq;
  int block_size;
  int num_kv_heads;
  int num_q_heads;
  float scale;
};

template <typename T, int kHeadDim, int kHeads>
__device__ void decode_attention_impl(T* __restrict__ out, float* __restrict__ partial_out,
                                      float* __restrict__ partial_max, float* __restrict__ partial_sum,
                                      const T* __restrict__ q, const T* __restrict__ k_cache,
                                      const T* __restrict__ v_cache, const DecodeParams p) {
  constexpr int kThreadsPerToken = kHeadDim / 8;
  constexpr int kTokensPerStep = kDecodeThreads / kThreadsPerToken;
  static_assert(kThreadsPerToken <= 32 && 32 % kThreadsPerToken == 0, "a token's threads share a warp");

  __shared__ float logits[kHeads][kPartition];
  __shared__ float warp_acc[kDecodeWarps][kHeads][kHeadDim];
  __shared__ float head_max[kHeads];
  __shared__ float head_sum[kHeads];

  const int seq = blockIdx.y;
  const int split = blockIdx.z;
  const int num_splits = gridDim.z;
  const int context_len = p.context_lens[seq];
  const int start = split * kPartition;
  if (start >= context_len) return;  // decode_reduce only reads the splits that hold tokens
  const int end = min(start + kPartition, context_len);

  const int first_q_head = blockIdx.x * kHeads;
  const int kv_head = first_q_head / (p.num_q_heads / p.num_kv_heads);
  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int token_slot = tid / kThreadsPerToken;
  const int dim0 = (tid % kThreadsPerToken) * 8;
  const int* block_table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;
  const int64_t row_stride = static_cast<int64_t>(p.num_kv_heads) * kHeadDim;
  const int64_t head_offset = static_cast<int64_t>(kv_head) * kHeadDim + dim0;

  // Offset of token t's row (this thread's 8 dims) in a cache tensor.
  auto cache_offset = [&](int t) -> int64_t {
    const int64_t block = block_table[t / p.block_size];
    return (block * p.block_size + t % p.block_size) * row_stride + head_offset;
  };

  float q_frag[kHeads][8];
#pragma unroll
  for (int h = 0; h < kHeads; ++h) {
    Vec8<T> qv;
    qv.load(q + seq * p.q_seq_stride + static_cast<int64_t>(first_q_head + h) * kHeadDim + dim0);
    qv.to_floats(q_frag[h]);
#pragma unroll
    for (int i = 0; i < 8; ++i) q_frag[h][i] *= p.scale;
  }

  // 1. logits
  for (int t0 = start; t0 < end; t0 += kTokensPerStep * kDecodeUnroll) {
    Vec8<T> keys[kDecodeUnroll];
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; ++u) {
      const int t = t0 + u * kTokensPerStep + token_slot;
      if (t < end) keys[u].load(k_cache + cache_offset(t));
    }
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; ++u) {
      const int t = t0 + u * kTokensPerStep + token_slot;
      float k[8];
      keys[u].to_floats(k);
#pragma unroll
      for (int h = 0; h < kHeads; ++h) {
        float dot = 0.f;
        if (t < end) {
#pragma unroll
          for (int i = 0; i < 8; ++i) dot += q_frag[h][i] * k[i];
        }
#pragma unroll
        for (int offset = kThreadsPerToken / 2; offset > 0; offset >>= 1)
          dot += __shfl_xor_sync(0xffffffffu, dot, offset);
        if (t < end && dim0 == 0) logits[h][t - start] = dot;
      }
    }
  }
  __syncthreads();

  // 2. softmax statistics of the partition, one warp per head
  const int num_tokens = end - start;
  for (int h = warp; h < kHeads; h += kDecodeWarps) {
    float m = -INFINITY;
    for (int i = lane; i < num_tokens; i += 32) m = fmaxf(m, logits[h][i]);
    m = warp_max(m);
    float s = 0.f;
    for (int i = lane; i < num_tokens; i += 32) {
      const float e = __expf(logits[h][i] - m);
      logits[h][i] = e;
      s += e;
    }
    s = warp_sum(s);
    if (lane == 0) {
      head_max[h] = m;
      head_sum[h] = s;
    }
  }
  __syncthreads();

  // 3. weighted sum of values
  float acc[kHeads][8];
#pragma unroll
  for (int h = 0; h < kHeads; ++h)
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[h][i] = 0.f;
  for (int t0 = start; t0 < end; t0 += kTokensPerStep * kDecodeUnroll) {
    Vec8<T> values[kDecodeUnroll];
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; ++u) {
      const int t = t0 + u * kTokensPerStep + token_slot;
      if (t < end) values[u].load(v_cache + cache_offset(t));
    }
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; ++u) {
      const int t = t0 + u * kTokensPerStep + token_slot;
      if (t < end) {
        float v[8];
        values[u].to_floats(v);
#pragma unroll
        for (int h = 0; h < kHeads; ++h) {
          const float weight = logits[h][t - start];
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[h][i] += weight * v[i];
        }
      }
    }
  }
  // Sum over the token slots of a warp (lanes that differ in the bits above kThreadsPerToken).
#pragma unroll
  for (int h = 0; h < kHeads; ++h)
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int offset = kThreadsPerToken; offset < 32; offset <<= 1)
        acc[h][i] += __shfl_xor_sync(0xffffffffu, acc[h][i], offset);
  if (lane < kThreadsPerToken) {
#pragma unroll
    for (int h = 0; h < kHeads; ++h)
#pragma unroll
      for (int i = 0; i < 8; ++i) warp_acc[warp][h][dim0 + i] = acc[h][i];
  }
  __syncthreads();

  for (int idx = tid; idx < kHeads * kHeadDim; idx += kDecodeThreads) {
    const int h = idx / kHeadDim;
    const int d = idx % kHeadDim;
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) total += warp_acc[w][h][d];
    const int64_t head_row = static_cast<int64_t>(seq) * p.num_q_heads + first_q_head + h;
    if (num_splits == 1) {
      out[head_row * kHeadDim + d] = from_float<T>(total / head_sum[h]);
    } else {
      partial_out[(head_row * num_splits + split) * kHeadDim + d] = total;
    }
  }
  if (num_splits > 1 && tid < kHeads) {
    const int64_t head_row = static_cast<int64_t>(seq) * p.num_q_heads + first_q_head + tid;
    partial_max[head_row * num_splits + split] = head_max[tid];
    partial_sum[head_row * num_splits + split] = head_sum[tid];
  }
}

// Grid (num_q_heads, batch): combine the splits of one head of one sequence.
template <typename T>
__device__ void decode_reduce_impl(T* __restrict__ out, const float* __restrict__ partial_out,
                                   const float* __restrict__ partial_max,
                                   const float* __restrict__ partial_sum,
                                   const int* __restrict__ context_lens, int num_splits, int head_dim) {
  __shared__ float weights[kMaxSplits];
  __shared__ float scratch[kDecodeWarps];
  const int64_t head_row = static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x;
  const int used_splits = min(num_splits, (context_lens[blockIdx.y] + kPartition - 1) / kPartition);
  const float* maxes = partial_max + head_row * num_splits;
  const float* sums = partial_sum + head_row * num_splits;

  float m = -INFINITY;
  for (int s = threadIdx.x; s < used_splits; s += kDecodeThreads) m = fmaxf(m, maxes[s]);
  m = warp_max(m);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = m;
  __syncthreads();
  m = scratch[0];
#pragma unroll
  for (int w = 1; w < kDecodeWarps; ++w) m = fmaxf(m, scratch[w]);
  __syncthreads();

  float denominator = 0.f;
  for (int s = threadIdx.x; s < used_splits; s += kDecodeThreads) {
    const float w = __expf(maxes[s] - m);
    weights[s] = w;
    denominator += w * sums[s];
  }
  denominator = block_sum<kDecodeThreads>(denominator, scratch);  // also orders the weights writes
  const float inv = denominator > 0.f ? 1.f / denominator : 0.f;

  const float* partial = partial_out + head_row * num_splits * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += kDecodeThreads) {
    float total = 0.f;
    for (int s = 0; s < used_splits; ++s) total += weights[s] * partial[s * head_dim + d];
    out[head_row * head_dim + d] = from_float<T>(total * inv);
  }
}

}  // namespace mili

#define MILI_DECODE_EXPORT(T, SUFFIX, D, H)                                                          \
  extern "C" __global__ void __launch_bounds__(mili::kDecodeThreads)                                 \
      decode_attention_##SUFFIX##_d##D##_h##H(T* out, float* partial_out, float* partial_max,        \
                                              float* partial_sum, const T* q, const T* k_cache,      \
                                              const T* v_cache, const int* block_tables,             \
                                              const int* context_lens, int64_t q_seq_stride,         \
                                              int max_blocks_per_seq, int block_size,                \
                                              int num_kv_heads, int num_q_heads, float scale) {      \
    const mili::DecodeParams params{block_tables, context_lens, q_seq_stride, max_blocks_per_seq,  \
                                    block_size,   num_kv_heads, num_q_heads,  scale};               \
    mili::decode_attention_impl<T, D, H>(out, partial_out, partial_max, partial_sum, q, k_cache,    \
                                         v_cache, params);                                           \
  }

#define MILI_DECODE_EXPORTS(T, SUFFIX)                                                                \
  MILI_DECODE_EXPORT(T, SUFFIX, 64, 1)                                                                \
  MILI_DECODE_EXPORT(T, SUFFIX, 64, 2)                                                                \
  MILI_DECODE_EXPORT(T, SUFFIX, 64, 4)                                                                \
  MILI_DECODE_EXPORT(T, SUFFIX, 64, 8)                                                                \
  MILI_DECODE_EXPORT(T, SUFFIX, 128, 1)                                                               \
  MILI_DECODE_EXPORT(T, SUFFIX, 128, 2)                                                               \
  MILI_DECODE_EXPORT(T, SUFFIX, 128, 4)                                                               \
  MILI_DECODE_EXPORT(T, SUFFIX, 128, 8)                                                               \
  extern "C" __global__ void __launch_bounds__(mili::kDecodeThreads)                                  \
      decode_reduce_##SUFFIX(T* out, const float* partial_out, const float* partial_max,              \
                             const float* partial_sum, const int* context_lens, int num_splits,       \
                             int head_dim) {                                                          \
    mili::decode_reduce_impl<T>(out, partial_out, partial_max, partial_sum, context_lens, num_splits, \
                                head_dim);                                                            \
  }

MILI_FOR_EACH_DTYPE(MILI_DECODE_EXPORTS)
