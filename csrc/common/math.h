// Math shared by the CPU and CUDA kernels: online log-sum-exp state and a branch-free exp.
// Plain C++ (no torch headers) so that .cu files can include it.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__CUDACC__)
#define FS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FS_HOST_DEVICE inline
#endif

namespace fastsoftmax {

template <typename acc_t>
FS_HOST_DEVICE acc_t neg_inf() {
  // NB: INFINITY rather than numeric_limits, whose constexpr host functions nvcc rejects in
  // device code without --expt-relaxed-constexpr.
  return -static_cast<acc_t>(INFINITY);
}

// Running (max, sum of exp(x - max)) of a stream of scores. -inf scores are masked entries and
// contribute nothing; a state that saw only -inf has max == -inf and sum == 0.
template <typename acc_t>
struct OnlineLSE {
  acc_t max;
  acc_t sum;

  FS_HOST_DEVICE OnlineLSE() : max(neg_inf<acc_t>()), sum(0) {}
  FS_HOST_DEVICE OnlineLSE(acc_t m, acc_t s) : max(m), sum(s) {}

  // Merge another partial state (from another tile, thread or shard).
  FS_HOST_DEVICE void merge(acc_t other_max, acc_t other_sum) {
    if (other_max == neg_inf<acc_t>()) return;
    if (max == neg_inf<acc_t>()) {
      max = other_max;
      sum = other_sum;
      return;
    }
    if (other_max > max) {
      sum = sum * std::exp(max - other_max) + other_sum;
      max = other_max;
    } else {
      sum += other_sum * std::exp(other_max - max);
    }
  }

  FS_HOST_DEVICE void add(acc_t x) { merge(x, acc_t(1)); }

  // log(sum(exp(x))): -inf when nothing unmasked was seen.
  FS_HOST_DEVICE acc_t value() const {
    return max == neg_inf<acc_t>() ? max : max + std::log(sum);
  }
};

// exp(x) for float without a call or a branch, so that loops over a tile vectorise under any
// instruction set the compiler targets. Relative error < 2e-7 over the normal range; returns
// exactly 0 for x < -87.3 (masked entries are -inf) and saturates at x = 88 (callers pass
// x - max <= 0, so saturation never shows).
FS_HOST_DEVICE float fast_expf(float x) {
  const float lo = -87.3f, hi = 88.0f;
  const bool underflow = x < lo;  // NaN compares false and propagates below
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  // exp(x) = 2^n * exp(r), n = round(x / ln2), |r| <= ln2/2. The rounding adds and removes
  // 1.5 * 2^23 instead of calling floor(), which keeps the loop free of calls so it vectorises.
  const float shifter = 12582912.0f;
  const float n = (x * 1.44269504088896341f + shifter) - shifter;
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // Scale by 2^n through the exponent bits; n in [-126, 127].
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
#if defined(__CUDA_ARCH__)
  const float scale = __int_as_float(bits);
#else
  const float scale = __builtin_bit_cast(float, bits);
#endif
  const float y = p * scale;
  return underflow ? 0.0f : y;
}

FS_HOST_DEVICE double fast_exp(double x) { return std::exp(x); }
FS_HOST_DEVICE float fast_exp(float x) { return fast_expf(x); }

}  // namespace fastsoftmax
