// Torch glue of the CUDA hard-negative mining op: argument checks, device guard and stream, the
// tiled cuBLAS scores, and the epilogue launches (mining_kernels.cu).
//
// The [rows, cols] score tile is at most kTileElems accumulator values (32 MiB in fp32), so the
// op's extra memory is O(B * H + tile), never [B x P]. Sample mode scans the tiles twice (pass 1:
// log-sum-exp; pass 2: the CDF walk, recomputing each tile's scores with cuBLAS); top-k once.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <tuple>

#include "cuda/mining_kernels.cuh"
#include "mining_args.h"

namespace fastsoftmax {
namespace cuda {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

constexpr int64_t kTileElems = int64_t{1} << 23;
constexpr int64_t kMinTileCols = 1024;

// Raw inner products of query rows [r0, r0 + rows) with pool rows [c0, c0 + cols) into `buffer`,
// in the acc dtype. fp16/bf16 products are exact in fp32 and accumulate in fp32.
Tensor score_tile(const Tensor& query, const Tensor& pool, int64_t r0, int64_t rows, int64_t c0,
                  int64_t cols, const Tensor& buffer) {
  Tensor out = buffer.narrow(0, 0, rows * cols).view({rows, cols});
  const Tensor q = query.narrow(0, r0, rows);
  const Tensor w = pool.narrow(0, c0, cols);
  if (query.size(1) == 0) {
    out.zero_();
  } else if (query.scalar_type() == at::kHalf || query.scalar_type() == at::kBFloat16) {
    at::mm_out(out, q, w.t(), at::kFloat);
  } else {
    at::mm_out(out, q, w.t());
  }
  return out;
}

MiningTile make_tile(const Tensor& scores, const ExcludedPositions& excluded, int64_t r0,
                     int64_t rows, int64_t c0, int64_t cols) {
  MiningTile t;
  t.scores = scores.data_ptr();
  t.r0 = r0;
  t.rows = rows;
  t.c0 = c0;
  t.cols = cols;
  if (excluded.defined()) {
    t.excl_ptr = excluded.ptr.const_data_ptr<int64_t>();
    t.excl_pos = excluded.position.const_data_ptr<int64_t>();
  }
  return t;
}

}  // namespace

std::tuple<Tensor, Tensor> mine_hard_negatives_cuda(const Tensor& query, const Tensor& pool,
                                                    const OptTensor& pool_ids,
                                                    const OptTensor& exclude_ids,
                                                    const OptTensor& pool_log_q, int64_t num,
                                                    c10::string_view mode, double temperature,
                                                    int64_t seed, int64_t offset) {
  const MiningMode m = parse_mining_mode(mode);
  check_mining_args(query, pool, pool_ids, exclude_ids, pool_log_q, num, m, temperature);
  TORCH_CHECK(query.is_cuda(), "query must be a CUDA tensor, got ", query.device());
  const int64_t B = query.size(0), P = pool.size(0);
  TORCH_CHECK(P < std::numeric_limits<int32_t>::max(), "pool has ", P,
              " rows; the CUDA kernels index at most 2^31 - 2");
  TORCH_CHECK(B <= std::numeric_limits<int32_t>::max(), "query has ", B,
              " rows; the CUDA kernels launch one block per row, at most 2^31 - 1");
  if (m == MiningMode::kSample) {
    TORCH_CHECK(num <= kMiningMaxSampleNum, "num must be <= ", kMiningMaxSampleNum,
                " in sample mode on CUDA, got ", num);
  } else {
    TORCH_CHECK(num <= kMiningMaxTopkNum, "num must be <= ", kMiningMaxTopkNum,
                " in topk mode on CUDA, got ", num);
  }
  const c10::cuda::CUDAGuard guard(query.device());
  const bool is_double = query.scalar_type() == at::kDouble;
  const auto acc = is_double ? at::kDouble : at::kFloat;
  const auto opts = query.options();
  Tensor index = at::empty({B, num}, opts.dtype(at::kLong));
  Tensor log_q = at::empty({B, num}, opts.dtype(acc));
  if (B == 0) return {index, log_q};

  const auto stream = c10::cuda::getCurrentCUDAStream();
  const Tensor q = query.contiguous();
  const Tensor pl = pool.contiguous();
  const ExcludedPositions excluded = excluded_positions(pool_ids, exclude_ids, P);
  const Tensor lq = pool_log_q.has_value() ? pool_log_q->to(acc).contiguous() : Tensor();

  const int64_t cols_per_tile = std::min(P, std::max(kMinTileCols, kTileElems / B));
  const int64_t rows_per_tile =
      std::min(B, std::max<int64_t>(1, kTileElems / std::max<int64_t>(1, cols_per_tile)));
  const Tensor buffer = at::empty({rows_per_tile * std::max<int64_t>(1, cols_per_tile)},
                                  opts.dtype(acc));
  // Calls fn(tile) for every tile, row blocks outer and pool order inner.
  auto for_each_tile = [&](auto&& fn) {
    for (int64_t r0 = 0; r0 < B; r0 += rows_per_tile) {
      const int64_t rows = std::min(rows_per_tile, B - r0);
      for (int64_t c0 = 0; c0 < P; c0 += cols_per_tile) {
        const int64_t cols = std::min(cols_per_tile, P - c0);
        const Tensor scores = score_tile(q, pl, r0, rows, c0, cols, buffer);
        fn(make_tile(scores, excluded, r0, rows, c0, cols));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  };

  if (m == MiningMode::kTopK) {
    Tensor list_score = at::empty({B, num}, opts.dtype(acc));
    Tensor list_index = at::empty({B, num}, opts.dtype(at::kInt));
    Tensor list_count = at::zeros({B}, opts.dtype(at::kInt));
    MiningTopkParams p;
    p.is_double = is_double;
    p.B = B;
    p.H = num;
    p.list_score = list_score.data_ptr();
    p.list_index = list_index.data_ptr<int32_t>();
    p.list_count = list_count.data_ptr<int32_t>();
    p.pool_log_q = lq.defined() ? lq.const_data_ptr() : nullptr;
    p.out_index = index.data_ptr<int64_t>();
    p.out_log_q = log_q.data_ptr();
    for_each_tile([&](const MiningTile& t) { launch_mining_topk_tile(t, p, stream); });
    launch_mining_topk_finish(p, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {index, log_q};
  }

  Tensor lse_max = at::full({B}, -std::numeric_limits<double>::infinity(), opts.dtype(acc));
  Tensor lse_sum = at::zeros({B}, opts.dtype(acc));
  Tensor lse = at::empty({B}, opts.dtype(acc));
  Tensor draw_u = at::empty({B, num}, opts.dtype(at::kDouble));
  Tensor draw_h = at::empty({B, num}, opts.dtype(at::kInt));
  Tensor cdf = at::empty({B}, opts.dtype(at::kDouble));
  Tensor next = at::empty({B}, opts.dtype(at::kInt));
  Tensor last = at::empty({B}, opts.dtype(at::kLong));
  Tensor last_score = at::empty({B}, opts.dtype(acc));
  MiningSampleParams p;
  p.is_double = is_double;
  p.B = B;
  p.H = num;
  p.inv_tau = 1.0 / temperature;
  p.seed = static_cast<uint64_t>(seed);
  p.offset = static_cast<uint64_t>(offset);
  p.lse_max = lse_max.data_ptr();
  p.lse_sum = lse_sum.data_ptr();
  p.lse = lse.data_ptr();
  p.draw_u = draw_u.data_ptr<double>();
  p.draw_h = draw_h.data_ptr<int32_t>();
  p.cdf = cdf.data_ptr<double>();
  p.next = next.data_ptr<int32_t>();
  p.last = last.data_ptr<int64_t>();
  p.last_score = last_score.data_ptr();
  p.pool_log_q = lq.defined() ? lq.const_data_ptr() : nullptr;
  p.out_index = index.data_ptr<int64_t>();
  p.out_log_q = log_q.data_ptr();
  for_each_tile([&](const MiningTile& t) { launch_mining_lse_tile(t, p, stream); });
  launch_mining_sample_prepare(p, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  for_each_tile([&](const MiningTile& t) { launch_mining_walk_tile(t, p, stream); });
  launch_mining_sample_finish(p, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {index, log_q};
}

}  // namespace cuda

TORCH_LIBRARY_IMPL(fastsoftmax, CUDA, m) {
  m.impl("mine_hard_negatives", &cuda::mine_hard_negatives_cuda);
}

}  // namespace fastsoftmax
