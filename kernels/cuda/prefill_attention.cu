// Prefill attention over a variable-length batch, reading keys and values from the paged cache
// (the cached prefix and this step's new tokens, which the caller has already stored there).
//
// FlashAttention-2 shape on tensor cores (mma.sync m16n8k16, fp16/bf16 in, fp32 accumulate):
// a CTA owns kBlockRows query rows of one sequence and one query head; each of its 4 warps owns 16 rows.
// Q stays in registers; K/V tiles of kBlockCols tokens are gathered from the paged cache into shared
// memory with cp.async, double-buffered so the next tile loads while this one is used. Scores, the
// online softmax (running max and sum per row) and the output accumulator live in registers.
//
// Semantics (see TorchBackend.prefill_attention): sequence i owns query rows cu_seqlens_q[i]..[i+1];
// its q_len new tokens are the last q_len of its context_lens[i] cached tokens, so the query at local
// row r sits at position prefix + r (prefix = context_len - q_len) and attends to keys 0..prefix + r.
//
// Shared memory rows are 8-element (16-byte) chunks, XOR-swizzled by row (chunk ^ (row % 8)) so that
// ldmatrix, which reads one chunk from each of 8 consecutive rows, hits 8 different bank groups.
#include "common.cuh"

namespace mili {

constexpr int kPrefillThreads = 128;
constexpr int kBlockRows = 64;  // query rows per CTA (16 per warp)
constexpr int kBlockCols = 32;  // keys per tile

__device__ __forceinline__ uint32_t shared_address(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

// 16-byte global->shared copy; when !valid the destination is zero-filled and nothing is read.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* ptr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(ptr)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* ptr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(ptr)));
}

// c[16x8] += a[16x16] * b[16x8]; fragment layouts as in the PTX ISA for mma.m16n8k16.
template <typename T>
__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float c[4], const uint32_t a[4], uint32_t b0,
                                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16816<__half>(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as a packed pair of T (lo in the low half, the lower column index).
template <typename T>
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack_pair<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack_pair<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Element offset of 16-byte chunk `chunk` of row `row` in a swizzled [rows][kHeadDim] tile.
template <int kHeadDim>
__device__ __forceinline__ int swizzle(int row, int chunk) {
  return row * kHeadDim + ((chunk ^ (row & 7)) << 3);
}

// Which (sequence, query tile) this CTA owns: tiles are numbered sequence by sequence,
// ceil(q_len / kBlockRows) per sequence. Each warp scans the cumulative counts 32 sequences at a time.
// Returns false for the spare CTAs of the launcher's upper-bound grid.
__device__ __forceinline__ bool find_tile(const int* cu_seqlens_q, int num_seqs, int tile, int* seq,
                                          int* q_tile) {
  const int lane = threadIdx.x % 32;
  int base = 0;
  for (int first = 0; first < num_seqs; first += 32) {
    const int s = first + lane;
    const int count = s < num_seqs ? (cu_seqlens_q[s + 1] - cu_seqlens_q[s] + kBlockRows - 1) / kBlockRows : 0;
    int inclusive = count;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int below = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += below;
    }
    const int total = __shfl_sync(0xffffffffu, inclusive, 31);
    if (tile < base + total) {
      const int owner = __ffs(__ballot_sync(0xffffffffu, base + inclusive > tile)) - 1;
      *seq = first + owner;
      *q_tile = tile - base - __shfl_sync(0xffffffffu, inclusive - count, owner);
      return true;
    }
    base += total;
  }
  return false;
}

template <typename T, int kHeadDim>
__device__ void prefill_attention_impl(T* __restrict__ out, const T* __restrict__ q,
                                       const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                                       const int* __restrict__ cu_seqlens_q,
                                       const int* __restrict__ context_lens,
                                       const int* __restrict__ block_tables, int64_t q_token_stride,
                                       int num_seqs, int max_blocks_per_seq, int block_size,
                                       int num_kv_heads, int num_q_heads, float scale_log2) {
  constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per row
  constexpr int kDimTiles = kHeadDim / 8;  // n8 tiles of the output
  constexpr int kKeyTiles = kBlockCols / 8;  // n8 tiles of the scores
  __shared__ __align__(128) T q_tile_smem[kBlockRows * kHeadDim];
  __shared__ __align__(128) T k_smem[2][kBlockCols * kHeadDim];
  __shared__ __align__(128) T v_smem[2][kBlockCols * kHeadDim];

  int seq, q_tile;
  if (!find_tile(cu_seqlens_q, num_seqs, blockIdx.x, &seq, &q_tile)) return;
  const int head = blockIdx.y;
  const int kv_head = head / (num_q_heads / num_kv_heads);
  const int q_begin = cu_seqlens_q[seq];
  const int q_len = cu_seqlens_q[seq + 1] - q_begin;
  const int context_len = context_lens[seq];
  const int prefix = context_len - q_len;
  const int row0 = q_tile * kBlockRows;  // first local query row of this CTA
  const int kv_end = min(context_len, prefix + row0 + kBlockRows);  // keys this tile can see
  const int num_kv_tiles = (kv_end + kBlockCols - 1) / kBlockCols;
  const int* block_table = block_tables + static_cast<int64_t>(seq) * max_blocks_per_seq;
  const int64_t cache_row_stride = static_cast<int64_t>(num_kv_heads) * kHeadDim;

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;

  for (int c = tid; c < kBlockRows * kChunks; c += kPrefillThreads) {
    const int r = c / kChunks;
    const int chunk = c % kChunks;
    const bool valid = row0 + r < q_len;
    const T* src = valid ? q + (q_begin + row0 + r) * q_token_stride + static_cast<int64_t>(head) * kHeadDim +
                               chunk * 8
                         : q;
    cp_async_16(q_tile_smem + swizzle<kHeadDim>(r, chunk), src, valid);
  }
  auto load_kv_tile = [&](int tile, int stage) {
    for (int c = tid; c < kBlockCols * kChunks; c += kPrefillThreads) {
      const int r = c / kChunks;
      const int chunk = c % kChunks;
      const int t = tile * kBlockCols + r;
      const bool valid = t < kv_end;
      int64_t offset = 0;
      if (valid) {
        const int64_t block = block_table[t / block_size];
        offset = (block * block_size + t % block_size) * cache_row_stride +
                 static_cast<int64_t>(kv_head) * kHeadDim + chunk * 8;
      }
      cp_async_16(k_smem[stage] + swizzle<kHeadDim>(r, chunk), k_cache + offset, valid);
      cp_async_16(v_smem[stage] + swizzle<kHeadDim>(r, chunk), v_cache + offset, valid);
    }
  };
  load_kv_tile(0, 0);
  cp_async_commit();

  uint32_t q_frag[kHeadDim / 16][4];
  float acc[kDimTiles][4];
#pragma unroll
  for (int i = 0; i < kDimTiles; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.f, 0.f};  // this thread's share; summed over the quad at the end
  const int matrix = lane / 8;  // which 8x8 matrix of an x4 ldmatrix this lane addresses
  const int warp_row = warp * 16;
  // Absolute positions of this thread's two rows (c0/c1 and c2/c3 of each accumulator tile).
  const int query_pos0 = prefix + row0 + warp_row + lane / 4;

  for (int tile = 0; tile < num_kv_tiles; ++tile) {
    const int stage = tile & 1;
    if (tile + 1 < num_kv_tiles) {
      load_kv_tile(tile + 1, stage ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (tile == 0) {
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk)
        ldmatrix_x4(q_frag[kk],
                    q_tile_smem + swizzle<kHeadDim>(warp_row + (matrix & 1) * 8 + lane % 8, 2 * kk + matrix / 2));
    }

    // scores = Q K^T for 16 rows x kBlockCols keys
    float scores[kKeyTiles][4];
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) scores[n][0] = scores[n][1] = scores[n][2] = scores[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < kKeyTiles / 2; ++np) {
        uint32_t b[4];
        ldmatrix_x4(b, k_smem[stage] + swizzle<kHeadDim>((2 * np + matrix / 2) * 8 + lane % 8, 2 * kk + matrix % 2));
        mma_16816<T>(scores[2 * np], q_frag[kk], b[0], b[1]);
        mma_16816<T>(scores[2 * np + 1], q_frag[kk], b[2], b[3]);
      }
    }

    // causal / length mask, only on tiles that reach past some row's position or the last key
    const int key0 = tile * kBlockCols;
    const bool needs_mask = key0 + kBlockCols - 1 > prefix + row0 + warp_row || key0 + kBlockCols > kv_end;
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = key0 + n * 8 + (lane % 4) * 2 + (e & 1);
        const int query_pos = query_pos0 + (e / 2) * 8;
        scores[n][e] = needs_mask && (key > query_pos || key >= kv_end) ? -INFINITY : scores[n][e] * scale_log2;
      }

