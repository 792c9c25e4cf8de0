// Torch glue of the CUDA alias-table sampler: checks, device guard, stream, launch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "cuda/sampling_kernels.cuh"
#include "sampling_checks.h"

namespace fastsoftmax {
namespace cuda {

std::tuple<at::Tensor, at::Tensor> alias_sample_cuda(
    const at::Tensor& alias_prob, const at::Tensor& alias, int64_t num, int64_t seed,
    int64_t offset, const std::optional<at::Tensor>& log_weight, double log_shift) {
  check_alias_sample_args(alias_prob, alias, num, log_weight);
  const c10::cuda::CUDAGuard guard(alias_prob.device());
  const at::Tensor prob_c = alias_prob.contiguous();
  const at::Tensor alias_c = alias.contiguous();
  at::Tensor out = at::empty({num}, alias.options());
  const at::Tensor log_weight_c = log_weight.has_value() ? log_weight->contiguous() : at::Tensor();
  at::Tensor log_q = at::empty({log_weight.has_value() ? num : 0}, alias_prob.options());
  launch_alias_sample(prob_c.const_data_ptr<float>(), alias_c.const_data_ptr<int64_t>(),
                      prob_c.numel(), num, static_cast<uint64_t>(seed),
                      static_cast<uint64_t>(offset), out.data_ptr<int64_t>(),
                      log_weight.has_value() ? log_weight_c.const_data_ptr<float>() : nullptr,
                      static_cast<float>(log_shift), log_q.data_ptr<float>(),
                      c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, log_q};
}

}  // namespace cuda
}  // namespace fastsoftmax

TORCH_LIBRARY_IMPL(fastsoftmax, CUDA, m) {
  m.impl("alias_sample", &fastsoftmax::cuda::alias_sample_cuda);
}
