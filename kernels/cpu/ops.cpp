// MILI's CPU kernels, registered as torch ops `mili_cpu::*` (see kernels/cpu_backend.py).
//
// Layouts are the kernel backend interface's (kernels/backend.py). Every kernel reads its inputs in
// their own dtype (float32, bfloat16 or float16), computes in float32 and rounds once on store, as the
// torch reference does. Work is split over tokens or (sequence, kv head) pairs with at::parallel_for.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
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
#include <vector>

namespace {

// Elementwise work below this many elements runs on the calling thread: waking the pool costs more
// than the work (and, on a busy machine, a scheduler time slice per parallel region).
constexpr int64_t kSerialElements = 1 << 16;

inline int64_t grain_rows(int64_t row_elements) { return std::max<int64_t>(1, kSerialElements / row_elements); }

template <typename T>
inline void load_row(const T* src, float* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

inline float dot(const float* a, const float* b, int64_t n) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be on the CPU");
}

// --- decode attention ------------------------------------------------------------------------------
// One task = one (sequence, kv head): its G = Hq / Hk query heads read each cached K/V row once.
// Scores of the whole context are kept (context_len floats per head), then softmax, then V.
template <typename T>
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

  at::parallel_for(0, num_seqs * num_kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> query(group * head_dim), key(head_dim), acc(group * head_dim), scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t seq = task / num_kv_heads, kv_head = task % num_kv_heads;
      const int64_t len = lens[seq];
      const int32_t* table = tables + seq * max_blocks;
      for (int64_t g = 0; g < group; ++g) {
        const T* src = q_ptr + seq * q_seq_stride + (kv_head * group + g) * q_head_stride;
        load_row(src, query.data() + g * head_dim, head_dim);
      }
      scores.assign(group * len, 0.f);
      for (int64_t t = 0; t < len; ++t) {
        const T* k_row = k_ptr + table[t / block_size] * block_stride + (t % block_size) * row +
                         kv_head * head_dim;
        load_row(k_row, key.data(), head_dim);
        for (int64_t g = 0; g < group; ++g)
          scores[g * len + t] = dot(query.data() + g * head_dim, key.data(), head_dim) * scale;
      }
      for (int64_t g = 0; g < group; ++g) {
        float* s = scores.data() + g * len;
        const float max_score = *std::max_element(s, s + len);
        float total = 0.f;
        for (int64_t t = 0; t < len; ++t) {
          s[t] = std::exp(s[t] - max_score);
          total += s[t];
        }
        const float inv = 1.f / total;
        for (int64_t t = 0; t < len; ++t) s[t] *= inv;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t = 0; t < len; ++t) {
        const T* v_row = v_ptr + table[t / block_size] * block_stride + (t % block_size) * row +
                         kv_head * head_dim;
        load_row(v_row, key.data(), head_dim);
        for (int64_t g = 0; g < group; ++g) {
          const float p = scores[g * len + t];
          float* a = acc.data() + g * head_dim;
#pragma omp simd
          for (int64_t d = 0; d < head_dim; ++d) a[d] += p * key[d];
        }
      }
      for (int64_t g = 0; g < group; ++g) {
        T* dst = out_ptr + (seq * num_heads + kv_head * group + g) * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) dst[d] = static_cast<T>(acc[g * head_dim + d]);
      }
    }
  });
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "decode_attention", [&] {
    decode_attention_impl<scalar_t>(q, k_cache, v_cache, block_tables, context_lens, scale, out);
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
    for (int64_t t = begin; t < end; ++t) {
      const T* gate = src + t * 2 * inner;
      const T* up = gate + inner;
      T* o = dst + t * inner;
#pragma omp simd
      for (int64_t i = 0; i < inner; ++i) {
        const float g = static_cast<float>(gate[i]);
        // Rounded to T before the product, as torch's silu(gate) * up is.
        const float silu = static_cast<float>(static_cast<T>(g / (1.f + std::exp(-g))));
        o[i] = static_cast<T>(silu * static_cast<float>(up[i]));
      }
    }
  });
}

at::Tensor silu_and_mul(const at::Tensor& x) {
  check_cpu(x, "silu_and_mul", "x");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.size(1) % 2 == 0, "silu_and_mul: x must be a contiguous [T, 2I]");
  auto out = at::empty({x.size(0), x.size(1) / 2}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "silu_and_mul",
                                  [&] { silu_and_mul_impl<scalar_t>(x, out); });
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
    std::vector<float> sum(hidden);
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = src + r * hidden;
      if (res) {
        const T* rr = res + r * hidden;
        T* ro = res_out + r * hidden;
        for (int64_t i = 0; i < hidden; ++i) {
          ro[i] = static_cast<T>(static_cast<float>(xr[i]) + static_cast<float>(rr[i]));
          sum[i] = static_cast<float>(ro[i]);
        }
      } else {
        load_row(xr, sum.data(), hidden);
      }
      const float inv = 1.f / std::sqrt(dot(sum.data(), sum.data(), hidden) / hidden + static_cast<float>(eps));
      T* o = dst + r * hidden;
#pragma omp simd
      for (int64_t i = 0; i < hidden; ++i) {
        const float normed = static_cast<float>(static_cast<T>(sum[i] * inv));
        o[i] = static_cast<T>(static_cast<float>(w[i]) * normed);
      }
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm",
                                  [&] { rms_norm_impl<scalar_t>(x, weight, eps, nullptr, out, nullptr); });
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "add_rms_norm", [&] {
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "fused_add_rms_norm", [&] {
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
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x->scalar_type(), op, [&] {
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
  at::parallel_for(0, num_tokens, grain_rows(heads * head_dim), [&](int64_t begin, int64_t end) {
    std::vector<float> row(head_dim);
    for (int64_t t = begin; t < end; ++t) {
      const float* cos = cos_sin + positions[t] * head_dim;
      const float* sin = cos + half;
      for (int64_t h = 0; h < heads; ++h) {
        load_row(src + t * token_stride + h * head_stride, row.data(), head_dim);
        if (weight != nullptr) {
          const float inv = 1.f / std::sqrt(dot(row.data(), row.data(), head_dim) / head_dim + static_cast<float>(eps));
          for (int64_t i = 0; i < head_dim; ++i) {
            const float normed = static_cast<float>(static_cast<T>(row[i] * inv));
            row[i] = static_cast<float>(static_cast<T>(static_cast<float>(weight[i]) * normed));
          }
        }
        T* o = dst + (t * heads + h) * head_dim;
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "qk_norm_rotary", [&] {
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

TORCH_LIBRARY(mili_cpu, m) {
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

TORCH_LIBRARY_IMPL(mili_cpu, CPU, m) {
  m.impl("decode_attention", &decode_attention);
  m.impl("store_kv", &store_kv);
  m.impl("silu_and_mul", &silu_and_mul);
  m.impl("rms_norm", &rms_norm);
  m.impl("add_rms_norm", &add_rms_norm);
  m.impl("rotary_embedding", &rotary_embedding);
  m.impl("fused_add_rms_norm", &fused_add_rms_norm);
  m.impl("qk_norm_rotary", &qk_norm_rotary);
}
