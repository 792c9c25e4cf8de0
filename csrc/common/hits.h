// Accidental-hit test shared by host and device code: a candidate whose id equals one of the
// row's valid (non-negative) positive ids is removed from that row's softmax.
// Plain C++ (no torch headers) so that .cu files can include it.
#pragma once

#include <cstdint>

#include "common/math.h"

namespace fastsoftmax {

// True when id equals one of hits[0..n) that is not padding (-1 marks padding, and padding never
// matches, not even a candidate id of -1).
FS_HOST_DEVICE bool is_accidental_hit(int64_t id, const int64_t* hits, int64_t n) {
  for (int64_t t = 0; t < n; ++t) {
    const int64_t h = hits[t];
    if (h >= 0 && h == id) return true;
  }
  return false;
}

}  // namespace fastsoftmax
