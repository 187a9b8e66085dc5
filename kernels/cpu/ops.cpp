// MILI's CPU kernels, registered as torch ops `<MILI_CPU_NAMESPACE>::*`, one namespace per instruction-set
// build (see kernels/cpu_build.py and kernels/cpu_backend.py).
//
// Layouts are the kernel backend interface's (kernels/backend.py). Every kernel reads its inputs in
// their own dtype (float32, bfloat16 or float16), computes in float32 and rounds once on store, as the
// torch reference does. Work is split over tokens or (sequence, kv head) pairs with at::parallel_for.
// Inner loops run on ATen's Vectorized<float> (AVX-512, AVX2 or plain C++, as the build's
// CPU_CAPABILITY says: see kernels/cpu_build.py), with a scalar tail for lengths off the vector width.

// GCC 12 reports _mm512_undefined_ps inside the fp16 conversion intrinsics as maybe-uninitialized where
// they inline into our loops: a false positive (the lanes are all overwritten).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

// Elementwise work below this many elements runs on the calling thread: waking the pool costs more
// than the work (and, on a busy machine, a scheduler time slice per parallel region).
constexpr int64_t kSerialElements = 1 << 16;

// The dtypes the kernels take (float64 is refused with torch's "not implemented for 'Double'").
#define MILI_DISPATCH(TYPE, NAME, ...)                                                     \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)                 \
                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__) AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

inline int64_t grain_rows(int64_t row_elements) { return std::max<int64_t>(1, kSerialElements / row_elements); }

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();

// kLanes elements of T as floats, and a float vector stored as kLanes T's (rounded to nearest even).
inline Vec load_vec(const float* src) { return Vec::loadu(src); }
template <typename T>
inline Vec load_vec(const T* src) {
  Vec out;
  at::vec::load_to_float<T>(src, out);
  return out;
}
// With AVX512-BF16 (the avx512bf16 build) float -> bf16 rounding is one instruction (VCVTNEPS2BF16,
// round to nearest even as c10 rounds; it treats denormals as zero where c10 rounds them: a difference
// below 1e-38).
#if defined(__AVX512BF16__)
inline __m256i to_bf16_bits(const Vec& v) { return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)); }
inline Vec from_bf16_bits(__m256i bits) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16)); }
#endif

inline void store_vec(float* dst, const Vec& v) { v.store(dst); }
template <typename T>
inline void store_vec(T* dst, const Vec& v) {
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), to_bf16_bits(v));
    return;
  }
#endif
  at::vec::convert_from_float<T>(v, v).store(dst, kLanes);
}
// v rounded to T and back: the rounding torch applies between two ops of a T computation.
template <typename T>
inline Vec round_vec(const Vec& v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
#if defined(__AVX512BF16__)
    if constexpr (std::is_same_v<T, c10::BFloat16>) return from_bf16_bits(to_bf16_bits(v));
#endif
    return std::get<0>(at::vec::convert_to_float<T>(at::vec::convert_from_float<T>(v, v)));
  }
}
template <typename T>
inline float round_to(float x) { return static_cast<float>(static_cast<T>(x)); }

// dst[0..n) = src as floats.
template <typename T>
inline void to_float(const T* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) load_vec(src + i).store(dst + i);
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

// The lanes' sum (the plain-C++ Vectorized's own reduce_add does not compile in torch 2.13's headers).
inline float lane_sum(const Vec& v) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  return v.reduce_add();
#else
  float lanes[kLanes];
  v.store(lanes);
  float sum = 0.f;
  for (int64_t i = 0; i < kLanes; ++i) sum += lanes[i];
  return sum;
#endif
}

// sum of a[i] * b[i] over float rows.
inline float vec_dot(const float* a, const float* b, int64_t n) {
  Vec acc(0.f);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) acc = at::vec::fmadd(Vec::loadu(a + i), Vec::loadu(b + i), acc);
  float sum = lane_sum(acc);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be on the CPU");
}

// 1 / RMS of a float row, as RMSNorm scales it.
inline float inv_rms(const float* row, int64_t n, double eps) {
  return 1.f / std::sqrt(vec_dot(row, row, n) / n + static_cast<float>(eps));
}

// --- decode attention ------------------------------------------------------------------------------
// One task = one (sequence, kv head): its G = Hq / Hk query heads (pre-scaled) read each cached K/V row
// once. Scores of the whole context are kept (context_len floats per head), then one vectorized softmax
// per head, then V block by block: a block's rows are converted to float once, and each head's output
// accumulates over them in registers. kChunks > 0 compiles a head_dim of kChunks vectors (a K row then
// lives in registers); kChunks == 0 takes any head_dim, with scalar tails.
// scores[g * len] = query_g . k_row for each of the G heads (query: G rows of head_dim floats, scaled;
// raw_query: the same rows unscaled in T, q_head_stride apart).
template <typename T, int kChunks>
inline void score_row(const T* k_row, const float* query, const T* raw_query, int64_t q_head_stride, float scale,
                      int64_t group, int64_t head_dim, int64_t len, float* scores, float* scratch) {
#if defined(__AVX512BF16__)
  // bf16 pairs straight from the cache into VDPBF16PS: exact products, float32 sums, no conversion.
  if constexpr (std::is_same_v<T, c10::BFloat16> && kChunks > 0 && kChunks % 2 == 0) {
    constexpr int kPairs = kChunks / 2;  // 32 bf16 per 512-bit vector
    __m512bh k[kPairs];
    for (int c = 0; c < kPairs; ++c) k[c] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(k_row + c * 32));
    for (int64_t g = 0; g < group; ++g) {
      const T* qg = raw_query + g * q_head_stride;
      __m512 acc = _mm512_setzero_ps();
      for (int c = 0; c < kPairs; ++c)
        acc = _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(_mm512_loadu_si512(qg + c * 32)), k[c]);
      scores[g * len] = scale * _mm512_reduce_add_ps(acc);
    }
    return;
  }
#endif
  (void)raw_query, (void)q_head_stride, (void)scale;
  if constexpr (kChunks > 0) {
    Vec k[kChunks];
    for (int c = 0; c < kChunks; ++c) k[c] = load_vec(k_row + c * kLanes);
    for (int64_t g = 0; g < group; ++g) {
      const float* qg = query + g * head_dim;
      Vec acc = Vec::loadu(qg) * k[0];
      for (int c = 1; c < kChunks; ++c) acc = at::vec::fmadd(Vec::loadu(qg + c * kLanes), k[c], acc);
      scores[g * len] = lane_sum(acc);
    }
  } else {
    to_float(k_row, scratch, head_dim);
    for (int64_t g = 0; g < group; ++g) scores[g * len] = vec_dot(query + g * head_dim, scratch, head_dim);
  }
}

// acc_g += sum_j probs[g * len + j] * v_j over one block's `count` rows, for each of the G heads.
template <typename T, int kChunks>
inline void accumulate_block(const T* rows, int64_t row_stride, int64_t count, const float* probs, int64_t group,
                             int64_t head_dim, int64_t len, float* acc, float* values) {
  for (int64_t j = 0; j < count; ++j) to_float(rows + j * row_stride, values + j * head_dim, head_dim);
  for (int64_t g = 0; g < group; ++g) {
    float* a = acc + g * head_dim;
    const float* p = probs + g * len;
    if constexpr (kChunks > 0) {
      Vec sum[kChunks];
      for (int c = 0; c < kChunks; ++c) sum[c] = Vec::loadu(a + c * kLanes);
      for (int64_t j = 0; j < count; ++j) {
        const Vec weight(p[j]);
        for (int c = 0; c < kChunks; ++c)
          sum[c] = at::vec::fmadd(weight, Vec::loadu(values + j * head_dim + c * kLanes), sum[c]);
      }
      for (int c = 0; c < kChunks; ++c) sum[c].store(a + c * kLanes);
    } else {
      const int64_t vector_dim = head_dim - head_dim % kLanes;
      for (int64_t j = 0; j < count; ++j) {
        const float* v = values + j * head_dim;
        const Vec weight(p[j]);
        int64_t d = 0;
        for (; d < vector_dim; d += kLanes) at::vec::fmadd(weight, Vec::loadu(v + d), Vec::loadu(a + d)).store(a + d);
        for (; d < head_dim; ++d) a[d] += p[j] * v[d];
      }
    }
  }
}

