// Plain C++ interface of the CUDA alias-table sampler (no torch headers; the glue is
// sampling_cuda.cpp).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fastsoftmax {
namespace cuda {

// ids[i] = draw i of the alias table (prob [n] float32, alias [n] int64), i < num, from the
// Philox stream (seed, offset): the same ids as the CPU kernel.
// With log_weight (else null): log_q[i] = log_weight[ids[i]] + log_shift.
void launch_alias_sample(const float* prob, const int64_t* alias, int64_t n, int64_t num,
                         uint64_t seed, uint64_t offset, int64_t* ids, const float* log_weight,
                         float log_shift, float* log_q, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastsoftmax
