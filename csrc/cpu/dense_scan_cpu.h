// The fused scan of a batch of queries against a shared candidate matrix (DESIGN.md §3):
// scores are produced one cache-sized tile at a time by a BLAS matmul and reduced on the spot,
// so the [B x C] score matrix never exists. Used by sampled softmax with shared candidates and by
// full softmax (every item a candidate).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fastsoftmax {
namespace cpu {

// What distinguishes one candidate scan from another. Scores are
//   s[b, j] = <query[b], candidates[j]> * inv_tau + offset[j]     (offset optional, [C] acc dtype)
// and are masked (excluded from the softmax) where candidate_ids[j] equals a valid
// (!= -1) entry of hit_ids[b, :] (both optional).
struct DenseScan {
  at::Tensor query;        // [B, d] contiguous, input dtype
  at::Tensor candidates;   // [C, d] contiguous, input dtype
  at::Tensor offset;       // [C] acc dtype, or undefined
  at::Tensor hit_ids;      // [B, T] int64, or undefined
  at::Tensor candidate_ids;  // [C] int64, or undefined
  double inv_tau = 1.0;
};

// Per-row log-sum-exp of the unmasked scores; [B] in the acc dtype (float for fp16/bf16/fp32,
// double for double). Rows with no unmasked candidate get -inf.
at::Tensor dense_scan_logsumexp(const DenseScan& scan);

// Gradients of sum_b coef[b] * logsumexp_b w.r.t. query, candidates and offset:
//   G[b, j] = coef[b] * softmax_b(s)[j];   grad_query += G @ candidates * inv_tau;
//   grad_candidates += G^T @ query * inv_tau;   grad_offset += sum_b G[b, j].
// grad_query [B, d] and grad_candidates [C, d] are acc-dtype tensors accumulated into;
// grad_offset is [C] acc dtype or undefined. Rows with coef == 0 are skipped (their lse may be
// -inf).
void dense_scan_backward(const DenseScan& scan, const at::Tensor& lse, const at::Tensor& coef,
                         at::Tensor& grad_query, at::Tensor& grad_candidates,
                         at::Tensor& grad_offset);

// Forward and backward together, for callers that know each row's coefficient at forward time
// (a reduced loss): computes lse_b = logaddexp(extra_lse[b], logsumexp of the row's unmasked
// scores) and accumulates the gradients of sum_b coef[b] * lse_b into grad_query [B, d] and
// grad_candidates [C, d] (acc dtype), with three matmuls per tile instead of the four of a
// separate forward and backward: a panel of rows x C scores is kept between the two passes.
// extra_lse [B] acc (-inf for none). Returns lse [B].
at::Tensor dense_scan_fused(const DenseScan& scan, const at::Tensor& extra_lse,
                            const at::Tensor& coef, at::Tensor& grad_query,
                            at::Tensor& grad_candidates);

}  // namespace cpu
}  // namespace fastsoftmax