template <typename T, int kChunks>
void decode_attention_impl(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                           const at::Tensor& block_tables, const at::Tensor& context_lens, double scale,
                           at::Tensor& out) {
  const int64_t num_seqs = q.size(0), num_heads = q.size(1), head_dim = q.size(2);
  const int64_t block_size = k_cache.size(1), num_kv_heads = k_cache.size(2);
  const int64_t group = num_heads / num_kv_heads;
  const int64_t max_blocks = block_tables.size(1);
  const T* q_ptr = q.data_ptr<T>();
  const T* k_ptr = k_cache.data_ptr<T>();
  const T* v_ptr = v_cache.data_ptr<T>();
  T* out_ptr = out.data_ptr<T>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  const int32_t* lens = context_lens.data_ptr<int32_t>();
  const int64_t q_seq_stride = q.stride(0), q_head_stride = q.stride(1);
  const int64_t row = num_kv_heads * head_dim;  // one token's K (or V) in the cache
  const int64_t block_stride = block_size * row;
  const int64_t head_bytes = head_dim * static_cast<int64_t>(sizeof(T)), row_bytes = row * static_cast<int64_t>(sizeof(T));

  at::parallel_for(0, num_seqs * num_kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> query(group * head_dim), acc(group * head_dim), values(block_size * head_dim), scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t seq = task / num_kv_heads, kv_head = task % num_kv_heads;
      const int64_t len = lens[seq];
      const int32_t* table = tables + seq * max_blocks;
      // Calls visit(first row of the block, its first position, rows in it) for each block of this
      // kv head, after prefetching the next block's rows: blocks are scattered, so the hardware
      // prefetcher cannot see them coming.
      auto for_each_block = [&](const T* cache, auto&& visit) {
        for (int64_t first = 0, b = 0; first < len; first += block_size, ++b) {
          if (first + block_size < len) {
            const char* next = reinterpret_cast<const char*>(cache + table[b + 1] * block_stride + kv_head * head_dim);
            const int64_t next_count = std::min(block_size, len - first - block_size);
            for (int64_t j = 0; j < next_count; ++j)
              for (int64_t byte = 0; byte < head_bytes; byte += 64) __builtin_prefetch(next + j * row_bytes + byte);
          }
          visit(cache + table[b] * block_stride + kv_head * head_dim, first, std::min(block_size, len - first));
        }
      };
      const T* raw_query = q_ptr + seq * q_seq_stride + kv_head * group * q_head_stride;
      for (int64_t g = 0; g < group; ++g) {
        float* dst = query.data() + g * head_dim;
        to_float(raw_query + g * q_head_stride, dst, head_dim);
        for (int64_t d = 0; d < head_dim; ++d) dst[d] *= static_cast<float>(scale);
      }
      scores.resize(group * len);
      for_each_block(k_ptr, [&](const T* rows, int64_t first, int64_t count) {
        for (int64_t j = 0; j < count; ++j)
          score_row<T, kChunks>(rows + j * row, query.data(), raw_query, q_head_stride, static_cast<float>(scale),
                                group, head_dim, len, scores.data() + first + j, values.data());
      });
      for (int64_t g = 0; g < group; ++g) {
        float* s = scores.data() + g * len;
        const float max_score = at::vec::reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, s, len);
        at::vec::map([max_score](Vec x) { return (x - Vec(max_score)).exp(); }, s, s, len);
        const float total = at::vec::reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, s, len);
        const float inv = 1.f / total;
        at::vec::map([inv](Vec x) { return x * Vec(inv); }, s, s, len);
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for_each_block(v_ptr, [&](const T* rows, int64_t first, int64_t count) {
        accumulate_block<T, kChunks>(rows, row, count, scores.data() + first, group, head_dim, len, acc.data(),
                                     values.data());
      });
      for (int64_t g = 0; g < group; ++g) {
        T* dst = out_ptr + (seq * num_heads + kv_head * group + g) * head_dim;
        const float* a = acc.data() + g * head_dim;
        int64_t d = 0;
        for (; d + kLanes <= head_dim; d += kLanes) store_vec(dst + d, Vec::loadu(a + d));
        for (; d < head_dim; ++d) dst[d] = static_cast<T>(a[d]);
      }
    }
  });
}

