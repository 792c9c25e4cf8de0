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

// An eligible score beats -inf; NaN compares false with everything, so `s > neg_inf` excludes it.
template <typename acc_t>
FS_HOST_DEVICE bool topk_eligible(acc_t s) {
  return s > neg_inf<acc_t>();
}

}  // namespace fastsoftmax
