// Row epilogues applied to a tile of scores while it is still in cache.
//
// The float versions are compiled several times (AVX-512, AVX2, baseline) and picked at load time
// by the CPU's features (GCC target_clones), so the library needs no -march=native to vectorise
// the exp. The double versions exist for gradcheck and favour clarity.
#pragma once

#include <cstdint>

namespace fastsoftmax {
namespace cpu {

// s[j] <- s[j] * inv_tau + offset[j] (offset may be null). Returns max_j s[j] (-inf when n == 0).
float scale_shift_max(float* s, int64_t n, float inv_tau, const float* offset);
double scale_shift_max(double* s, int64_t n, double inv_tau, const double* offset);

// sum_j exp(s[j] - max); -inf entries contribute 0.
float sum_exp_shifted(const float* s, int64_t n, float max);
double sum_exp_shifted(const double* s, int64_t n, double max);

// g[j] <- coef * exp(s[j] * inv_tau + offset[j] - lse): the gradient of the loss w.r.t. the
// raw inner product s[j] is g[j] * inv_tau; we fold inv_tau into coef at the call site.
void softmax_grad_inplace(float* s, int64_t n, float inv_tau, const float* offset, float lse,
                          float coef);
void softmax_grad_inplace(double* s, int64_t n, double inv_tau, const double* offset, double lse,
                          double coef);

// Sets s[j] = value wherever ids[j] == hit.
void mask_ids(float* s, int64_t n, const int64_t* ids, int64_t hit, float value);
void mask_ids(double* s, int64_t n, const int64_t* ids, int64_t hit, double value);

}  // namespace cpu
}  // namespace fastsoftmax