// The head_dims compiled with their row in registers; any other takes the general loop.
template <typename T>
void decode_attention_dispatch(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                               const at::Tensor& block_tables, const at::Tensor& context_lens, double scale,
                               at::Tensor& out) {
  const int64_t head_dim = q.size(2);
  const int64_t chunks = head_dim % kLanes == 0 ? head_dim / kLanes : 0;
  switch (chunks) {
    case 2: return decode_attention_impl<T, 2>(q, k_cache, v_cache, block_tables, context_lens, scale, out);
    case 4: return decode_attention_impl<T, 4>(q, k_cache, v_cache, block_tables, context_lens, scale, out);
    case 8: return decode_attention_impl<T, 8>(q, k_cache, v_cache, block_tables, context_lens, scale, out);
    case 16: return decode_attention_impl<T, 16>(q, k_cache, v_cache, block_tables, context_lens, scale, out);
    default: return decode_attention_impl<T, 0>(q, k_cache, v_cache, block_tables, context_lens, scale, out);
  }
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& block_tables, const at::Tensor& context_lens, double scale) {
  constexpr const char* op = "decode_attention";
  for (const at::Tensor* t : {&q, &k_cache, &v_cache, &block_tables, &context_lens}) check_cpu(*t, op, "input");
  TORCH_CHECK(q.dim() == 3 && q.stride(2) == 1, op, ": q must be [B, Hq, D] with dense head dims");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), op, ": the KV cache must be contiguous");
  TORCH_CHECK(k_cache.scalar_type() == q.scalar_type() && v_cache.scalar_type() == q.scalar_type(), op,
              ": q and the KV cache must share a dtype");
  TORCH_CHECK(k_cache.size(3) == q.size(2), op, ": head_dim of q and the cache differ");
  TORCH_CHECK(q.size(1) % k_cache.size(2) == 0, op, ": query heads must be a multiple of kv heads");
  TORCH_CHECK(block_tables.scalar_type() == at::kInt && block_tables.is_contiguous(), op,
              ": block_tables must be contiguous int32");
  TORCH_CHECK(context_lens.scalar_type() == at::kInt && context_lens.is_contiguous(), op,
              ": context_lens must be contiguous int32");
  TORCH_CHECK(block_tables.size(0) == q.size(0) && context_lens.size(0) == q.size(0), op,
              ": one block table row and one context length per sequence");
  auto out = at::empty({q.size(0), q.size(1), q.size(2)}, q.options());
  MILI_DISPATCH(q.scalar_type(), "decode_attention", [&] {
    decode_attention_dispatch<scalar_t>(q, k_cache, v_cache, block_tables, context_lens, scale, out);
  });
  return out;
}