    // online softmax (base 2; scale_log2 = scale * log2(e))
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int n = 0; n < kKeyTiles; ++n) tile_max = fmaxf(tile_max, fmaxf(scores[n][2 * r], scores[n][2 * r + 1]));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      const float new_max = fmaxf(row_max[r], tile_max);
      const float base = new_max == -INFINITY ? 0.f : new_max;  // a row with no visible key yet
      const float rescale = exp2f(row_max[r] - base);
      row_max[r] = new_max;
      float tile_sum = 0.f;
#pragma unroll
      for (int n = 0; n < kKeyTiles; ++n)
#pragma unroll
        for (int e = 2 * r; e < 2 * r + 2; ++e) {
          scores[n][e] = exp2f(scores[n][e] - base);
          tile_sum += scores[n][e];
        }
      row_sum[r] = row_sum[r] * rescale + tile_sum;
#pragma unroll
      for (int d = 0; d < kDimTiles; ++d) {
        acc[d][2 * r] *= rescale;
        acc[d][2 * r + 1] *= rescale;
      }
    }

    // acc += P V: two adjacent score tiles form the A fragment of one k16 step
#pragma unroll
    for (int kk = 0; kk < kBlockCols / 16; ++kk) {
      const uint32_t p_frag[4] = {
          pack_pair<T>(scores[2 * kk][0], scores[2 * kk][1]), pack_pair<T>(scores[2 * kk][2], scores[2 * kk][3]),
          pack_pair<T>(scores[2 * kk + 1][0], scores[2 * kk + 1][1]),
          pack_pair<T>(scores[2 * kk + 1][2], scores[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < kDimTiles / 2; ++dp) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, v_smem[stage] + swizzle<kHeadDim>(kk * 16 + (matrix & 1) * 8 + lane % 8, 2 * dp + matrix / 2));
        mma_16816<T>(acc[2 * dp], p_frag, b[0], b[1]);
        mma_16816<T>(acc[2 * dp + 1], p_frag, b[2], b[3]);
      }
    }
    __syncthreads();  // the next iteration's loads overwrite this stage
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
    const int local_row = row0 + warp_row + lane / 4 + r * 8;
    if (local_row >= q_len) continue;
    const float inv = 1.f / row_sum[r];
    T* out_row = out + (static_cast<int64_t>(q_begin + local_row) * num_q_heads + head) * kHeadDim;
