// CUDA epilogues of hard-negative mining (interface: mining_kernels.cuh). One CUDA block per query
// row of a score tile; tiles of a row arrive in pool order, so a row's state (log-sum-exp, CDF
// position, running top-H) carries from one tile to the next in [B]- and [B, H]-sized buffers.
//
// Sampling is the same algorithm as the CPU kernel (csrc/cpu/mining_cpu.cpp): probabilities
// p_i = exp(s_i - lse) with the shared fast_expf, accumulated in double, matched against the row's
// sorted Philox uniforms (csrc/common/philox.h), so CPU and CUDA draw the same samples whenever
// their scores agree (they differ only by the rounding of BLAS vs cuBLAS).
#include "cuda/mining_kernels.cuh"

#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "common/math.h"
#include "common/philox.h"

namespace fastsoftmax {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;

template <typename acc_t>
__device__ __forceinline__ acc_t pos_inf() {
  return static_cast<acc_t>(INFINITY);
}

int next_pow2(int64_t n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}

// ------------------------------------------------------------------------- block primitives

struct MaxOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};
struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};

// Reduction over the block; every thread gets the result. smem: kWarps entries.
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T* smem) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(kFullMask, v, o));
  __syncthreads();  // smem may still be read from a previous call
  if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = v;
  __syncthreads();
  T r = smem[0];
  for (int w = 1; w < kWarps; ++w) r = op(r, smem[w]);
  return r;
}

// Inclusive prefix sum over the block in thread order. smem: kWarps entries.
__device__ double block_inclusive_sum(double v, double* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 1; o < 32; o <<= 1) {
    const double up = __shfl_up_sync(kFullMask, v, o);
    if (lane >= o) v += up;
  }
  __syncthreads();
  if (lane == 31) smem[warp] = v;
  __syncthreads();
  double prefix = 0.0;
  for (int w = 0; w < warp; ++w) prefix += smem[w];
  return prefix + v;
}

// Sorts n (a power of two) (key, value) pairs in shared memory so that better(i, j) entries come
// first. The caller synchronises before; the sort ends synchronised.
template <typename K, typename V, typename Better>
__device__ void bitonic_sort(K* key, V* val, int n, Better better) {
  for (int k = 2; k <= n; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int other = i ^ j;
        if (other <= i) continue;
        const bool ascending = (i & k) == 0;
        const bool swap = ascending ? better(key[other], val[other], key[i], val[i])
                                    : better(key[i], val[i], key[other], val[other]);
        if (swap) {
          const K tk = key[i];
          key[i] = key[other];
          key[other] = tk;
          const V tv = val[i];
          val[i] = val[other];
          val[other] = tv;
        }
      }
      __syncthreads();
    }
  }
}

struct SmallerDraw {  // ascending uniforms, the lower draw index on ties
  __device__ bool operator()(double u, int32_t h, double v, int32_t g) const {
    return u < v || (u == v && h < g);
  }
};

struct BetterScore {  // higher score first, lower index on ties (the library's top-k rule)
  template <typename acc_t>
  __device__ bool operator()(acc_t s, int32_t i, acc_t t, int32_t j) const {
    return s > t || (s == t && i < j);
  }
};

// First k in [lo, hi) with u[k] >= x (u ascending).
__device__ int lower_bound(const double* u, int lo, int hi, double x) {
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (u[mid] < x) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// Writes -inf over row b's excluded positions that fall in the tile. The caller synchronises.
template <typename acc_t>
__device__ void mask_excluded(const MiningTile& t, acc_t* row, int64_t b) {
  if (t.excl_ptr == nullptr) return;
  const int64_t end = t.excl_ptr[b + 1];
  for (int64_t k = t.excl_ptr[b] + threadIdx.x; k < end; k += blockDim.x) {
    const int64_t pos = t.excl_pos[k];
    if (pos >= t.c0 && pos < t.c0 + t.cols) row[pos - t.c0] = neg_inf<acc_t>();
  }
}

// ---------------------------------------------------------------------------------- sample

template <typename acc_t>
__global__ void __launch_bounds__(kThreads) mining_lse_tile_kernel(MiningTile t,
                                                                   MiningSampleParams p) {
  __shared__ acc_t smem[kWarps];
  const int64_t b = t.r0 + blockIdx.x;
  acc_t* row = static_cast<acc_t*>(t.scores) + blockIdx.x * t.cols;
  mask_excluded(t, row, b);
  __syncthreads();
  const auto inv_tau = static_cast<acc_t>(p.inv_tau);
  acc_t m = neg_inf<acc_t>();
  for (int64_t j = threadIdx.x; j < t.cols; j += blockDim.x) {
    const acc_t s = row[j] * inv_tau;
    m = s > m ? s : m;
  }
  m = block_reduce(m, MaxOp{}, smem);
  if (m == neg_inf<acc_t>()) return;  // nothing eligible in this tile (uniform over the block)
  acc_t sum = 0;
  for (int64_t j = threadIdx.x; j < t.cols; j += blockDim.x) sum += fast_exp(row[j] * inv_tau - m);
  sum = block_reduce(sum, SumOp{}, smem);
  if (threadIdx.x == 0) {
    acc_t* max_p = static_cast<acc_t*>(p.lse_max);
    acc_t* sum_p = static_cast<acc_t*>(p.lse_sum);
    OnlineLSE<acc_t> state(max_p[b], sum_p[b]);
    state.merge(m, sum);
    max_p[b] = state.max;
    sum_p[b] = state.sum;
  }
}

// One block per row: finishes the log-sum-exp, resets the walk, sorts the row's draws.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads) mining_sample_prepare_kernel(MiningSampleParams p,
                                                                         int n_sort) {
  extern __shared__ double prepare_smem[];
  double* u = prepare_smem;                                  // [n_sort]
  int32_t* h = reinterpret_cast<int32_t*>(u + n_sort);       // [n_sort]
  const int64_t b = blockIdx.x;
  if (threadIdx.x == 0) {
    const OnlineLSE<acc_t> state(static_cast<const acc_t*>(p.lse_max)[b],
                                 static_cast<const acc_t*>(p.lse_sum)[b]);
    static_cast<acc_t*>(p.lse)[b] = state.value();
    p.cdf[b] = 0.0;
    p.next[b] = 0;
    p.last[b] = -1;
  }
  const PhiloxStream stream{p.seed, p.offset};
  for (int i = threadIdx.x; i < n_sort; i += blockDim.x) {
    const bool real = i < p.H;
    u[i] = real ? stream.uniform(static_cast<uint64_t>(b), static_cast<uint64_t>(i)) : 2.0;
    h[i] = real ? i : INT_MAX;
  }
  __syncthreads();
  bitonic_sort(u, h, n_sort, SmallerDraw{});
  for (int64_t i = threadIdx.x; i < p.H; i += blockDim.x) {
    p.draw_u[b * p.H + i] = u[i];
    p.draw_h[b * p.H + i] = h[i];
  }
}

template <typename acc_t>
__device__ void pick(const MiningSampleParams& p, int64_t b, int32_t h, int64_t i, acc_t log_pi) {
  const acc_t* lq = static_cast<const acc_t*>(p.pool_log_q);
  p.out_index[b * p.H + h] = i;
  static_cast<acc_t*>(p.out_log_q)[b * p.H + h] =
      (lq != nullptr ? lq[i] : acc_t(0)) + static_cast<acc_t>(log(static_cast<double>(p.H))) +
      log_pi;
}

// Pass 2 over one tile: the row's CDF over the tile, in chunks of kThreads pool rows. Draw u
// picks pool row j when cdf_before(j) <= u < cdf_after(j); both bounds of a row come from one
// inclusive scan, so the intervals of a chunk tile [cdf, cdf + chunk mass) exactly.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads) mining_walk_tile_kernel(MiningTile t,
                                                                    MiningSampleParams p) {
  __shared__ double warp_sums[kWarps];
  __shared__ double incl_s[kThreads];
  __shared__ int last_smem[kWarps];
  __shared__ acc_t last_score_s;
  const int64_t b = t.r0 + blockIdx.x;
  acc_t* row = static_cast<acc_t*>(t.scores) + blockIdx.x * t.cols;
  mask_excluded(t, row, b);
  __syncthreads();
  const acc_t lse = static_cast<const acc_t*>(p.lse)[b];
  const int H = static_cast<int>(p.H);
  int next = p.next[b];
  // No eligible pool row (-inf), a NaN score, or every draw placed: nothing to walk.
  if (!(lse > neg_inf<acc_t>()) || next >= H) return;
  double cdf = p.cdf[b];
  const double* u = p.draw_u + b * p.H;
  const int32_t* col = p.draw_h + b * p.H;
  const auto inv_tau = static_cast<acc_t>(p.inv_tau);
  int my_last = -1;  // this thread's last tile column with non-zero probability
  acc_t my_last_score = 0;
  for (int64_t j0 = 0; j0 < t.cols && next < H; j0 += blockDim.x) {
    const int64_t j = j0 + threadIdx.x;
    const acc_t s = j < t.cols ? row[j] * inv_tau : neg_inf<acc_t>();
    const acc_t prob = j < t.cols ? fast_exp(s - lse) : acc_t(0);
    if (prob > acc_t(0)) {
      my_last = static_cast<int>(j);
      my_last_score = s;
    }
    const double incl = block_inclusive_sum(static_cast<double>(prob), warp_sums);
    incl_s[threadIdx.x] = incl;
    __syncthreads();
    const double chunk_end = cdf + incl_s[blockDim.x - 1];
    if (prob > acc_t(0) && u[next] < chunk_end) {
      const double lower = cdf + (threadIdx.x > 0 ? incl_s[threadIdx.x - 1] : 0.0);
      const double upper = cdf + incl;
      for (int k = lower_bound(u, next, H, lower); k < H && u[k] < upper; ++k) {
        pick(p, b, col[k], t.c0 + j, s - lse);
      }
    }
    cdf = chunk_end;
    next = lower_bound(u, next, H, cdf);
    __syncthreads();  // incl_s is rewritten by the next chunk
  }
  // The tile's last eligible pool row, for draws past the CDF's rounded total.
  const int tile_last = block_reduce(my_last, MaxOp{}, last_smem);
  if (tile_last >= 0 && my_last == tile_last) last_score_s = my_last_score;
  __syncthreads();
  if (threadIdx.x == 0) {
    p.cdf[b] = cdf;
    p.next[b] = next;
    if (tile_last >= 0) {
      p.last[b] = t.c0 + tile_last;
      static_cast<acc_t*>(p.last_score)[b] = last_score_s;
    }
  }
}

