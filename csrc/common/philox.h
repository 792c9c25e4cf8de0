// Philox4x32-10, the counter-based generator of Salmon, Moraes, Dror and Shaw, "Parallel random
// numbers: as easy as 1, 2, 3" (SC 2011), written once for CPU and CUDA (DESIGN.md §5).
//
// A draw is a pure function of (key, counter): no state, so any thread on any device can produce
// draw h of row b directly, and the CPU and CUDA kernels see bit-identical random numbers.
// Plain C++ (no torch headers) so that .cu files can include it.
#pragma once

#include <cstdint>

#include "common/math.h"  // FS_HOST_DEVICE

namespace fastsoftmax {

struct Philox4x32 {
  uint32_t v[4];
};

namespace philox_detail {

constexpr uint32_t kMul0 = 0xD2511F53u;
constexpr uint32_t kMul1 = 0xCD9E8D57u;
constexpr uint32_t kWeyl0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kWeyl1 = 0xBB67AE85u;  // sqrt(3) - 1

FS_HOST_DEVICE void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

FS_HOST_DEVICE Philox4x32 round(const Philox4x32& c, uint32_t k0, uint32_t k1) {
  uint32_t hi0, lo0, hi1, lo1;
  mulhilo(kMul0, c.v[0], hi0, lo0);
  mulhilo(kMul1, c.v[2], hi1, lo1);
  return Philox4x32{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
}

}  // namespace philox_detail

// Ten rounds of the Philox S-box over `counter` under the 64-bit key (k0, k1); the key is bumped
// by the Weyl constants between rounds.
FS_HOST_DEVICE Philox4x32 philox4x32_10(Philox4x32 counter, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    counter = philox_detail::round(counter, k0, k1);
    k0 += philox_detail::kWeyl0;
    k1 += philox_detail::kWeyl1;
  }
  return counter;
}

// The library's stream layout: the key is the seed; the counter is (draw / 2, row, offset low,
// offset high), and each Philox block yields two doubles, draw h taking words 2*(h % 2) and
// 2*(h % 2) + 1. So (seed, offset) names a call of an op, (row, draw) a position in it, and
// rows < 2^32, draws < 2^33 per row never share a block. fastsoftmax/reference.py mirrors this.
struct PhiloxStream {
  uint64_t seed;
  uint64_t offset;

  FS_HOST_DEVICE Philox4x32 block(uint64_t row, uint64_t pair) const {
    const Philox4x32 counter{{static_cast<uint32_t>(pair), static_cast<uint32_t>(row),
                              static_cast<uint32_t>(offset),
                              static_cast<uint32_t>(offset >> 32)}};
    return philox4x32_10(counter, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  }

  // A double uniform in [0, 1) with 53 random bits: draw `draw` of row `row`.
  FS_HOST_DEVICE double uniform(uint64_t row, uint64_t draw) const {
    const Philox4x32 r = block(row, draw >> 1);
    const int w = static_cast<int>(draw & 1) * 2;
    const uint64_t bits = (static_cast<uint64_t>(r.v[w]) << 32) | r.v[w + 1];
    return static_cast<double>(bits >> 11) * 0x1.0p-53;
  }
};

}  // namespace fastsoftmax
