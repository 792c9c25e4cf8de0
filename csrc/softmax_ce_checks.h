// Argument checks shared by the CPU and CUDA entry points of the softmax cross-entropy ops.
// The Python layer (fastsoftmax/functional.py) validates user input with friendlier messages;
// these checks guard the ops when they are called directly through torch.ops.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <optional>

namespace fastsoftmax {

inline void check_same_device(const at::Tensor& ref, const std::optional<at::Tensor>& t,
                              const char* name) {
  if (t.has_value()) {
    TORCH_CHECK(t->device() == ref.device(), name, " is on ", t->device(), " but query is on ",
                ref.device());
  }
}

inline void check_ids(const std::optional<at::Tensor>& t, const char* name) {
  if (t.has_value()) {
    TORCH_CHECK(t->scalar_type() == at::kLong, name, " must be int64, got ", t->scalar_type());
  }
}

// Checks the shapes of the sampled softmax op (positives already [B, T, d], weights [B, T]).
inline void check_sampled_softmax_args(const at::Tensor& query, const at::Tensor& positives,
                                       const at::Tensor& candidates,
                                       const std::optional<at::Tensor>& positive_ids,
                                       const std::optional<at::Tensor>& candidate_ids,
                                       const at::Tensor& positive_weights,
                                       const std::optional<at::Tensor>& positive_log_q,
                                       const std::optional<at::Tensor>& candidate_log_q,
                                       const std::optional<at::Tensor>& candidate_index,
                                       double temperature) {
  TORCH_CHECK(query.dim() == 2, "query must be [B, d], got ", query.sizes());
  TORCH_CHECK(positives.dim() == 3, "positives must be [B, T, d], got ", positives.sizes());
  TORCH_CHECK(candidates.dim() == 2, "candidates must be [C, d], got ", candidates.sizes());
  const int64_t B = query.size(0), d = query.size(1), T = positives.size(1);
  const int64_t C = candidates.size(0);
  TORCH_CHECK(positives.size(0) == B && positives.size(2) == d,
              "positives must be [B, T, d] = [", B, ", T, ", d, "], got ", positives.sizes());
  TORCH_CHECK(candidates.size(1) == d, "candidates must have d = ", d, ", got ",
              candidates.sizes());
  TORCH_CHECK(positives.scalar_type() == query.scalar_type() &&
                  candidates.scalar_type() == query.scalar_type(),
              "query, positives and candidates must share a dtype");
  TORCH_CHECK(temperature > 0, "temperature must be > 0, got ", temperature);
  check_ids(positive_ids, "positive_ids");
  check_ids(candidate_ids, "candidate_ids");
  check_ids(candidate_index, "candidate_index");
  TORCH_CHECK(positive_weights.sizes() == at::IntArrayRef({B, T}),
              "positive_weights must be [B, T], got ", positive_weights.sizes());
  if (positive_ids) {
    TORCH_CHECK(positive_ids->sizes() == at::IntArrayRef({B, T}),
                "positive_ids must be [B, T], got ", positive_ids->sizes());
  }
  if (candidate_ids) {
    TORCH_CHECK(candidate_ids->sizes() == at::IntArrayRef({C}), "candidate_ids must be [C], got ",
                candidate_ids->sizes());
  }
  if (positive_log_q) {
    TORCH_CHECK(positive_log_q->sizes() == at::IntArrayRef({B, T}),
                "positive_log_q must be [B, T], got ", positive_log_q->sizes());
  }
  if (candidate_index) {
    TORCH_CHECK(candidate_index->dim() == 2 && candidate_index->size(0) == B,
                "candidate_index must be [B, H], got ", candidate_index->sizes());
    if (candidate_log_q) {
      TORCH_CHECK(candidate_log_q->sizes() == candidate_index->sizes(),
                  "candidate_log_q must be [B, H] like candidate_index, got ",
                  candidate_log_q->sizes());
    }
  } else if (candidate_log_q) {
    TORCH_CHECK(candidate_log_q->sizes() == at::IntArrayRef({C}),
                "candidate_log_q must be [C], got ", candidate_log_q->sizes());
  }
  for (const auto* t : {&positive_ids, &candidate_ids, &positive_log_q, &candidate_log_q,
                        &candidate_index}) {
    check_same_device(query, *t, "an optional argument");
  }
  TORCH_CHECK(positives.device() == query.device() && candidates.device() == query.device() &&
                  positive_weights.device() == query.device(),
              "positives, candidates and positive_weights must be on the device of query");
}

inline void check_full_softmax_args(const at::Tensor& query, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias,
                                    const at::Tensor& targets, const at::Tensor& target_weights,
                                    double temperature) {
  TORCH_CHECK(query.dim() == 2, "query must be [B, d], got ", query.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == query.size(1),
              "weight must be [N, d] with d = ", query.size(1), ", got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == query.scalar_type(), "weight must have the dtype of query");
  TORCH_CHECK(targets.dim() == 2 && targets.size(0) == query.size(0),
              "targets must be [B, T], got ", targets.sizes());
  TORCH_CHECK(targets.scalar_type() == at::kLong, "targets must be int64");
  TORCH_CHECK(target_weights.sizes() == targets.sizes(), "target_weights must be [B, T], got ",
              target_weights.sizes());
  if (bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "bias must be [N], got ",
                bias->sizes());
  }
  TORCH_CHECK(temperature > 0, "temperature must be > 0, got ", temperature);
  check_same_device(query, bias, "bias");
  TORCH_CHECK(weight.device() == query.device() && targets.device() == query.device() &&
                  target_weights.device() == query.device(),
              "weight, targets and target_weights must be on the device of query");
}

}  // namespace fastsoftmax
