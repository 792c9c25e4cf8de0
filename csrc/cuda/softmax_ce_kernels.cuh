// Plain C++ interface of the CUDA softmax cross-entropy kernels (DESIGN.md §3, §4): Params
// structs of raw device pointers and sizes, and one launcher per op and direction. No torch
// headers, so the kernels compile (and can be checked) without ATen; the torch glue is
// softmax_ce_cuda.cpp.
//
// Conventions shared by every launcher:
//   * scalar_t is float, double, __half or __nv_bfloat16; acc_t = acc_type_t<scalar_t> is double
//     for double and float otherwise. Scores, log-sum-exps and gradients are computed in acc_t.
//   * Every pointer is to contiguous, row-major device memory; optional inputs are nullptr.
//   * Outputs named grad_* are acc_t buffers that the caller zero-fills; the launchers accumulate
//     into them (the caller converts them to the input dtype).
//   * Workspace is allocated by the caller, sized by plan_dense_scan(); nothing is allocated here.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace fastsoftmax {
namespace cuda {

template <typename scalar_t>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename scalar_t>
using acc_type_t = typename AccType<scalar_t>::type;

// How the fused scan of a [B, d] query block against a shared [C, d] candidate matrix is cut into
// CUDA blocks. The score matrix is cut into row tiles x column tiles (64 x 64 for float
// accumulation, 32 x 32 for double). The forward and the grad_query pass give each CUDA block one
// row tile and a contiguous range of `col_tiles_per_split` column tiles (`col_splits` ranges);
// the grad_candidates pass gives each block one column tile and a range of `row_tiles_per_split`
// row tiles (`row_splits` ranges). Splits exist only to fill the GPU when one axis is short.
//
// Workspace the caller allocates (acc_t), only for a scan that runs (B > 0 and C > 0):
//   forward:   partial_max, partial_sum                [col_splits, B]
//   backward:  grad_query_partial                      [col_splits, B, d]  if col_splits > 1
//              grad_candidates_partial                 [row_splits, C, d]  if row_splits > 1
//              grad_offset_partial                     [row_splits, C]     if row_splits > 1
//                                                                          and grad_offset is set
struct DenseScanPlan {
  int64_t row_tiles = 0;
  int64_t col_tiles = 0;
  int64_t col_splits = 0;
  int64_t col_tiles_per_split = 0;
  int64_t row_splits = 0;
  int64_t row_tiles_per_split = 0;
};

// Plans a scan of B queries against C candidates on the current CUDA device.
DenseScanPlan plan_dense_scan(int64_t B, int64_t C, bool double_acc);

// ---------------------------------------------------------------------------------------------
// sampled_softmax_ce: positives [B, T, d] plus candidates [C, d] that are shared by the batch, or
// selected per row by candidate_index [B, H] (-1 = padding).

template <typename scalar_t>
struct SampledSoftmaxCEInputs {
  using acc_t = acc_type_t<scalar_t>;
  const scalar_t* query = nullptr;            // [B, d]
  const scalar_t* positives = nullptr;        // [B, T, d]
  const scalar_t* candidates = nullptr;       // [C, d]
  const int64_t* positive_ids = nullptr;      // [B, T] (-1 = padding) or null: no padding
  const int64_t* candidate_ids = nullptr;     // [C]; read only when mask_hits
  const acc_t* positive_log_q = nullptr;      // [B, T] or null
  // Shared candidates: per-candidate score offset [C] (= -log Q) or null.
  const acc_t* candidate_offset = nullptr;
  // Per-row candidates: candidate_index [B, H] into candidates, and log Q [B, H] or null.
  const int64_t* candidate_index = nullptr;
  const acc_t* candidate_log_q = nullptr;
  bool mask_hits = false;  // NB: requires positive_ids and candidate_ids
  acc_t inv_tau = 1;
  int64_t B = 0, T = 0, d = 0, C = 0, H = 0;
  DenseScanPlan plan;  // shared candidates only
};

template <typename scalar_t>
struct SampledSoftmaxCEFwdParams : SampledSoftmaxCEInputs<scalar_t> {
  using acc_t = acc_type_t<scalar_t>;
  const acc_t* positive_weights = nullptr;  // [B, T]
  acc_t* loss = nullptr;                    // [B] out
  acc_t* lse = nullptr;                     // [B] out: log Z_b over positives and candidates
  acc_t* partial_max = nullptr;             // workspace, see DenseScanPlan
  acc_t* partial_sum = nullptr;
};

template <typename scalar_t>
struct SampledSoftmaxCEBwdParams : SampledSoftmaxCEInputs<scalar_t> {
  using acc_t = acc_type_t<scalar_t>;
  const acc_t* grad_loss = nullptr;     // [B]
  const acc_t* lse = nullptr;           // [B] from the forward
  const acc_t* valid_weights = nullptr; // [B, T], zero at padded positives
  const acc_t* total_weight = nullptr;  // [B] = sum_t valid_weights
  const acc_t* coef = nullptr;          // [B] = grad_loss * total_weight
  acc_t* grad_query = nullptr;          // [B, d] accumulated into
  acc_t* grad_positives = nullptr;      // [B, T, d] accumulated into
  acc_t* grad_candidates = nullptr;     // [C, d] accumulated into
  acc_t* grad_query_partial = nullptr;  // workspace, see DenseScanPlan
  acc_t* grad_candidates_partial = nullptr;
};

template <typename scalar_t>
void launch_sampled_softmax_ce_fwd(const SampledSoftmaxCEFwdParams<scalar_t>& p,
                                   cudaStream_t stream);
template <typename scalar_t>
void launch_sampled_softmax_ce_bwd(const SampledSoftmaxCEBwdParams<scalar_t>& p,
                                   cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// full_softmax_ce: every row of weight [N, d] is a candidate; targets [B, T] (-1 = padding).

template <typename scalar_t>
struct FullSoftmaxCEInputs {
  using acc_t = acc_type_t<scalar_t>;
  const scalar_t* query = nullptr;         // [B, d]
  const scalar_t* weight = nullptr;        // [N, d]
  const acc_t* offset = nullptr;           // [N] = bias / tau, or null
  const int64_t* targets = nullptr;        // [B, T], entries in [-1, N)
  const acc_t* target_weights = nullptr;   // [B, T], zero at padding
  acc_t inv_tau = 1;
  int64_t B = 0, T = 0, d = 0, N = 0;
  DenseScanPlan plan;
};

template <typename scalar_t>
struct FullSoftmaxCEFwdParams : FullSoftmaxCEInputs<scalar_t> {
  using acc_t = acc_type_t<scalar_t>;
  acc_t* loss = nullptr;         // [B] out
  acc_t* lse = nullptr;          // [B] out
  acc_t* partial_max = nullptr;  // workspace, see DenseScanPlan
  acc_t* partial_sum = nullptr;
};

template <typename scalar_t>
struct FullSoftmaxCEBwdParams : FullSoftmaxCEInputs<scalar_t> {
  using acc_t = acc_type_t<scalar_t>;
  const acc_t* grad_loss = nullptr;  // [B]
  const acc_t* lse = nullptr;        // [B] from the forward
  const acc_t* coef = nullptr;       // [B] = grad_loss * sum_t target_weights
  acc_t* grad_query = nullptr;       // [B, d] accumulated into
  acc_t* grad_weight = nullptr;      // [N, d] accumulated into
  acc_t* grad_offset = nullptr;      // [N] accumulated into (d loss / d offset), or null
  acc_t* grad_query_partial = nullptr;  // workspace, see DenseScanPlan
  acc_t* grad_weight_partial = nullptr;
  acc_t* grad_offset_partial = nullptr;
};

template <typename scalar_t>
void launch_full_softmax_ce_fwd(const FullSoftmaxCEFwdParams<scalar_t>& p, cudaStream_t stream);
template <typename scalar_t>
void launch_full_softmax_ce_bwd(const FullSoftmaxCEBwdParams<scalar_t>& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastsoftmax
