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
// This half needs no table: the CPU kernel runs it as a simd loop over a chunk of draws.
struct AliasBucketCoin {
  int64_t bucket;
  double coin;
};

// The stream's key and offset come as 32-bit words so that a loop over i keeps them in
// registers (the CPU kernel's simd loop was 10-30 % slower through PhiloxStream::block).
FS_HOST_DEVICE AliasBucketCoin alias_bucket_coin(uint64_t i, uint32_t key0, uint32_t key1,
                                                 uint32_t off_lo, uint32_t off_hi, int64_t n) {
  const Philox4x32 r = philox4x32_10(
      Philox4x32{{static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32), off_lo, off_hi}},
      key0, key1);
  const uint64_t bits_bucket = ((static_cast<uint64_t>(r.v[0]) << 32) | r.v[1]) >> 11;
  const uint64_t bits_coin = ((static_cast<uint64_t>(r.v[2]) << 32) | r.v[3]) >> 11;
  // NB: < 2^53, so converting through int64 is exact (and vectorises without AVX-512DQ).
  const double u = static_cast<double>(static_cast<int64_t>(bits_bucket)) * 0x1.0p-53;
  const double coin = static_cast<double>(static_cast<int64_t>(bits_coin)) * 0x1.0p-53;
  const int64_t k = static_cast<int64_t>(u * static_cast<double>(n));
  return {k < n ? k : n - 1, coin};  // NB: u * n can round up to n
}

FS_HOST_DEVICE int64_t alias_draw(const PhiloxStream& stream, uint64_t i, const float* prob,
                                  const int64_t* alias, int64_t n) {
  const AliasBucketCoin pick = alias_bucket_coin(
      i, static_cast<uint32_t>(stream.seed), static_cast<uint32_t>(stream.seed >> 32),
      static_cast<uint32_t>(stream.offset), static_cast<uint32_t>(stream.offset >> 32), n);
  return pick.coin < static_cast<double>(prob[pick.bucket]) ? pick.bucket : alias[pick.bucket];
}

}  // namespace fastsoftmax
