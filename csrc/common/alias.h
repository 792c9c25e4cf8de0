// One draw from a Walker/Vose alias table, as a pure function of (seed, offset, draw index):
// shared by the CPU and CUDA kernels of fastsoftmax::alias_sample so both return the same ids.
// Plain C++ (no torch headers) so that .cu files can include it.
#pragma once

#include <cstdint>

#include "common/math.h"    // FS_HOST_DEVICE
#include "common/philox.h"

namespace fastsoftmax {

// Draw i uses the whole Philox block (i mod 2^32, i / 2^32, offset lo, offset hi) under key
// seed: words 0-1 make the 53-bit uniform that picks the bucket, words 2-3 the coin that keeps
// the bucket (coin < prob[bucket]) or takes its alias. fastsoftmax/reference.py mirrors this.
FS_HOST_DEVICE int64_t alias_draw(const PhiloxStream& stream, uint64_t i, const float* prob,
                                  const int64_t* alias, int64_t n) {
  const Philox4x32 r = stream.block(i >> 32, i & 0xFFFFFFFFu);
  const uint64_t bits_bucket = ((static_cast<uint64_t>(r.v[0]) << 32) | r.v[1]) >> 11;
  const uint64_t bits_coin = ((static_cast<uint64_t>(r.v[2]) << 32) | r.v[3]) >> 11;
  const double u = static_cast<double>(bits_bucket) * 0x1.0p-53;
  const double coin = static_cast<double>(bits_coin) * 0x1.0p-53;
  int64_t bucket = static_cast<int64_t>(u * static_cast<double>(n));
  bucket = bucket < n ? bucket : n - 1;  // NB: u * n can round up to n
  return coin < static_cast<double>(prob[bucket]) ? bucket : alias[bucket];
}

}  // namespace fastsoftmax
