// Argument checks of fastsoftmax::alias_sample shared by the CPU and CUDA glue: the messages
// name the argument, and they run before any kernel reads memory.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace fastsoftmax {

inline void check_alias_sample_args(const at::Tensor& alias_prob, const at::Tensor& alias,
                                    int64_t num, const std::optional<at::Tensor>& log_weight) {
  if (log_weight.has_value()) {
    TORCH_CHECK_VALUE(log_weight->dim() == 1 && log_weight->scalar_type() == at::kFloat &&
                          log_weight->numel() == alias_prob.numel(),
                      "log_weight must be a 1-D float32 tensor like alias_prob, got ",
                      log_weight->scalar_type(), " of shape ", log_weight->sizes());
    TORCH_CHECK_VALUE(log_weight->device() == alias_prob.device(),
                      "log_weight must be on alias_prob's device");
  }
  TORCH_CHECK_VALUE(alias_prob.dim() == 1 && alias_prob.scalar_type() == at::kFloat,
                    "alias_prob must be a 1-D float32 tensor, got ", alias_prob.scalar_type(),
                    " of shape ", alias_prob.sizes());
  TORCH_CHECK_VALUE(alias.dim() == 1 && alias.scalar_type() == at::kLong,
                    "alias must be a 1-D int64 tensor, got ", alias.scalar_type(), " of shape ",
                    alias.sizes());
  TORCH_CHECK_VALUE(alias.numel() == alias_prob.numel(), "alias has ", alias.numel(),
                    " entries but alias_prob has ", alias_prob.numel());
  TORCH_CHECK_VALUE(alias_prob.numel() > 0, "the alias table is empty");
  TORCH_CHECK_VALUE(alias.device() == alias_prob.device(),
                    "alias and alias_prob must be on one device, got ", alias.device(), " and ",
                    alias_prob.device());
  TORCH_CHECK_VALUE(num >= 0, "num must be >= 0, got ", num);
}

}  // namespace fastsoftmax
