// Argument checks and the exclusion lists shared by the CPU and CUDA entry points of
// mine_hard_negatives. The Python layer (fastsoftmax/mining.py) validates user input with
// friendlier messages; these checks guard the op when it is called through torch.ops directly.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <optional>

namespace fastsoftmax {

enum class MiningMode { kSample, kTopK };

inline MiningMode parse_mining_mode(c10::string_view mode) {
  if (mode == "sample") return MiningMode::kSample;
  if (mode == "topk") return MiningMode::kTopK;
  TORCH_CHECK(false, "mode must be 'sample' or 'topk', got '", std::string(mode), "'");
}

inline void check_mining_args(const at::Tensor& query, const at::Tensor& pool,
                              const std::optional<at::Tensor>& pool_ids,
                              const std::optional<at::Tensor>& exclude_ids,
                              const std::optional<at::Tensor>& pool_log_q, int64_t num,
                              MiningMode mode, double temperature) {
  TORCH_CHECK(query.dim() == 2, "query must be [B, d], got ", query.sizes());
  TORCH_CHECK(pool.dim() == 2 && pool.size(1) == query.size(1), "pool must be [P, d] with d = ",
              query.size(1), ", got ", pool.sizes());
  TORCH_CHECK(at::isFloatingType(query.scalar_type()), "query must be floating point, got ",
              query.scalar_type());
  TORCH_CHECK(pool.scalar_type() == query.scalar_type(), "pool must have the dtype of query (",
              query.scalar_type(), "), got ", pool.scalar_type());
  TORCH_CHECK(pool.device() == query.device(), "pool is on ", pool.device(), " but query is on ",
              query.device());
  const int64_t B = query.size(0), P = pool.size(0);
  TORCH_CHECK(num > 0, "num must be > 0, got ", num);
  if (mode == MiningMode::kTopK) {
    TORCH_CHECK(num <= P, "num must be <= the pool size P = ", P, " in topk mode, got ", num);
  }
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature),
              "temperature must be a finite number > 0, got ", temperature);
  // NB: the Philox counter holds the row in 32 bits and the draw pair in 32 bits.
  TORCH_CHECK(B < (int64_t{1} << 32), "query has too many rows (", B, ") for the sampler");
  TORCH_CHECK(num < (int64_t{1} << 33), "num is too large (", num, ")");
  if (pool_ids) {
    TORCH_CHECK(pool_ids->scalar_type() == at::kLong, "pool_ids must be int64, got ",
                pool_ids->scalar_type());
    TORCH_CHECK(pool_ids->dim() == 1 && pool_ids->size(0) == P, "pool_ids must be [P] = [", P,
                "], got ", pool_ids->sizes());
    TORCH_CHECK(pool_ids->device() == query.device(), "pool_ids is on ", pool_ids->device(),
                " but query is on ", query.device());
  }
  if (exclude_ids) {
    TORCH_CHECK(exclude_ids->scalar_type() == at::kLong, "exclude_ids must be int64, got ",
                exclude_ids->scalar_type());
    TORCH_CHECK(exclude_ids->dim() == 2 && exclude_ids->size(0) == B,
                "exclude_ids must be [B, T] with B = ", B, ", got ", exclude_ids->sizes());
    TORCH_CHECK(exclude_ids->device() == query.device(), "exclude_ids is on ",
                exclude_ids->device(), " but query is on ", query.device());
  }
  if (pool_log_q) {
    TORCH_CHECK(at::isFloatingType(pool_log_q->scalar_type()),
                "pool_log_q must be floating point, got ", pool_log_q->scalar_type());
    TORCH_CHECK(pool_log_q->dim() == 1 && pool_log_q->size(0) == P, "pool_log_q must be [P] = [",
                P, "], got ", pool_log_q->sizes());
    TORCH_CHECK(pool_log_q->device() == query.device(), "pool_log_q is on ",
                pool_log_q->device(), " but query is on ", query.device());
  }
}

// Each row's excluded pool positions in CSR form: row b excludes pool rows
// position[ptr[b] .. ptr[b + 1]). A pool row is excluded from row b when its id (pool_ids[i], or
// i itself without pool_ids) equals a non-negative entry of exclude_ids[b, :]; -1 is padding.
// Built with tensor ops on the inputs' device, so the CPU and CUDA kernels mask the same
// positions. Sizes: ptr [B + 1] int64, position [nnz] int64 with nnz <= B * T * (copies of an id).
struct ExcludedPositions {
  at::Tensor ptr;
  at::Tensor position;
  bool defined() const { return ptr.defined(); }
};

inline ExcludedPositions excluded_positions(const std::optional<at::Tensor>& pool_ids,
                                            const std::optional<at::Tensor>& exclude_ids,
                                            int64_t P) {
  ExcludedPositions out;
  if (!exclude_ids.has_value() || exclude_ids->numel() == 0) return out;
  const at::Tensor ex = exclude_ids->contiguous();  // [B, T]
  const int64_t B = ex.size(0);
  const auto long_opts = ex.options().dtype(at::kLong);
  at::Tensor row_counts;
  if (!pool_ids.has_value()) {
    const at::Tensor valid = (ex >= 0).logical_and_(ex < P);
    row_counts = valid.sum(1);
    out.position = ex.masked_select(valid);  // row-major, so grouped by row
  } else {
    // Every pool row whose id matches: sort the ids once, then each exclusion is a range.
    const auto [sorted_ids, order] = at::sort(*pool_ids, /*stable=*/true, /*dim=*/0,
                                               /*descending=*/false);
    const at::Tensor lo = at::searchsorted(sorted_ids, ex, /*out_int32=*/false, /*right=*/false);
    const at::Tensor hi = at::searchsorted(sorted_ids, ex, /*out_int32=*/false, /*right=*/true);
    const at::Tensor count = at::where(ex >= 0, hi - lo, at::zeros({}, long_opts));  // [B, T]
    row_counts = count.sum(1);
    const at::Tensor flat_count = count.reshape({-1});
    const int64_t nnz = flat_count.sum().item<int64_t>();
    const at::Tensor entry = at::repeat_interleave(at::arange(B * ex.size(1), long_opts),
                                                   flat_count, /*dim=*/0, nnz);
    const at::Tensor first = at::cumsum(flat_count, 0) - flat_count;  // exclusive prefix sum
    const at::Tensor within = at::arange(nnz, long_opts) - first.index_select(0, entry);
    out.position = order.index_select(0, lo.reshape({-1}).index_select(0, entry) + within);
  }
  out.ptr = at::cat({at::zeros({1}, long_opts), at::cumsum(row_counts, 0)});
  out.position = out.position.contiguous();
  return out;
}

}  // namespace fastsoftmax