// --- store_kv ----------------------------------------------------------------------------------------
void store_kv(const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache, at::Tensor& v_cache,
              const at::Tensor& slot_mapping) {
  constexpr const char* op = "store_kv";
  for (const at::Tensor* t : {&k, &v, static_cast<const at::Tensor*>(&k_cache), static_cast<const at::Tensor*>(&v_cache), &slot_mapping})
    check_cpu(*t, op, "input");
  TORCH_CHECK(k.dim() == 3 && v.dim() == 3 && k.stride(2) == 1 && v.stride(2) == 1 && k.stride(1) == k.size(2) &&
                  v.stride(1) == v.size(2),
              op, ": k and v must be [T, Hk, D] with dense heads");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), op, ": the KV cache must be contiguous");
  TORCH_CHECK(k.scalar_type() == k_cache.scalar_type() && v.scalar_type() == v_cache.scalar_type(), op,
              ": k/v and the cache must share a dtype");
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong && slot_mapping.is_contiguous(), op,
              ": slot_mapping must be contiguous int64");
  const int64_t num_tokens = k.size(0);
  const int64_t row_bytes = k.size(1) * k.size(2) * k.element_size();
  TORCH_CHECK(row_bytes == k_cache.size(2) * k_cache.size(3) * k_cache.element_size(), op,
              ": k rows and cache rows differ in size");
  const int64_t num_slots = k_cache.size(0) * k_cache.size(1);
  const int64_t* slots = slot_mapping.data_ptr<int64_t>();
  auto* k_src = static_cast<const char*>(k.data_ptr());
  auto* v_src = static_cast<const char*>(v.data_ptr());
  auto* k_dst = static_cast<char*>(k_cache.data_ptr());
  auto* v_dst = static_cast<char*>(v_cache.data_ptr());
  const int64_t k_stride = k.stride(0) * k.element_size(), v_stride = v.stride(0) * v.element_size();
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int64_t slot = slots[t];
    if (slot < 0) continue;
    TORCH_CHECK(slot < num_slots, op, ": slot ", slot, " is outside the cache");
    std::memcpy(k_dst + slot * row_bytes, k_src + t * k_stride, row_bytes);
    std::memcpy(v_dst + slot * row_bytes, v_src + t * v_stride, row_bytes);
  }
}

// --- silu_and_mul ------------------------------------------------------------------------------------
template <typename T>
void silu_and_mul_impl(const at::Tensor& x, at::Tensor& out) {
  const int64_t num_tokens = x.size(0), inner = x.size(1) / 2;
  const T* src = x.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  at::parallel_for(0, num_tokens, grain_rows(2 * inner), [&](int64_t begin, int64_t end) {
    const Vec one(1.f);
    for (int64_t t = begin; t < end; ++t) {
      const T* gate = src + t * 2 * inner;
      const T* up = gate + inner;
      T* o = dst + t * inner;
      int64_t i = 0;
      // silu(gate) is rounded to T before the product, as torch's silu(gate) * up is.
      for (; i + kLanes <= inner; i += kLanes) {
        const Vec g = load_vec(gate + i);
        store_vec(o + i, round_vec<T>(g / (one + g.neg().exp())) * load_vec(up + i));
      }
      for (; i < inner; ++i) {
        const float g = static_cast<float>(gate[i]);
        o[i] = static_cast<T>(round_to<T>(g / (1.f + std::exp(-g))) * static_cast<float>(up[i]));
      }
    }
  });
}

at::Tensor silu_and_mul(const at::Tensor& x) {
  check_cpu(x, "silu_and_mul", "x");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.size(1) % 2 == 0, "silu_and_mul: x must be a contiguous [T, 2I]");
  auto out = at::empty({x.size(0), x.size(1) / 2}, x.options());
  MILI_DISPATCH(x.scalar_type(), "silu_and_mul", [&] { silu_and_mul_impl<scalar_t>(x, out); });
  return out;
}