#pragma unroll
    for (int d = 0; d < kDimTiles; ++d) {
      *reinterpret_cast<uint32_t*>(out_row + d * 8 + (lane % 4) * 2) =
          pack_pair<T>(acc[d][2 * r] * inv, acc[d][2 * r + 1] * inv);
    }
  }
}

}  // namespace mili

#define MILI_PREFILL_EXPORT(T, SUFFIX, D)                                                                    \
  extern "C" __global__ void __launch_bounds__(mili::kPrefillThreads) prefill_attention_##SUFFIX##_d##D(     \
      T* out, const T* q, const T* k_cache, const T* v_cache, const int* cu_seqlens_q,                       \
      const int* context_lens, const int* block_tables, int64_t q_token_stride, int num_seqs,                \
      int max_blocks_per_seq, int block_size, int num_kv_heads, int num_q_heads, float scale_log2) {         \
    mili::prefill_attention_impl<T, D>(out, q, k_cache, v_cache, cu_seqlens_q, context_lens, block_tables, \
                                       q_token_stride, num_seqs, max_blocks_per_seq, block_size,            \
                                       num_kv_heads, num_q_heads, scale_log2);                               \
  }

#define MILI_PREFILL_EXPORTS(T, SUFFIX) \
  MILI_PREFILL_EXPORT(T, SUFFIX, 64)    \
  MILI_PREFILL_EXPORT(T, SUFFIX, 128)

// Tensor-core path only: fp16 and bf16 (float32 prefill is not provided; the launcher says so).
MILI_PREFILL_EXPORTS(__half, f16)
MILI_PREFILL_EXPORTS(__nv_bfloat16, bf16)