template <typename acc_t>
__global__ void mining_sample_finish_kernel(MiningSampleParams p) {
  const int64_t b = blockIdx.x;
  const acc_t lse = static_cast<const acc_t*>(p.lse)[b];
  const int64_t last = p.last[b];
  const bool nan_row = isnan(lse);
  const bool has_last = last >= 0 && lse > neg_inf<acc_t>();
  for (int64_t k = p.next[b] + threadIdx.x; k < p.H; k += blockDim.x) {
    const int32_t h = p.draw_h[b * p.H + k];
    if (has_last) {
      pick(p, b, h, last, static_cast<const acc_t*>(p.last_score)[b] - lse);
    } else {
      p.out_index[b * p.H + h] = -1;
      static_cast<acc_t*>(p.out_log_q)[b * p.H + h] =
          nan_row ? static_cast<acc_t>(NAN) : pos_inf<acc_t>();
    }
  }
}

// ------------------------------------------------------------------------------------ topk

// One block per row: candidates above the row's current H-th best score are appended after the
// running list in shared memory; when the buffer could overflow, and at the end of the tile, the
// list and the candidates are sorted together and cut to H. NB: tiles and chunks arrive in pool
// order, so a candidate that only ties the H-th best has a higher index and loses: only strictly
// higher scores enter.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads) mining_topk_tile_kernel(MiningTile t,
                                                                    MiningTopkParams p,
                                                                    int n_sort, int cap) {
  extern __shared__ double topk_smem[];
  acc_t* key = reinterpret_cast<acc_t*>(topk_smem);            // [n_sort]
  int32_t* idx = reinterpret_cast<int32_t*>(key + n_sort);      // [n_sort]
  __shared__ int num_cand;
  const int64_t b = t.r0 + blockIdx.x;
  const int H = static_cast<int>(p.H);
  acc_t* row = static_cast<acc_t*>(t.scores) + blockIdx.x * t.cols;
  mask_excluded(t, row, b);
  int count = p.list_count[b];
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    key[i] = static_cast<const acc_t*>(p.list_score)[b * H + i];
    idx[i] = p.list_index[b * H + i];
  }
  if (threadIdx.x == 0) num_cand = 0;
  __syncthreads();
  // NB: the ranking ignores the temperature; masked (-inf) and NaN scores never pass `>`.
  acc_t thr = count == H ? key[H - 1] : neg_inf<acc_t>();
  for (int64_t j0 = 0; j0 < t.cols; j0 += blockDim.x) {
    const int64_t j = j0 + threadIdx.x;
    if (j < t.cols) {
      const acc_t s = row[j];
      if (s > thr) {
        const int slot = count + atomicAdd(&num_cand, 1);
        key[slot] = s;
        idx[slot] = static_cast<int32_t>(t.c0 + j);
      }
    }
    __syncthreads();
    const int n = num_cand;
    const bool last_chunk = j0 + blockDim.x >= t.cols;
    __syncthreads();  // every thread has read num_cand before it changes
    if (n > cap - static_cast<int>(blockDim.x) || (last_chunk && n > 0)) {
      for (int i = count + n + threadIdx.x; i < n_sort; i += blockDim.x) {
        key[i] = neg_inf<acc_t>();
        idx[i] = INT_MAX;
      }
      __syncthreads();
      bitonic_sort(key, idx, n_sort, BetterScore{});
      count = min(H, count + n);
      thr = count == H ? key[H - 1] : neg_inf<acc_t>();
      if (threadIdx.x == 0) num_cand = 0;
      __syncthreads();
    }
  }
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    static_cast<acc_t*>(p.list_score)[b * H + i] = key[i];
    p.list_index[b * H + i] = idx[i];
  }
  if (threadIdx.x == 0) p.list_count[b] = count;
}