// --- rms_norm (optionally fused with the residual add) ----------------------------------------------
template <typename T>
void rms_norm_impl(const at::Tensor& x, const at::Tensor& weight, double eps, const at::Tensor* residual,
                   at::Tensor& out, at::Tensor* new_residual) {
  const int64_t hidden = x.size(-1), rows = x.numel() / hidden;
  const T* src = x.data_ptr<T>();
  const T* w = weight.data_ptr<T>();
  const T* res = residual ? residual->data_ptr<T>() : nullptr;
  T* dst = out.data_ptr<T>();
  T* res_out = new_residual ? new_residual->data_ptr<T>() : nullptr;
  at::parallel_for(0, rows, grain_rows(hidden), [&](int64_t begin, int64_t end) {
    std::vector<float> sum(hidden);  // the (rounded) residual sum, or x, in float
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = src + r * hidden;
      int64_t i = 0;
      if (res) {
        const T* rr = res + r * hidden;
        T* ro = res_out + r * hidden;
        for (; i + kLanes <= hidden; i += kLanes) {
          const Vec v = round_vec<T>(load_vec(xr + i) + load_vec(rr + i));
          store_vec(ro + i, v);
          v.store(sum.data() + i);
        }
        for (; i < hidden; ++i) {
          ro[i] = static_cast<T>(static_cast<float>(xr[i]) + static_cast<float>(rr[i]));
          sum[i] = static_cast<float>(ro[i]);
        }
      } else {
        to_float(xr, sum.data(), hidden);
      }
      const float inv = inv_rms(sum.data(), hidden, eps);
      T* o = dst + r * hidden;
      const Vec inv_v(inv);
      for (i = 0; i + kLanes <= hidden; i += kLanes)
        store_vec(o + i, load_vec(w + i) * round_vec<T>(Vec::loadu(sum.data() + i) * inv_v));
      for (; i < hidden; ++i) o[i] = static_cast<T>(static_cast<float>(w[i]) * round_to<T>(sum[i] * inv));
    }
  });
}

void check_norm_args(const at::Tensor& x, const at::Tensor& weight, const char* op) {
  check_cpu(x, op, "x");
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous(), op, ": x and weight must be contiguous");
  TORCH_CHECK(weight.numel() == x.size(-1) && weight.scalar_type() == x.scalar_type(), op,
              ": weight must be [hidden] in x's dtype");
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_norm_args(x, weight, "rms_norm");
  auto out = at::empty_like(x);
  MILI_DISPATCH(x.scalar_type(), "rms_norm", [&] { rms_norm_impl<scalar_t>(x, weight, eps, nullptr, out, nullptr); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& residual,
                                                const at::Tensor& weight, double eps) {
  check_norm_args(x, weight, "add_rms_norm");
  check_cpu(residual, "add_rms_norm", "residual");
  TORCH_CHECK(residual.is_contiguous() && residual.sizes() == x.sizes() && residual.scalar_type() == x.scalar_type(),
              "add_rms_norm: residual must be contiguous, shaped and typed like x");
  auto out = at::empty_like(x);
  auto new_residual = at::empty_like(x);
  MILI_DISPATCH(x.scalar_type(), "add_rms_norm", [&] {
    rms_norm_impl<scalar_t>(x, weight, eps, &residual, out, &new_residual);
  });
  return {out, new_residual};
}

// residual += x in place, then returns norm(residual): rms_norm_impl reads each residual element before
// it overwrites it, so the sum may land where the residual was.
at::Tensor fused_add_rms_norm(const at::Tensor& x, at::Tensor& residual, const at::Tensor& weight, double eps) {
  check_norm_args(x, weight, "fused_add_rms_norm");
  check_cpu(residual, "fused_add_rms_norm", "residual");
  TORCH_CHECK(residual.is_contiguous() && residual.sizes() == x.sizes() && residual.scalar_type() == x.scalar_type(),
              "fused_add_rms_norm: residual must be contiguous, shaped and typed like x");
  auto out = at::empty_like(x);
  MILI_DISPATCH(x.scalar_type(), "fused_add_rms_norm", [&] {
    rms_norm_impl<scalar_t>(x, weight, eps, &residual, out, &residual);
  });
  return out;
}

// --- rotary embedding (NeoX, in place) ---------------------------------------------------------------
template <typename T>
void rotate_impl(const int64_t* positions, at::Tensor& x, const float* cos_sin, int64_t rot_dim) {
  const int64_t num_tokens = x.size(0), heads = x.size(1), head_dim = x.size(2), half = rot_dim / 2;
  const int64_t token_stride = x.stride(0), head_stride = x.stride(1);
  T* ptr = x.data_ptr<T>();
  at::parallel_for(0, num_tokens, grain_rows(heads * head_dim), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* cos = cos_sin + positions[t] * rot_dim;
      const float* sin = cos + half;
      for (int64_t h = 0; h < heads; ++h) {
        T* row = ptr + t * token_stride + h * head_stride;
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = static_cast<float>(row[i]), x2 = static_cast<float>(row[i + half]);
          row[i] = static_cast<T>(x1 * cos[i] - x2 * sin[i]);
          row[i + half] = static_cast<T>(x2 * cos[i] + x1 * sin[i]);
        }
      }
    }
  });
  (void)head_dim;
}

