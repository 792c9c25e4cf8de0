// CUDA alias-table sampler: one thread per draw (a grid-stride loop), draw i computed by the
// same function as on CPU (common/alias.h).
#include "common/alias.h"
#include "cuda/sampling_kernels.cuh"

namespace fastsoftmax {
namespace cuda {
namespace {

__global__ void alias_sample_kernel(const float* __restrict__ prob,
                                    const int64_t* __restrict__ alias, int64_t n, int64_t num,
                                    PhiloxStream stream, int64_t* __restrict__ ids,
                                    const float* __restrict__ log_weight, float log_shift,
                                    float* __restrict__ log_q) {
  const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < num;
       i += step) {
    const int64_t id = alias_draw(stream, static_cast<uint64_t>(i), prob, alias, n);
    ids[i] = id;
    if (log_weight != nullptr) log_q[i] = log_weight[id] + log_shift;
  }
}

}  // namespace

void launch_alias_sample(const float* prob, const int64_t* alias, int64_t n, int64_t num,
                         uint64_t seed, uint64_t offset, int64_t* ids, const float* log_weight,
                         float log_shift, float* log_q, cudaStream_t stream) {
  if (num == 0) return;
  constexpr int kThreads = 256;
  const int64_t wanted = (num + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(wanted < 65535 ? wanted : 65535);
  alias_sample_kernel<<<blocks, kThreads, 0, stream>>>(prob, alias, n, num,
                                                        PhiloxStream{seed, offset}, ids,
                                                        log_weight, log_shift, log_q);
}

}  // namespace cuda
}  // namespace fastsoftmax
