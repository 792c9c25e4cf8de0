// Torch glue of the CUDA top-k inner-product op: argument checks, device guard and stream, the
// chunked cuBLAS scores, and the choice between the in-kernel selection (topk_kernels.cu) and the
// sort path for what the kernels do not cover.
//
// Scores are computed one chunk of items at a time into a [B, C] float32 buffer of at most
// kChunkBytes, so extra memory is O(B * k + chunk), never [B x N].
//   * kernel path (float scores, k <= kTopkMaxKernelK, N <= 2^32 - 2): each chunk is merged into a
//     running [B, k] list of packed keys by launch_topk_select.
//   * sort path (float64 inputs, larger k, or more items): the running [B, k] list and the chunk
//     are concatenated and stable-sorted by score, descending; because the running entries come
//     first and carry lower indices, stable order breaks ties by the lower index. Exact too, but
//     the sort costs O((k + C) log(k + C)) per row and chunk.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <tuple>

#include "common/topk.h"
#include "cuda/topk_kernels.cuh"
#include "topk_checks.h"

namespace fastsoftmax {
namespace cuda {
namespace {

// The score chunk: 64 MiB keeps it in reach of the L2 on H100/H200 for the selection that reads
// it right after cuBLAS wrote it, and bounds the op's extra memory.
constexpr int64_t kChunkBytes = int64_t(64) << 20;
constexpr int64_t kMinChunkCols = 1024;

int64_t chunk_cols(int64_t B, int64_t N, int64_t bytes_per_score) {
  const int64_t cols = kChunkBytes / std::max<int64_t>(1, B * bytes_per_score);
  return std::min(N, std::max(kMinChunkCols, cols));
}

// Raw inner products of all queries with items [c0, c0 + cols), in the acc dtype.
at::Tensor chunk_scores(const at::Tensor& query, const at::Tensor& items, int64_t c0,
                        int64_t cols, at::Tensor& buffer) {
  const int64_t B = query.size(0);
  at::Tensor out = buffer.narrow(0, 0, B * cols).view({B, cols});
  at::Tensor w = items.narrow(0, c0, cols);
  if (query.size(1) == 0) {
    out.zero_();
  } else if (query.scalar_type() == at::kHalf || query.scalar_type() == at::kBFloat16) {
    // NB: fp32 accumulation and fp32 output; products of fp16/bf16 values are exact in fp32.
    at::mm_out(out, query, w.t(), at::kFloat);
  } else {
    at::mm_out(out, query, w.t());
  }
  return out;
}

// Each row's exclusion segment sorted ascending (row-major keys row * N + item keep rows apart).
at::Tensor sorted_exclusions(const at::Tensor& offsets, const at::Tensor& indices, int64_t B,
                             int64_t N, at::Tensor* rows_out) {
  at::Tensor rows = at::repeat_interleave(offsets.diff(), indices.size(0));
  at::Tensor keys = rows * N + indices;
  at::Tensor sorted = std::get<0>(keys.sort());
  if (rows_out != nullptr) *rows_out = rows;
  return (sorted - rows * N).contiguous();
}

void kernel_path(const at::Tensor& query, const at::Tensor& items, int64_t k,
                 const at::Tensor& bias, const at::Tensor& ex_offsets, const at::Tensor& ex_sorted,
                 at::Tensor& out_scores, at::Tensor& out_indices) {
  const int64_t B = query.size(0), N = items.size(0);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t C = chunk_cols(B, N, sizeof(float));
  auto opts = query.options();
  at::Tensor buffer = at::empty({B * C}, opts.dtype(at::kFloat));
  at::Tensor run_keys = at::zeros({B, k}, opts.dtype(at::kLong));  // 0 = empty slot
  const int64_t max_slices = topk_plan_slices(B, C);
  at::Tensor partial;
  if (max_slices > 1) partial = at::empty({B, max_slices, k}, opts.dtype(at::kLong));

  TopkSelectParams p;
  p.rows = B;
  p.k = k;
  p.bias = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  p.ex_offsets = ex_offsets.defined() ? ex_offsets.const_data_ptr<int64_t>() : nullptr;
  p.ex_sorted = ex_sorted.defined() ? ex_sorted.const_data_ptr<int64_t>() : nullptr;
  p.run_keys = reinterpret_cast<uint64_t*>(run_keys.data_ptr<int64_t>());
  p.partial_keys =
      partial.defined() ? reinterpret_cast<uint64_t*>(partial.data_ptr<int64_t>()) : nullptr;
  for (int64_t c0 = 0; c0 < N; c0 += C) {
    const int64_t cols = std::min(C, N - c0);
    at::Tensor scores = chunk_scores(query, items, c0, cols, buffer);
    p.scores = scores.const_data_ptr<float>();
    p.cols = cols;
    p.col0 = c0;
    p.slices = std::min(max_slices, topk_plan_slices(B, cols));
    launch_topk_select(p, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  launch_topk_finalize(p.run_keys, B, k, out_scores.data_ptr<float>(),
                       out_indices.data_ptr<int64_t>(), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void sort_path(const at::Tensor& query, const at::Tensor& items, int64_t k, const at::Tensor& bias,
               const at::Tensor& ex_sorted, const at::Tensor& ex_rows, at::Tensor& out_scores,
               at::Tensor& out_indices) {
  const int64_t B = query.size(0), N = items.size(0);
  const auto acc = out_scores.scalar_type();
  const double neg_inf = -std::numeric_limits<double>::infinity();
  // Per score: the chunk, its index, the concatenation and the sort's values and order.
  const int64_t C = chunk_cols(B, N, 4 * (at::elementSize(acc) + 8));
  auto opts = query.options();
  at::Tensor buffer = at::empty({B * C}, opts.dtype(acc));
  at::Tensor run_s = at::empty({B, 0}, opts.dtype(acc));
  at::Tensor run_i = at::empty({B, 0}, opts.dtype(at::kLong));
  for (int64_t c0 = 0; c0 < N; c0 += C) {
    const int64_t cols = std::min(C, N - c0);
    at::Tensor s = chunk_scores(query, items, c0, cols, buffer);
    if (bias.defined()) s.add_(bias.narrow(0, c0, cols).to(acc));
    s.masked_fill_(s.isnan(), neg_inf);  // NaN is not eligible
    if (ex_sorted.defined() && ex_sorted.numel() > 0) {
      at::Tensor in_chunk = (ex_sorted >= c0).logical_and_(ex_sorted < c0 + cols);
      at::Tensor cols_hit = ex_sorted.masked_select(in_chunk) - c0;
      at::Tensor rows_hit = ex_rows.masked_select(in_chunk);
      s.index_put_({rows_hit, cols_hit}, at::scalar_tensor(neg_inf, s.options()));
    }
    at::Tensor idx = at::arange(c0, c0 + cols, opts.dtype(at::kLong)).expand({B, cols});
    at::Tensor all_s = at::cat({run_s, s}, 1);
    at::Tensor all_i = at::cat({run_i, idx}, 1);
    auto [values, order] = all_s.sort(/*stable=*/true, /*dim=*/1, /*descending=*/true);
    const int64_t keep = std::min(k, values.size(1));
    run_s = values.narrow(1, 0, keep).contiguous();
    run_i = all_i.gather(1, order.narrow(1, 0, keep));
  }
  out_scores.copy_(run_s);
  out_indices.copy_(at::where(run_s == neg_inf, at::scalar_tensor(kTopkPadIndex, run_i.options()),
                              run_i));
}

std::tuple<at::Tensor, at::Tensor> topk_inner_product_cuda(
    const at::Tensor& query,                           // [B, d] float16/bfloat16/float32/float64
    const at::Tensor& items,                           // [N, d] same dtype
    int64_t k,
    const std::optional<at::Tensor>& bias,             // [N] floating
    const std::optional<at::Tensor>& exclude_offsets,  // [B + 1] int64
    const std::optional<at::Tensor>& exclude_indices,  // [E] int64
    bool sorted) {
  check_topk_args(query, items, k, bias, exclude_offsets, exclude_indices);
  TORCH_CHECK(query.is_cuda(), "topk_inner_product_cuda: query must be a CUDA tensor");
  c10::cuda::CUDAGuard device_guard(query.device());
  const int64_t B = query.size(0), N = items.size(0);
  const auto acc = query.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto out_scores = at::empty({B, k}, query.options().dtype(acc));
  auto out_indices = at::empty({B, k}, query.options().dtype(at::kLong));
  if (B == 0) return {out_scores, out_indices};

  at::Tensor ex_offsets, ex_sorted, ex_rows;
  if (exclude_offsets.has_value()) {
    check_topk_exclusion_values(*exclude_offsets, *exclude_indices, N);  // NB: syncs
    ex_offsets = exclude_offsets->contiguous();
    ex_sorted = sorted_exclusions(ex_offsets, *exclude_indices, B, N, &ex_rows);
  }
  at::Tensor bias_acc;
  if (bias.has_value()) bias_acc = bias->to(acc).contiguous();

  // NB: exactness needs full fp32 products; TF32 (if the user enabled it) would round the inputs.
  at::NoTF32Guard no_tf32;
  // `sorted` needs no branch: both paths return each row best first, a valid unspecified order.
  (void)sorted;
  const bool kernel_ok = acc == at::kFloat && k <= kTopkMaxKernelK && N <= int64_t(0xFFFFFFFE);
  if (kernel_ok) {
    kernel_path(query, items, k, bias_acc, ex_offsets, ex_sorted, out_scores, out_indices);
  } else {
    sort_path(query, items, k, bias_acc, ex_sorted, ex_rows, out_scores, out_indices);
  }
  return {out_scores, out_indices};
}

// The bf16-scan op's contract is the exact fp32 top-k. On CUDA the fp32 cuBLAS scan above is
// already the fast path, and it meets that contract directly, so items_bf16 is only checked.
std::tuple<at::Tensor, at::Tensor> topk_inner_product_bf16_rescored_cuda(
    const at::Tensor& query, const at::Tensor& items, const at::Tensor& items_bf16, int64_t k,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& exclude_offsets,
    const std::optional<at::Tensor>& exclude_indices, bool sorted) {
  TORCH_CHECK(query.scalar_type() == at::kFloat,
              "topk_inner_product_bf16_rescored: query and items must be float32, got ",
              query.scalar_type());
  TORCH_CHECK(items_bf16.scalar_type() == at::kBFloat16 && items_bf16.sizes() == items.sizes() &&
                  items_bf16.device() == items.device(),
              "topk_inner_product_bf16_rescored: items_bf16 must be a bfloat16 copy of items, "
              "shape ", items.sizes(), ", got ", items_bf16.scalar_type(), " ",
              items_bf16.sizes());
  return topk_inner_product_cuda(query, items, k, bias, exclude_offsets, exclude_indices, sorted);
}

}  // namespace
}  // namespace cuda
}  // namespace fastsoftmax

TORCH_LIBRARY_IMPL(fastsoftmax, CUDA, m) {
  m.impl("topk_inner_product", &fastsoftmax::cuda::topk_inner_product_cuda);
  m.impl("topk_inner_product_bf16_rescored",
         &fastsoftmax::cuda::topk_inner_product_bf16_rescored_cuda);
}