void check_rotary_args(const char* op, const at::Tensor& positions, const at::Tensor& x,
                       const at::Tensor& cos_sin_cache) {
  TORCH_CHECK(positions.scalar_type() == at::kLong && positions.is_contiguous(), op,
              ": positions must be contiguous int64");
  TORCH_CHECK(cos_sin_cache.scalar_type() == at::kFloat && cos_sin_cache.is_contiguous(), op,
              ": cos_sin_cache must be contiguous float32");
  check_cpu(x, op, "q/k");
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1 && x.size(2) == cos_sin_cache.size(1), op,
              ": q and k must be [T, H, D] with dense head dims and D = cos_sin_cache.size(1)");
  TORCH_CHECK(x.size(0) == positions.size(0), op, ": one position per token");
}

void rotary_embedding(const at::Tensor& positions, at::Tensor& q, at::Tensor& k, const at::Tensor& cos_sin_cache) {
  constexpr const char* op = "rotary_embedding";
  const int64_t rot_dim = cos_sin_cache.size(1);
  for (auto* x : {&q, &k}) {
    check_rotary_args(op, positions, *x, cos_sin_cache);
    MILI_DISPATCH(x->scalar_type(), op, [&] {
      rotate_impl<scalar_t>(positions.data_ptr<int64_t>(), *x, cos_sin_cache.data_ptr<float>(), rot_dim);
    });
  }
}

// --- q/k norm + rotary, fused (dense outputs) ---------------------------------------------------------
// Each head of x [T, H, D] (strided tokens) is optionally RMS-normalized with weight [D], rounded as
// rms_norm rounds, then rotated as rotary_embedding rotates, into a dense out [T, H, D].
template <typename T>
void qk_norm_rotary_impl(const int64_t* positions, const at::Tensor& x, const T* weight, double eps,
                         const float* cos_sin, at::Tensor& out) {
  const int64_t num_tokens = x.size(0), heads = x.size(1), head_dim = x.size(2), half = head_dim / 2;
  const int64_t token_stride = x.stride(0), head_stride = x.stride(1);
  const T* src = x.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  std::vector<float> w(head_dim);
  if (weight != nullptr) to_float(weight, w.data(), head_dim);
  at::parallel_for(0, num_tokens, grain_rows(heads * head_dim), [&](int64_t begin, int64_t end) {
    std::vector<float> row(head_dim);
    for (int64_t t = begin; t < end; ++t) {
      const float* cos = cos_sin + positions[t] * head_dim;
      const float* sin = cos + half;
      for (int64_t h = 0; h < heads; ++h) {
        to_float(src + t * token_stride + h * head_stride, row.data(), head_dim);
        if (weight != nullptr) {
          const float inv = inv_rms(row.data(), head_dim, eps);
          const Vec inv_v(inv);
          int64_t i = 0;
          for (; i + kLanes <= head_dim; i += kLanes) {
            const Vec normed = round_vec<T>(Vec::loadu(row.data() + i) * inv_v);
            round_vec<T>(Vec::loadu(w.data() + i) * normed).store(row.data() + i);
          }
          for (; i < head_dim; ++i) row[i] = round_to<T>(w[i] * round_to<T>(row[i] * inv));
        }
        T* o = dst + (t * heads + h) * head_dim;
        int64_t i = 0;
        for (; i + kLanes <= half; i += kLanes) {
          const Vec x1 = Vec::loadu(row.data() + i), x2 = Vec::loadu(row.data() + half + i);
          const Vec c = Vec::loadu(cos + i), s = Vec::loadu(sin + i);
          store_vec(o + i, x1 * c - x2 * s);
          store_vec(o + half + i, x2 * c + x1 * s);
        }
        for (; i < half; ++i) {
          o[i] = static_cast<T>(row[i] * cos[i] - row[i + half] * sin[i]);
          o[i + half] = static_cast<T>(row[i + half] * cos[i] + row[i] * sin[i]);
        }
      }
    }
  });
}

