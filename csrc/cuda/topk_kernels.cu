// CUDA top-k selection over chunks of scores (see topk_kernels.cuh).
//
// One CUDA block owns one row (or one slice of a row's columns). Its candidates live in shared
// memory as packed uint64 keys (common/topk.h). A scan round lets each of the 256 threads test
// 4 scores against the block's threshold key (the k-th best key kept so far) and append the
// survivors with a shared atomic; before a round that could overflow the buffer, the block sorts
// the buffer (bitonic, descending) and keeps the k best, which raises the threshold. Keys are
// distinct and totally ordered, so the result does not depend on the order of the atomics, and
// the merge of slices and chunks is exact.
#include "cuda/topk_kernels.cuh"

#include <cuda_runtime.h>

#include <cstdint>

#include "common/topk.h"

namespace fastsoftmax {
namespace cuda {
namespace {

constexpr int kBlock = 256;
constexpr int kItemsPerThread = 4;
constexpr int kRound = kBlock * kItemsPerThread;  // the most keys one round can append
constexpr int64_t kMinColsPerSlice = 4096;

template <int CAP>
struct SelectSmem {
  uint64_t keys[CAP];
  int n;         // keys[0, n) are live
  uint64_t thr;  // a key must be > thr to enter (0: accept every eligible key)
};

// Sorts a[0, CAP) in descending order. All threads of the block call it; ends synchronised.
template <int CAP>
__device__ void bitonic_sort_desc(uint64_t* a) {
  for (int size = 2; size <= CAP; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < CAP / 2; t += kBlock) {
        const int i = 2 * t - (t & (stride - 1));  // the pair (i, i + stride), bit `stride` of i clear
        const int j = i + stride;
        const bool desc = (i & size) == 0;  // NB: the last stage (size == CAP) is all descending
        const uint64_t x = a[i], y = a[j];
        if ((x < y) == desc) {
          a[i] = y;
          a[j] = x;
        }
      }
      __syncthreads();
    }
  }
}

// Sorts the live keys (padding the rest with 0) and keeps the best min(n, k). n is the live count
// every thread read before the caller's last __syncthreads.
template <int CAP>
__device__ void sort_and_cut(SelectSmem<CAP>& sm, int n, int k) {
  for (int i = n + threadIdx.x; i < CAP; i += kBlock) sm.keys[i] = 0;
  __syncthreads();
  bitonic_sort_desc<CAP>(sm.keys);
  if (threadIdx.x == 0) {
    const int m = n < k ? n : k;
    sm.n = m;
    if (m == k) sm.thr = sm.keys[k - 1];  // all live keys are > the old threshold
  }
  __syncthreads();
}

// Offers the keys produced by `source(j, thr)` for j in [j0, j1) (0 = rejected) to the block.
template <int CAP, typename Source>
__device__ void scan(SelectSmem<CAP>& sm, int k, int64_t j0, int64_t j1, const Source& source) {
  for (int64_t base = j0; base < j1; base += kRound) {
    const int n = sm.n;
    __syncthreads();  // NB: every thread has read n before any thread appends or cuts
    if (n + kRound > CAP) sort_and_cut<CAP>(sm, n, k);
    const uint64_t thr = sm.thr;
#pragma unroll
    for (int e = 0; e < kItemsPerThread; ++e) {
      const int64_t j = base + e * kBlock + threadIdx.x;
      if (j < j1) {
        const uint64_t key = source(j, thr);
        if (key != 0) sm.keys[atomicAdd(&sm.n, 1)] = key;
      }
    }
    __syncthreads();
  }
}

// Loads a sorted running list (0 = empty, at the end) into the block.
template <int CAP>
__device__ void load_running(SelectSmem<CAP>& sm, const uint64_t* run, int k) {
  if (threadIdx.x == 0) sm.n = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < k; i += kBlock) {
    const uint64_t key = run[i];
    sm.keys[i] = key;
    if (key != 0 && (i + 1 == k || run[i + 1] == 0)) sm.n = i + 1;
  }
  __syncthreads();
  if (threadIdx.x == 0) sm.thr = sm.n == k ? sm.keys[k - 1] : 0;
  __syncthreads();
}

__device__ bool is_excluded(const int64_t* ex, int64_t n, int64_t index) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    if (ex[mid] < index) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo < n && ex[lo] == index;
}

// Keys of a row of scores (+ bias), skipping ineligible, non-improving and excluded items.
struct ScoreSource {
  const float* srow;   // the row's scores in the chunk
  const float* bias;   // [N] or nullptr
  int64_t col0;        // global index of srow[0]
  const int64_t* ex;   // the row's sorted exclusions
  int64_t num_ex;

  __device__ uint64_t operator()(int64_t j, uint64_t thr) const {
    const int64_t index = col0 + j;
    float s = srow[j];
    if (bias != nullptr) s += bias[index];
    if (!topk_eligible(s)) return 0;  // NaN, -inf
    const uint64_t key = topk_key_encode(s, index);
    if (key <= thr) return 0;
    if (num_ex > 0 && is_excluded(ex, num_ex, index)) return 0;
    return key;
  }
};

