#include "cpu/epilogue_cpu.h"

#include <algorithm>
#include <cmath>

#include "common/math.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FS_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FS_VECTOR_CLONES
#endif

namespace fastsoftmax {
namespace cpu {

FS_VECTOR_CLONES
float scale_shift_max(float* s, int64_t n, float inv_tau, const float* offset) {
  if (offset != nullptr) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) s[j] = s[j] * inv_tau + offset[j];
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) s[j] = s[j] * inv_tau;
  }
  float m = neg_inf<float>();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = s[j] > m ? s[j] : m;
  return m;
}

FS_VECTOR_CLONES
void mask_ids(float* s, int64_t n, const int64_t* ids, int64_t hit, float value) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) s[j] = ids[j] == hit ? value : s[j];
}

void mask_ids(double* s, int64_t n, const int64_t* ids, int64_t hit, double value) {
  for (int64_t j = 0; j < n; ++j) s[j] = ids[j] == hit ? value : s[j];
}

double scale_shift_max(double* s, int64_t n, double inv_tau, const double* offset) {
  double m = neg_inf<double>();
  for (int64_t j = 0; j < n; ++j) {
    s[j] = s[j] * inv_tau + (offset != nullptr ? offset[j] : 0.0);
    m = std::max(m, s[j]);
  }
  return m;
}

FS_VECTOR_CLONES
float sum_exp_shifted(const float* s, int64_t n, float max) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) sum += fast_expf(s[j] - max);
  return sum;
}

double sum_exp_shifted(const double* s, int64_t n, double max) {
  double sum = 0.0;
  for (int64_t j = 0; j < n; ++j) sum += std::exp(s[j] - max);
  return sum;
}

FS_VECTOR_CLONES
void softmax_grad_inplace(float* s, int64_t n, float inv_tau, const float* offset, float lse,
                          float coef) {
  if (offset != nullptr) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) s[j] = coef * fast_expf(s[j] * inv_tau + offset[j] - lse);
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) s[j] = coef * fast_expf(s[j] * inv_tau - lse);
  }
}

void softmax_grad_inplace(double* s, int64_t n, double inv_tau, const double* offset, double lse,
                          double coef) {
  for (int64_t j = 0; j < n; ++j) {
    s[j] = coef * std::exp(s[j] * inv_tau + (offset != nullptr ? offset[j] : 0.0) - lse);
  }
}

}  // namespace cpu
}  // namespace fastsoftmax
