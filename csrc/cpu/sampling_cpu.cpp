// CPU kernel of fastsoftmax::alias_sample: `num` ids from an alias table in one parallel pass,
// each draw a pure function of (seed, offset, index) (common/alias.h), so the result does not
// depend on the thread count and matches the CUDA kernel bit for bit.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "common/alias.h"
#include "sampling_checks.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FS_SAMPLING_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FS_SAMPLING_CLONES
#endif

namespace fastsoftmax {
namespace cpu {
namespace {

constexpr int64_t kChunk = 1024;

// Draws [i0, i0 + len) of the stream, in two loops: the buckets and coins of the whole chunk
// first (a simd loop: Philox's ten rounds of 32x32->64 multiplies per draw dominate the cost
// and vectorise well), then the table lookups; the same values as alias_draw, which the CUDA
// kernel calls per draw.
FS_SAMPLING_CLONES
void alias_chunk(const PhiloxStream& stream, int64_t i0, int64_t len, const float* prob,
                 const int64_t* table, int64_t n, int64_t* ids, const float* log_weight,
                 float log_shift, float* log_q) {
  int64_t bucket[kChunk];
  double coin[kChunk];
  const auto key0 = static_cast<uint32_t>(stream.seed);
  const auto key1 = static_cast<uint32_t>(stream.seed >> 32);
  const auto off_lo = static_cast<uint32_t>(stream.offset);
  const auto off_hi = static_cast<uint32_t>(stream.offset >> 32);
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    const AliasBucketCoin pick =
        alias_bucket_coin(static_cast<uint64_t>(i0 + j), key0, key1, off_lo, off_hi, n);
    bucket[j] = pick.bucket;
    coin[j] = pick.coin;
  }
  for (int64_t j = 0; j < len; ++j) {
    const int64_t k = bucket[j];
    ids[i0 + j] = coin[j] < static_cast<double>(prob[k]) ? k : table[k];
  }
  if (log_weight == nullptr) return;
  for (int64_t j = 0; j < len; ++j) log_q[i0 + j] = log_weight[ids[i0 + j]] + log_shift;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> alias_sample_cpu(
    const at::Tensor& alias_prob, const at::Tensor& alias, int64_t num, int64_t seed,
    int64_t offset, const std::optional<at::Tensor>& log_weight, double log_shift) {
  check_alias_sample_args(alias_prob, alias, num, log_weight);
  const at::Tensor prob_c = alias_prob.contiguous();
  const at::Tensor alias_c = alias.contiguous();
  at::Tensor out = at::empty({num}, alias.options());
  const float* prob = prob_c.const_data_ptr<float>();
  const int64_t* table = alias_c.const_data_ptr<int64_t>();
  int64_t* ids = out.data_ptr<int64_t>();
  const at::Tensor log_weight_c = log_weight.has_value() ? log_weight->contiguous() : at::Tensor();
  at::Tensor log_q = at::empty({log_weight.has_value() ? num : 0}, alias_prob.options());
  const float* lw = log_weight.has_value() ? log_weight_c.const_data_ptr<float>() : nullptr;
  float* lq = log_q.data_ptr<float>();
  const auto shift = static_cast<float>(log_shift);
  const int64_t n = prob_c.numel();
  const PhiloxStream stream{static_cast<uint64_t>(seed), static_cast<uint64_t>(offset)};
  // NB: 16 chunks per task: large enough to amortise the scheduling, small enough to balance.
  at::parallel_for(0, (num + kChunk - 1) / kChunk, 16, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t i0 = c * kChunk;
      alias_chunk(stream, i0, std::min(kChunk, num - i0), prob, table, n, ids, lw, shift, lq);
    }
  });
  return {out, log_q};
}

}  // namespace cpu
}  // namespace fastsoftmax

TORCH_LIBRARY_IMPL(fastsoftmax, CPU, m) {
  m.impl("alias_sample", &fastsoftmax::cpu::alias_sample_cpu);
}
