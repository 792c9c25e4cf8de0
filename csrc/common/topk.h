// Top-k ordering shared by the CPU and CUDA kernels. Plain C++ (no torch headers) so that .cu
// files can include it.
//
// The rule everywhere (STYLE.md): higher score first, lower index on ties. A score that is NaN or
// -inf is not eligible: it never enters a top-k, and rows with fewer than k eligible items are
// padded with (-inf, -1). Because the ordering is total on eligible (score, index) pairs, the
// result is the same whatever order tiles, threads or blocks are merged in.
#pragma once

#include <cstdint>

#include "common/math.h"

namespace fastsoftmax {

// Index written where a row has fewer than k eligible items.
constexpr int64_t kTopkPadIndex = -1;

// True when (sa, ia) ranks strictly before (sb, ib).
template <typename acc_t, typename index_t>
FS_HOST_DEVICE bool topk_before(acc_t sa, index_t ia, acc_t sb, index_t ib) {
  return sa > sb || (sa == sb && ia < ib);
}

// An eligible score is finite or +inf: at least the lowest finite value. NaN compares false with
// everything, so it is not eligible. (Literal bounds rather than numeric_limits, which device
// code may only call under --expt-relaxed-constexpr.)
FS_HOST_DEVICE bool topk_eligible(float s) { return s >= -3.40282346638528859812e+38f; }
FS_HOST_DEVICE bool topk_eligible(double s) { return s >= -1.79769313486231570815e+308; }

// A float candidate as one uint64 key: (order-preserving bits of the score) << 32 | ~index, so
// that topk_before on (score, index) is unsigned `>` on keys, and all keys are distinct. Needs
// 0 <= index <= 2^32 - 2. An eligible score's key is > 0, so 0 can mark an empty slot.
FS_HOST_DEVICE uint32_t topk_float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t bits;
  __builtin_memcpy(&bits, &f, sizeof(bits));
  return bits;
#endif
}

FS_HOST_DEVICE uint64_t topk_key_encode(float score, int64_t index) {
  uint32_t bits = topk_float_bits(score);
  // Negative floats: flip all bits (larger magnitude sorts lower); non-negative: set the sign bit.
  bits ^= (bits & 0x80000000u) ? 0xFFFFFFFFu : 0x80000000u;
  return (static_cast<uint64_t>(bits) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(index));
}

FS_HOST_DEVICE float topk_key_score(uint64_t key) {
  uint32_t bits = static_cast<uint32_t>(key >> 32);
  bits ^= (bits & 0x80000000u) ? 0x80000000u : 0xFFFFFFFFu;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float s;
  __builtin_memcpy(&s, &bits, sizeof(s));
  return s;
#endif
}

FS_HOST_DEVICE int64_t topk_key_index(uint64_t key) {
  return static_cast<int64_t>(0xFFFFFFFFu - static_cast<uint32_t>(key & 0xFFFFFFFFu));
}

}  // namespace fastsoftmax
