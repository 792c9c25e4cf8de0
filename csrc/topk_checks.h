// Argument checks shared by the CPU and CUDA entry points of topk_inner_product.
// The Python layer (fastsoftmax/retrieval.py) validates user input with ValueError/TypeError
// messages first; these checks guard the op when it is called directly through torch.ops, and
// under torch.compile, where Python skips the checks that need tensor values.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>

namespace fastsoftmax {

inline bool is_topk_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

// Shapes, dtypes and devices; needs no tensor values.
inline void check_topk_args(const at::Tensor& query, const at::Tensor& items, int64_t k,
                            const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& exclude_offsets,
                            const std::optional<at::Tensor>& exclude_indices) {
  TORCH_CHECK(query.dim() == 2, "topk_inner_product: query must be [B, d], got ", query.sizes());
  TORCH_CHECK(items.dim() == 2, "topk_inner_product: items must be [N, d], got ", items.sizes());
  TORCH_CHECK(is_topk_float(query.scalar_type()),
              "topk_inner_product: query must be float16, bfloat16, float32 or float64, got ",
              query.scalar_type());
  TORCH_CHECK(items.scalar_type() == query.scalar_type(), "topk_inner_product: items dtype (",
              items.scalar_type(), ") must equal query dtype (", query.scalar_type(), ")");
  TORCH_CHECK(items.size(1) == query.size(1), "topk_inner_product: items have d = ",
              items.size(1), " but query has d = ", query.size(1));
  TORCH_CHECK(items.device() == query.device(), "topk_inner_product: items are on ",
              items.device(), " but query is on ", query.device());
  const int64_t N = items.size(0);
  TORCH_CHECK(k >= 1, "topk_inner_product: k must be >= 1, got ", k);
  TORCH_CHECK(k <= N, "topk_inner_product: k = ", k, " exceeds the number of items N = ", N);
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, "topk_inner_product: bias must be [N] = [",
                N, "], got ", bias->sizes());
    TORCH_CHECK(is_topk_float(bias->scalar_type()),
                "topk_inner_product: bias must be a floating tensor, got ", bias->scalar_type());
    TORCH_CHECK(bias->device() == query.device(), "topk_inner_product: bias is on ",
                bias->device(), " but query is on ", query.device());
  }
  TORCH_CHECK(exclude_offsets.has_value() == exclude_indices.has_value(),
              "topk_inner_product: exclude_offsets and exclude_indices must be given together");
  if (exclude_offsets.has_value()) {
    const at::Tensor& off = *exclude_offsets;
    const at::Tensor& idx = *exclude_indices;
    TORCH_CHECK(off.scalar_type() == at::kLong && idx.scalar_type() == at::kLong,
                "topk_inner_product: exclude_offsets and exclude_indices must be int64, got ",
                off.scalar_type(), " and ", idx.scalar_type());
    TORCH_CHECK(off.dim() == 1 && off.size(0) == query.size(0) + 1,
                "topk_inner_product: exclude_offsets must be [B + 1] = [", query.size(0) + 1,
                "], got ", off.sizes());
    TORCH_CHECK(idx.dim() == 1, "topk_inner_product: exclude_indices must be 1-D, got ",
                idx.sizes());
    TORCH_CHECK(off.device() == query.device() && idx.device() == query.device(),
                "topk_inner_product: exclude_offsets/exclude_indices are on ", off.device(), "/",
                idx.device(), " but query is on ", query.device());
  }
}

// The CSR exclusion lists: offsets[0] == 0, non-decreasing, offsets[B] == E, indices in [0, N).
// Reads tensor values (a device sync on CUDA).
inline void check_topk_exclusion_values(const at::Tensor& offsets, const at::Tensor& indices,
                                        int64_t N) {
  const int64_t E = indices.size(0);
  const auto off = offsets.to(at::kCPU);
  const int64_t* o = off.const_data_ptr<int64_t>();
  const int64_t B = off.size(0) - 1;
  TORCH_CHECK(o[0] == 0, "topk_inner_product: exclude_offsets[0] must be 0, got ", o[0]);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(o[b + 1] >= o[b], "topk_inner_product: exclude_offsets must be non-decreasing, "
                "but exclude_offsets[", b + 1, "] = ", o[b + 1], " < exclude_offsets[", b,
                "] = ", o[b]);
  }
  TORCH_CHECK(o[B] == E, "topk_inner_product: exclude_offsets[-1] = ", o[B],
              " must equal len(exclude_indices) = ", E);
  if (E > 0) {
    const int64_t lo = indices.min().item<int64_t>(), hi = indices.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < N, "topk_inner_product: exclude_indices must lie in [0, N = ", N,
                "), found ", lo < 0 ? lo : hi);
  }
}

}  // namespace fastsoftmax