at::Tensor qk_norm_rotary_one(const char* op, const at::Tensor& positions, const at::Tensor& x,
                              const std::optional<at::Tensor>& weight, double eps, const at::Tensor& cos_sin_cache) {
  check_rotary_args(op, positions, x, cos_sin_cache);
  TORCH_CHECK(x.stride(1) == x.size(2), op, ": q and k must have dense heads");
  if (weight.has_value()) {
    TORCH_CHECK(weight->is_contiguous() && weight->numel() == x.size(2) && weight->scalar_type() == x.scalar_type(),
                op, ": weights must be contiguous [D] in q's dtype");
  }
  auto out = at::empty({x.size(0), x.size(1), x.size(2)}, x.options());
  MILI_DISPATCH(x.scalar_type(), "qk_norm_rotary", [&] {
    const scalar_t* w = weight.has_value() ? weight->data_ptr<scalar_t>() : nullptr;
    qk_norm_rotary_impl<scalar_t>(positions.data_ptr<int64_t>(), x, w, eps, cos_sin_cache.data_ptr<float>(), out);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> qk_norm_rotary(const at::Tensor& positions, const at::Tensor& q,
                                                  const at::Tensor& k, const std::optional<at::Tensor>& q_weight,
                                                  const std::optional<at::Tensor>& k_weight, double eps,
                                                  const at::Tensor& cos_sin_cache) {
  constexpr const char* op = "qk_norm_rotary";
  TORCH_CHECK(q_weight.has_value() == k_weight.has_value(), op, ": q_weight and k_weight: both or neither");
  return {qk_norm_rotary_one(op, positions, q, q_weight, eps, cos_sin_cache),
          qk_norm_rotary_one(op, positions, k, k_weight, eps, cos_sin_cache)};
}

}  // namespace

// Each instruction-set build registers under its own namespace (MILI_CPU_NAMESPACE, set by cpu_build);
// the indirection expands the macro before TORCH_LIBRARY pastes it.
#ifndef MILI_CPU_NAMESPACE
#error "build with -DMILI_CPU_NAMESPACE=mili_cpu_<level> (python -m mili.kernels.cpu_build does)"
#endif
#define MILI_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define MILI_LIBRARY_IMPL(ns, m) TORCH_LIBRARY_IMPL(ns, CPU, m)

MILI_LIBRARY(MILI_CPU_NAMESPACE, m) {
  m.def("decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor context_lens, float scale) -> Tensor");
  m.def("store_kv(Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slot_mapping) -> ()");
  m.def("silu_and_mul(Tensor x) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def("rotary_embedding(Tensor positions, Tensor(a!) q, Tensor(b!) k, Tensor cos_sin_cache) -> ()");
  m.def("fused_add_rms_norm(Tensor x, Tensor(a!) residual, Tensor weight, float eps) -> Tensor");
  m.def("qk_norm_rotary(Tensor positions, Tensor q, Tensor k, Tensor? q_weight, Tensor? k_weight, float eps, "
        "Tensor cos_sin_cache) -> (Tensor, Tensor)");
}

MILI_LIBRARY_IMPL(MILI_CPU_NAMESPACE, m) {
  m.impl("decode_attention", &decode_attention);
  m.impl("store_kv", &store_kv);
  m.impl("silu_and_mul", &silu_and_mul);
  m.impl("rms_norm", &rms_norm);
  m.impl("add_rms_norm", &add_rms_norm);
  m.impl("rotary_embedding", &rotary_embedding);
  m.impl("fused_add_rms_norm", &fused_add_rms_norm);
  m.impl("qk_norm_rotary", &qk_norm_rotary);
}