// Keys already selected by the slices of a row (0 = empty slot).
struct KeySource {
  const uint64_t* keys;

  __device__ uint64_t operator()(int64_t j, uint64_t thr) const {
    const uint64_t key = keys[j];
    return key > thr ? key : 0;  // NB: empty slots never pass (thr >= 0)
  }
};

template <int CAP>
__global__ void __launch_bounds__(kBlock) topk_select_chunk_kernel(TopkSelectParams p) {
  __shared__ SelectSmem<CAP> sm;
  const int64_t row = blockIdx.x / p.slices, slice = blockIdx.x % p.slices;
  const int k = static_cast<int>(p.k);
  uint64_t* run = p.run_keys + row * p.k;
  if (p.slices == 1) {
    load_running<CAP>(sm, run, k);
  } else {
    // Slices start empty; the running k-th key still filters (nothing at or below it can
    // enter the merged top-k).
    if (threadIdx.x == 0) {
      sm.n = 0;
      sm.thr = run[k - 1];
    }
    __syncthreads();
  }
  const float* srow = p.scores + row * p.cols;
  const int64_t* ex = nullptr;
  int64_t num_ex = 0;
  if (p.ex_offsets != nullptr) {
    ex = p.ex_sorted + p.ex_offsets[row];
    num_ex = p.ex_offsets[row + 1] - p.ex_offsets[row];
  }
  const ScoreSource source{srow, p.bias, p.col0, ex, num_ex};
  const int64_t j0 = slice * p.cols / p.slices, j1 = (slice + 1) * p.cols / p.slices;
  scan<CAP>(sm, k, j0, j1, source);
  sort_and_cut<CAP>(sm, sm.n, k);
  uint64_t* out = p.slices == 1 ? run : p.partial_keys + (row * p.slices + slice) * p.k;
  for (int i = threadIdx.x; i < k; i += kBlock) out[i] = sm.keys[i];  // NB: 0 beyond n
}

template <int CAP>
__global__ void __launch_bounds__(kBlock) topk_merge_slices_kernel(TopkSelectParams p) {
  __shared__ SelectSmem<CAP> sm;
  const int64_t row = blockIdx.x;
  const int k = static_cast<int>(p.k);
  uint64_t* run = p.run_keys + row * p.k;
  load_running<CAP>(sm, run, k);
  const KeySource source{p.partial_keys + row * p.slices * p.k};
  scan<CAP>(sm, k, 0, p.slices * p.k, source);
  sort_and_cut<CAP>(sm, sm.n, k);
  for (int i = threadIdx.x; i < k; i += kBlock) run[i] = sm.keys[i];
}

__global__ void topk_finalize_kernel(const uint64_t* run_keys, int64_t total, float* scores,
                                     int64_t* indices) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  const uint64_t key = run_keys[i];
  scores[i] = key == 0 ? __int_as_float(0xff800000) : topk_key_score(key);  // -inf pads
  indices[i] = key == 0 ? kTopkPadIndex : topk_key_index(key);
}

template <int CAP>
void launch_select(const TopkSelectParams& p, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(p.rows * p.slices);
  topk_select_chunk_kernel<CAP><<<blocks, kBlock, 0, stream>>>(p);
  if (p.slices > 1) {
    topk_merge_slices_kernel<CAP><<<static_cast<unsigned>(p.rows), kBlock, 0, stream>>>(p);
  }
}

}  // namespace

int64_t topk_plan_slices(int64_t rows, int64_t cols) {
  int device = 0, sms = 1;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t want_blocks = 2 * static_cast<int64_t>(sms);
  int64_t slices = rows > 0 ? (want_blocks + rows - 1) / rows : 1;
  const int64_t max_slices = cols / kMinColsPerSlice;
  if (slices > max_slices) slices = max_slices;
  return slices < 1 ? 1 : slices;
}

void launch_topk_select(const TopkSelectParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.cols == 0) return;
  // NB: the buffer holds k kept keys plus one round of newcomers: k + kRound <= CAP.
  if (p.k + kRound <= 2048) {
    launch_select<2048>(p, stream);
  } else {
    static_assert(kTopkMaxKernelK + kRound <= 4096, "CAP 4096 must hold k + one round");
    launch_select<4096>(p, stream);
  }
}

void launch_topk_finalize(const uint64_t* run_keys, int64_t rows, int64_t k, float* scores,
                          int64_t* indices, cudaStream_t stream) {
  const int64_t total = rows * k;
  if (total == 0) return;
  const int threads = 256;
  const unsigned blocks = static_cast<unsigned>((total + threads - 1) / threads);
  topk_finalize_kernel<<<blocks, threads, 0, stream>>>(run_keys, total, scores, indices);
}

}  // namespace cuda
}  // namespace fastsoftmax