template <typename acc_t>
__global__ void mining_topk_finish_kernel(MiningTopkParams p) {
  const int64_t b = blockIdx.x;
  const int count = p.list_count[b];
  const acc_t* lq = static_cast<const acc_t*>(p.pool_log_q);
  for (int64_t h = threadIdx.x; h < p.H; h += blockDim.x) {
    acc_t* out = static_cast<acc_t*>(p.out_log_q) + b * p.H + h;
    if (h < count) {
      const int64_t i = p.list_index[b * p.H + h];
      p.out_index[b * p.H + h] = i;
      *out = lq != nullptr ? lq[i] : acc_t(0);
    } else {
      p.out_index[b * p.H + h] = -1;
      *out = pos_inf<acc_t>();
    }
  }
}

// Candidate buffer of the top-k kernel: at least 4 chunks of kThreads between merges.
int topk_cap(int64_t H) { return next_pow2(H) > 4 * kThreads ? next_pow2(H) : 4 * kThreads; }

}  // namespace

void launch_mining_lse_tile(const MiningTile& tile, const MiningSampleParams& p,
                            cudaStream_t stream) {
  if (tile.rows == 0 || tile.cols == 0) return;
  const dim3 grid(static_cast<unsigned>(tile.rows));
  if (p.is_double) {
    mining_lse_tile_kernel<double><<<grid, kThreads, 0, stream>>>(tile, p);
  } else {
    mining_lse_tile_kernel<float><<<grid, kThreads, 0, stream>>>(tile, p);
  }
}

void launch_mining_sample_prepare(const MiningSampleParams& p, cudaStream_t stream) {
  if (p.B == 0) return;
  const int n_sort = next_pow2(p.H);
  const size_t smem = static_cast<size_t>(n_sort) * (sizeof(double) + sizeof(int32_t));
  const dim3 grid(static_cast<unsigned>(p.B));
  if (p.is_double) {
    mining_sample_prepare_kernel<double><<<grid, kThreads, smem, stream>>>(p, n_sort);
  } else {
    mining_sample_prepare_kernel<float><<<grid, kThreads, smem, stream>>>(p, n_sort);
  }
}

void launch_mining_walk_tile(const MiningTile& tile, const MiningSampleParams& p,
                             cudaStream_t stream) {
  if (tile.rows == 0 || tile.cols == 0) return;
  const dim3 grid(static_cast<unsigned>(tile.rows));
  if (p.is_double) {
    mining_walk_tile_kernel<double><<<grid, kThreads, 0, stream>>>(tile, p);
  } else {
    mining_walk_tile_kernel<float><<<grid, kThreads, 0, stream>>>(tile, p);
  }
}

void launch_mining_sample_finish(const MiningSampleParams& p, cudaStream_t stream) {
  if (p.B == 0) return;
  const dim3 grid(static_cast<unsigned>(p.B));
  if (p.is_double) {
    mining_sample_finish_kernel<double><<<grid, 64, 0, stream>>>(p);
  } else {
    mining_sample_finish_kernel<float><<<grid, 64, 0, stream>>>(p);
  }
}

void launch_mining_topk_tile(const MiningTile& tile, const MiningTopkParams& p,
                             cudaStream_t stream) {
  if (tile.rows == 0 || tile.cols == 0) return;
  const int cap = topk_cap(p.H);
  const int n_sort = next_pow2(p.H + cap);
  const dim3 grid(static_cast<unsigned>(tile.rows));
  if (p.is_double) {
    const size_t smem = static_cast<size_t>(n_sort) * (sizeof(double) + sizeof(int32_t));
    mining_topk_tile_kernel<double><<<grid, kThreads, smem, stream>>>(tile, p, n_sort, cap);
  } else {
    const size_t smem = static_cast<size_t>(n_sort) * (sizeof(float) + sizeof(int32_t));
    mining_topk_tile_kernel<float><<<grid, kThreads, smem, stream>>>(tile, p, n_sort, cap);
  }
}

void launch_mining_topk_finish(const MiningTopkParams& p, cudaStream_t stream) {
  if (p.B == 0) return;
  const dim3 grid(static_cast<unsigned>(p.B));
  if (p.is_double) {
    mining_topk_finish_kernel<double><<<grid, 64, 0, stream>>>(p);
  } else {
    mining_topk_finish_kernel<float><<<grid, 64, 0, stream>>>(p);
  }
}

}  // namespace cuda
}  // namespace fastsoftmax
