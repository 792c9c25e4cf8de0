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
}
