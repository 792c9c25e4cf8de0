// The op schemas of fastsoftmax. Kernels live in cpu/ and cuda/ and register per dispatch key;
// the pybind11 module (python_module.cpp) carries build-information helpers only, never ops.
// This file has no Python dependency, so the CMake build links it into a plain libtorch library.
#include <torch/library.h>

TORCH_LIBRARY(fastsoftmax, m) {
  // Per-row sampled softmax cross-entropy (DESIGN.md §4). positives [B, T, d], weights [B, T]
  // (already zero at padding), candidate_index [B, H] selects per-row candidates.
  // Returns (loss [B], lse [B]) in the accumulation dtype (float32, or float64 for float64).
  m.def(
      "sampled_softmax_ce(Tensor query, Tensor positives, Tensor candidates, "
      "Tensor? positive_ids, Tensor? candidate_ids, Tensor positive_weights, "
      "Tensor? positive_log_q, Tensor? candidate_log_q, Tensor? candidate_index, "
      "float temperature, bool remove_accidental_hits) -> (Tensor, Tensor)");
  m.def(
      "sampled_softmax_ce_backward(Tensor grad_loss, Tensor query, Tensor positives, "
      "Tensor candidates, Tensor? positive_ids, Tensor? candidate_ids, Tensor positive_weights, "
      "Tensor? positive_log_q, Tensor? candidate_log_q, Tensor? candidate_index, Tensor lse, "
      "float temperature, bool remove_accidental_hits) -> (Tensor, Tensor, Tensor)");
  // Forward and backward of sum_b row_coef[b] * loss_b together (reduced losses in training):
  // returns (loss [], grad_query, grad_positives, grad_candidates).
  m.def(
      "sampled_softmax_ce_fused(Tensor query, Tensor positives, Tensor candidates, "
      "Tensor? positive_ids, Tensor? candidate_ids, Tensor positive_weights, "
      "Tensor? positive_log_q, Tensor? candidate_log_q, Tensor? candidate_index, "
      "Tensor row_coef, float temperature, bool remove_accidental_hits) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // Full softmax over every row of weight [N, d]; targets [B, T] with -1 padding.
  // The backward returns an empty grad_bias when bias is None.
  m.def(
      "full_softmax_ce(Tensor query, Tensor weight, Tensor? bias, Tensor targets, "
      "Tensor target_weights, float temperature) -> (Tensor, Tensor)");
  m.def(
      "full_softmax_ce_backward(Tensor grad_loss, Tensor query, Tensor weight, Tensor? bias, "
      "Tensor targets, Tensor target_weights, Tensor lse, float temperature) "
      "-> (Tensor, Tensor, Tensor)");

  // ---- top-k inner-product retrieval (issue 3) ----
  // Exact top-k of query [B, d] . items [N, d]^T (+ bias [N]) per row, skipping the items listed
  // for that row in the CSR pair exclude_offsets [B + 1] / exclude_indices [E] (int64).
  // Returns (scores [B, k] float32, or float64 for float64 inputs; indices [B, k] int64), higher
  // score first and lower index on ties when sorted; NaN/-inf scores are never returned and short
  // rows are padded with (-inf, -1). Not differentiable.
  m.def(
      "topk_inner_product(Tensor query, Tensor items, int k, Tensor? bias, "
      "Tensor? exclude_offsets, Tensor? exclude_indices, bool sorted) -> (Tensor, Tensor)");
  // The same result for float32 query/items, computed by a bf16 scan (items_bf16 [N, d] is the
  // rounded table) that over-fetches candidates and re-scores them in float64; rows whose
  // certificate fails are recomputed exactly. CPU only.
  m.def(
      "topk_inner_product_bf16_rescored(Tensor query, Tensor items, Tensor items_bf16, int k, "
      "Tensor? bias, Tensor? exclude_offsets, Tensor? exclude_indices, bool sorted) "
      "-> (Tensor, Tensor)");
  // Hard-negative mining over a candidate pool [P, d]: per row, `num` pool indices ([B, num]
  // int64, -1 where nothing is eligible) and their log expected counts ([B, num], acc dtype).
  // mode "sample" draws with replacement from softmax(score / temperature) over the eligible pool
  // (Philox keyed by seed, offset; row, draw); "topk" takes the highest scores. exclude_ids
  // [B, T] (-1 padding) removes pool rows whose pool_ids [P] (default: the pool index) match.
  // Not differentiable.
  m.def(
      "mine_hard_negatives(Tensor query, Tensor pool, Tensor? pool_ids, Tensor? exclude_ids, "
      "Tensor? pool_log_q, int num, str mode, float temperature, int seed, int offset) "
      "-> (Tensor, Tensor)");

  // ---- negative sampling (issue 4) ----
  // `num` ids from a Walker/Vose alias table (alias_prob [N] float32, alias [N] int64): draw i
  // takes bucket k = floor(u * N) and keeps it when coin < alias_prob[k], else alias[k], with
  // (u, coin) from Philox block (i, seed, offset) (common/alias.h). With log_weight [N] float32
  // also returns log_weight[id] + log_shift per draw (the log expected counts), else an empty
  // [0] tensor. Not differentiable.
  m.def(
      "alias_sample(Tensor alias_prob, Tensor alias, int num, int seed, int offset, "
      "Tensor? log_weight=None, float log_shift=0.0) -> (Tensor, Tensor)");
}
