// CUDA kernels of the softmax cross-entropy ops (DESIGN.md §3, §4); interface in
// softmax_ce_kernels.cuh, torch glue in softmax_ce_cuda.cpp.
//
// Shared candidates and full softmax run a fused "dense scan": each CUDA block computes 64 x 64
// tiles of scores with a shared-memory tiled GEMM (fp32 accumulation for fp16/bf16/fp32, fp64 for
// double, 32 x 32 tiles) and reduces every tile on the spot, so the [B x C] score matrix never
// exists.
//   forward   grid (row tile, column split): a running (max, sum) per row over the block's
//             column range -> partials [col_splits, B]; a per-row kernel merges them with the
//             positives (or targets) into lse and the loss.
//   backward  two passes that recompute the score tiles from the saved lse:
//             grad_query pass       block = (row tile, column split): grad_query += G C / tau
//             grad_candidates pass  block = (column tile, row split): grad_cand += G^T Q / tau,
//                                   grad_offset += column sums of G
//             where G = coef_b * exp(s - lse_b) (0 where masked), minus g_b * w_bt at each row's
//             targets (full softmax), so the targets need no scatter. Each block owns the output
//             rows it writes (per split when an axis is split; splits are summed in a fixed order
//             afterwards), so the dense backward uses no atomics and is deterministic. The price
//             is computing the score tiles twice (4 GEMM-sized products instead of 3).
// Per-row candidates (candidate_index [B, H]) use one warp per batch row: dot products with its H
// candidates and an online log-sum-exp; the backward scatters into grad_candidates with
// atomicAdd (rows may share candidates), so that gradient is not bitwise deterministic.
//
// NB: every kernel here is launched with blockDim.x == kThreads (dense scan) or
// kRowWarps * kWarp (row kernels), and 1-D blocks.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/hits.h"
#include "common/math.h"
#include "cuda/softmax_ce_kernels.cuh"

namespace fastsoftmax {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;  // dense-scan block: 16 x 16 threads
constexpr int kThreadsX = 16;
constexpr int kThreadsY = kThreads / kThreadsX;
constexpr int kRowWarps = 8;   // row kernels: one warp per batch row, 8 rows per block
constexpr unsigned kFullMask = 0xffffffffu;

// Score tile shape. Float accumulation: 64 x 64 tiles, d in chunks of 32; each of the 16 x 16
// threads holds a 4 x 4 sub-tile (rows ty + 16 i, columns tx + 16 j). Double (gradcheck only)
// uses 32 x 32 x 16 so that its shared memory stays under the 48 KiB static limit.
template <typename acc_t>
struct Tile;
template <>
struct Tile<float> {
  static constexpr int BM = 64, BN = 64, BK = 32;
};
template <>
struct Tile<double> {
  static constexpr int BM = 32, BN = 32, BK = 16;
};

template <typename acc_t>
struct TileDims {
  static constexpr int BM = Tile<acc_t>::BM, BN = Tile<acc_t>::BN, BK = Tile<acc_t>::BK;
  static constexpr int TM = BM / kThreadsY;  // rows per thread
  static constexpr int TN = BN / kThreadsX;  // columns per thread
  static constexpr int DC = BK;              // d chunk of the gradient products
  static constexpr int DJ = DC / kThreadsX;  // d entries per thread and chunk
  // Shared memory: the GEMM stage (A^T and B^T chunks, padded against bank conflicts), reused
  // for the [BN or BM][DC] operand chunk of the gradient products; and the G tile.
  static constexpr int kStage = BK * (BM + 1) + BK * (BN + 1);
  static constexpr int kG = BM * (BN + 1);
  static_assert(BM % kThreadsY == 0 && BN % kThreadsX == 0 && BN % kThreadsY == 0, "tile shape");
  static_assert(DC % kThreadsX == 0, "d chunk");
  static_assert(BN * (DC + 1) <= kStage && BM * (DC + 1) <= kStage, "operand chunk fits stage");
  static_assert(BM >= kThreadsY, "column-sum reduction reuses the G tile");
  static_assert((kStage + kG) * sizeof(acc_t) <= 48 * 1024, "static shared memory limit");
};

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}
__host__ __device__ __forceinline__ int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }

// Butterfly sum: every lane ends with the same, bitwise identical value (each step adds the same
// two operands on both partners), so lanes can keep redundant copies of per-row state.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

// <a, b> over d entries, computed by one warp; the result is in every lane.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t warp_dot(const scalar_t* __restrict__ a,
                                          const scalar_t* __restrict__ b, int64_t d, int lane) {
  acc_t s = 0;
  for (int64_t k = lane; k < d; k += kWarp) s += to_acc(a[k]) * to_acc(b[k]);
  return warp_sum(s);
}

// Everything a dense scan reads. Scores are s[r, c] = <query[r], cand[c]> * inv_tau + offset[c].
template <typename scalar_t, typename acc_t>
struct ScanArgs {
  const scalar_t* query = nullptr;  // [B, d]
  const scalar_t* cand = nullptr;   // [C, d]
  const acc_t* offset = nullptr;    // [C] or null
  // Accidental-hit mask (when hit_ids is set): s[r, c] is excluded where cand_ids[c] equals a
  // valid entry of hit_ids[r, :].
  const int64_t* hit_ids = nullptr;   // [B, hit_T]
  const int64_t* cand_ids = nullptr;  // [C]
  int64_t hit_T = 0;
  // Backward only. Full softmax folds its targets' own term into G: targets [B, target_T].
  const int64_t* targets = nullptr;
  const acc_t* target_w = nullptr;    // [B, target_T], zero at padding
  int64_t target_T = 0;
  const acc_t* grad_loss = nullptr;   // [B]
  const acc_t* coef = nullptr;        // [B]
  const acc_t* lse = nullptr;         // [B]
  acc_t inv_tau = 1;
  int64_t B = 0, C = 0, d = 0;
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ bool is_masked(const ScanArgs<scalar_t, acc_t>& a, int64_t r,
                                          int64_t cid) {
  return a.hit_ids != nullptr && is_accidental_hit(cid, a.hit_ids + r * a.hit_T, a.hit_T);
}

// s[i][j] = <query[r0 + ty + 16 i], cand[c0 + tx + 16 j]> for the calling thread's sub-tile
// (0 outside the matrices). Starts and ends with the stage free: callers may reuse it afterwards.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void score_tile(const ScanArgs<scalar_t, acc_t>& a, int64_t r0,
                                           int64_t c0, acc_t* stage,
                                           acc_t (&s)[TileDims<acc_t>::TM][TileDims<acc_t>::TN]) {
  using D = TileDims<acc_t>;
  acc_t* As = stage;                     // [BK][BM + 1]: As[k][r] = query[r0 + r][k0 + k]
  acc_t* Bs = stage + D::BK * (D::BM + 1);  // [BK][BN + 1]
  const int tid = threadIdx.x, ty = tid / kThreadsX, tx = tid % kThreadsX;
#pragma unroll
  for (int i = 0; i < D::TM; ++i) {
#pragma unroll
    for (int j = 0; j < D::TN; ++j) s[i][j] = 0;
  }
  for (int64_t k0 = 0; k0 < a.d; k0 += D::BK) {
    // Consecutive threads read consecutive k of one row: coalesced global loads; the transposed
    // shared stores hit distinct banks thanks to the +1 padding.
    for (int e = tid; e < D::BM * D::BK; e += kThreads) {
      const int r = e / D::BK, k = e % D::BK;
      const int64_t gr = r0 + r, gk = k0 + k;
      As[k * (D::BM + 1) + r] = (gr < a.B && gk < a.d) ? to_acc(a.query[gr * a.d + gk]) : acc_t(0);
    }
    for (int e = tid; e < D::BN * D::BK; e += kThreads) {
      const int c = e / D::BK, k = e % D::BK;
      const int64_t gc = c0 + c, gk = k0 + k;
      Bs[k * (D::BN + 1) + c] = (gc < a.C && gk < a.d) ? to_acc(a.cand[gc * a.d + gk]) : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < D::BK; ++k) {
      acc_t av[D::TM], bv[D::TN];
#pragma unroll
      for (int i = 0; i < D::TM; ++i) av[i] = As[k * (D::BM + 1) + ty + kThreadsY * i];
#pragma unroll
      for (int j = 0; j < D::TN; ++j) bv[j] = Bs[k * (D::BN + 1) + tx + kThreadsX * j];
#pragma unroll
      for (int i = 0; i < D::TM; ++i) {
#pragma unroll
        for (int j = 0; j < D::TN; ++j) s[i][j] += av[i] * bv[j];
      }
    }
    __syncthreads();
  }
}

// Per-row state of the backward for the calling thread's rows r0 + ty + 16 i.
template <typename acc_t>
struct RowGrad {
  acc_t coef[TileDims<acc_t>::TM];
  acc_t lse[TileDims<acc_t>::TM];
  bool active[TileDims<acc_t>::TM];  // the row's softmax term contributes
};

// Loads the thread's rows; returns whether any of them contributes anything to G.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ bool load_rows(const ScanArgs<scalar_t, acc_t>& a, int64_t r0,
                                          RowGrad<acc_t>& rows) {
  using D = TileDims<acc_t>;
  const int ty = threadIdx.x / kThreadsX;
  bool live = false;
#pragma unroll
  for (int i = 0; i < D::TM; ++i) {
    const int64_t r = r0 + ty + kThreadsY * i;
    rows.coef[i] = 0;
    rows.lse[i] = 0;
    rows.active[i] = false;
    if (r < a.B) {
      rows.coef[i] = a.coef[r];
      rows.lse[i] = a.lse[r];
      // Rows with coef == 0 are skipped like on CPU: their lse may be -inf (nothing unmasked).
      rows.active[i] = rows.coef[i] != acc_t(0) && rows.lse[i] != neg_inf<acc_t>();
      live = live || rows.active[i] || (a.targets != nullptr && a.grad_loss[r] != acc_t(0));
    }
  }
  return live;
}

// G[r, c] = d loss / d (score before the 1/tau of the inner product), for r < B and c < C.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t score_grad(const ScanArgs<scalar_t, acc_t>& a, acc_t raw,
                                            int64_t r, int64_t c, acc_t offset, int64_t cid,
                                            bool active, acc_t coef, acc_t lse) {
  acc_t g = 0;
  if (active && !is_masked(a, r, cid)) g = coef * exp_acc(raw * a.inv_tau + offset - lse);
  if (a.targets != nullptr) {
    const int64_t* y = a.targets + r * a.target_T;
    const acc_t* w = a.target_w + r * a.target_T;
    for (int64_t t = 0; t < a.target_T; ++t) {
      if (y[t] == c && w[t] != acc_t(0)) g -= a.grad_loss[r] * w[t];
    }
  }
  return g;
}

// Forward partials: block (row tile x, column split y) writes the running (max, sum) of each of
// its rows over its column tiles to part_max/part_sum[y, row].
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    dense_scan_fwd_kernel(const ScanArgs<scalar_t, acc_t> a, int64_t tiles_per_split,
                          acc_t* __restrict__ part_max, acc_t* __restrict__ part_sum) {
  using D = TileDims<acc_t>;
  __shared__ acc_t stage[D::kStage];
  const int tid = threadIdx.x, ty = tid / kThreadsX, tx = tid % kThreadsX;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * D::BM;
  const int64_t t_begin = static_cast<int64_t>(blockIdx.y) * tiles_per_split;
  const int64_t t_end = min_i64(t_begin + tiles_per_split, ceil_div(a.C, D::BN));

  OnlineLSE<acc_t> state[D::TM];
  for (int64_t tile = t_begin; tile < t_end; ++tile) {
    const int64_t c0 = tile * D::BN;
    acc_t s[D::TM][D::TN];
    score_tile(a, r0, c0, stage, s);
#pragma unroll
    for (int j = 0; j < D::TN; ++j) {
      const int64_t c = c0 + tx + kThreadsX * j;
      if (c >= a.C) continue;
      const acc_t off = a.offset != nullptr ? a.offset[c] : acc_t(0);
      const int64_t cid = a.hit_ids != nullptr ? a.cand_ids[c] : 0;
#pragma unroll
      for (int i = 0; i < D::TM; ++i) {
        const int64_t r = r0 + ty + kThreadsY * i;
        if (r >= a.B || is_masked(a, r, cid)) continue;
        state[i].add(s[i][j] * a.inv_tau + off);
      }
    }
  }
  // Merge the 16 threads of a row: they are the 16 consecutive lanes with the same ty.
#pragma unroll
  for (int i = 0; i < D::TM; ++i) {
#pragma unroll
    for (int o = kThreadsX / 2; o > 0; o >>= 1) {
      const acc_t m = __shfl_xor_sync(kFullMask, state[i].max, o);
      const acc_t z = __shfl_xor_sync(kFullMask, state[i].sum, o);
      state[i].merge(m, z);
    }
  }
  if (tx == 0) {
#pragma unroll
    for (int i = 0; i < D::TM; ++i) {
      const int64_t r = r0 + ty + kThreadsY * i;
      if (r < a.B) {
        part_max[blockIdx.y * a.B + r] = state[i].max;
        part_sum[blockIdx.y * a.B + r] = state[i].sum;
      }
    }
  }
}

// grad_query pass: block (row tile x, column split y) adds G C / tau over its column tiles to
// grad_query + y * B * d (a per-split partial when there are several splits). Each element of the
// output is read-modified-written by one thread of one block only.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    dense_scan_bwd_query_kernel(const ScanArgs<scalar_t, acc_t> a, int64_t tiles_per_split,
                                acc_t* __restrict__ grad_query) {
  using D = TileDims<acc_t>;
  __shared__ acc_t stage[D::kStage];
  __shared__ acc_t gs[D::kG];  // [BM][BN + 1]
  const int tid = threadIdx.x, ty = tid / kThreadsX, tx = tid % kThreadsX;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * D::BM;
  const int64_t t_begin = static_cast<int64_t>(blockIdx.y) * tiles_per_split;
  const int64_t t_end = min_i64(t_begin + tiles_per_split, ceil_div(a.C, D::BN));
  acc_t* __restrict__ out = grad_query + static_cast<int64_t>(blockIdx.y) * a.B * a.d;

  RowGrad<acc_t> rows;
  const bool live = load_rows(a, r0, rows);
  if (!__syncthreads_or(live)) return;  // block-uniform

  for (int64_t tile = t_begin; tile < t_end; ++tile) {
    const int64_t c0 = tile * D::BN;
    acc_t s[D::TM][D::TN];
    score_tile(a, r0, c0, stage, s);
#pragma unroll
    for (int j = 0; j < D::TN; ++j) {
      const int64_t c = c0 + tx + kThreadsX * j;
      const bool col_ok = c < a.C;
      const acc_t off = (col_ok && a.offset != nullptr) ? a.offset[c] : acc_t(0);
      const int64_t cid = (col_ok && a.hit_ids != nullptr) ? a.cand_ids[c] : 0;
#pragma unroll
      for (int i = 0; i < D::TM; ++i) {
        const int64_t r = r0 + ty + kThreadsY * i;
        const acc_t g = (col_ok && r < a.B)
                            ? score_grad(a, s[i][j], r, c, off, cid, rows.active[i], rows.coef[i],
                                         rows.lse[i])
                            : acc_t(0);
        gs[(ty + kThreadsY * i) * (D::BN + 1) + tx + kThreadsX * j] = g;
      }
    }
    __syncthreads();
    // out[r0 + rr, k0 + kk] += sum_cc G[rr, cc] * cand[c0 + cc, k0 + kk] / tau, d in chunks.
    acc_t* vs = stage;  // [BN][DC + 1]
    for (int64_t k0 = 0; k0 < a.d; k0 += D::DC) {
      for (int e = tid; e < D::BN * D::DC; e += kThreads) {
        const int cc = e / D::DC, kk = e % D::DC;
        const int64_t gc = c0 + cc, gk = k0 + kk;
        vs[cc * (D::DC + 1) + kk] =
            (gc < a.C && gk < a.d) ? to_acc(a.cand[gc * a.d + gk]) : acc_t(0);
      }
      __syncthreads();
      acc_t o[D::TM][D::DJ];
#pragma unroll
      for (int i = 0; i < D::TM; ++i) {
#pragma unroll
        for (int jj = 0; jj < D::DJ; ++jj) o[i][jj] = 0;
      }
#pragma unroll 8
      for (int cc = 0; cc < D::BN; ++cc) {
        acc_t gv[D::TM], vv[D::DJ];
#pragma unroll
        for (int i = 0; i < D::TM; ++i) gv[i] = gs[(ty + kThreadsY * i) * (D::BN + 1) + cc];
#pragma unroll
        for (int jj = 0; jj < D::DJ; ++jj) vv[jj] = vs[cc * (D::DC + 1) + tx + kThreadsX * jj];
#pragma unroll
        for (int i = 0; i < D::TM; ++i) {
#pragma unroll
          for (int jj = 0; jj < D::DJ; ++jj) o[i][jj] += gv[i] * vv[jj];
        }
      }
#pragma unroll
      for (int i = 0; i < D::TM; ++i) {
        const int64_t r = r0 + ty + kThreadsY * i;
#pragma unroll
        for (int jj = 0; jj < D::DJ; ++jj) {
          const int64_t k = k0 + tx + kThreadsX * jj;
          if (r < a.B && k < a.d) out[r * a.d + k] += o[i][jj] * a.inv_tau;
        }
      }
      __syncthreads();  // vs (and, after the last chunk, gs) free again
    }
  }
}

// grad_candidates pass: block (column tile x, row split y) adds G^T Q / tau over its row tiles
// to grad_cand + y * C * d, and the column sums of G to grad_offset + y * C (when set). Each
// output element is read-modified-written by one thread of one block only.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    dense_scan_bwd_cand_kernel(const ScanArgs<scalar_t, acc_t> a, int64_t tiles_per_split,
                               acc_t* __restrict__ grad_cand, acc_t* __restrict__ grad_offset) {
  using D = TileDims<acc_t>;
  __shared__ acc_t stage[D::kStage];
  __shared__ acc_t gs[D::kG];  // [BM][BN + 1]
  const int tid = threadIdx.x, ty = tid / kThreadsX, tx = tid % kThreadsX;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * D::BN;
  const int64_t t_begin = static_cast<int64_t>(blockIdx.y) * tiles_per_split;
  const int64_t t_end = min_i64(t_begin + tiles_per_split, ceil_div(a.B, D::BM));
  acc_t* __restrict__ out = grad_cand + static_cast<int64_t>(blockIdx.y) * a.C * a.d;
  acc_t* __restrict__ out_offset =
      grad_offset != nullptr ? grad_offset + static_cast<int64_t>(blockIdx.y) * a.C : nullptr;

  // The thread's columns are fixed for the whole block.
  acc_t off[D::TN];
  int64_t cid[D::TN];
  acc_t colsum[D::TN];
#pragma unroll
  for (int j = 0; j < D::TN; ++j) {
    const int64_t c = c0 + tx + kThreadsX * j;
    off[j] = (c < a.C && a.offset != nullptr) ? a.offset[c] : acc_t(0);
    cid[j] = (c < a.C && a.hit_ids != nullptr) ? a.cand_ids[c] : 0;
    colsum[j] = 0;
  }

  for (int64_t tile = t_begin; tile < t_end; ++tile) {
    const int64_t r0 = tile * D::BM;
    RowGrad<acc_t> rows;
    const bool live = load_rows(a, r0, rows);
    if (!__syncthreads_or(live)) continue;  // block-uniform
    acc_t s[D::TM][D::TN];
    score_tile(a, r0, c0, stage, s);
#pragma unroll
    for (int j = 0; j < D::TN; ++j) {
      const int64_t c = c0 + tx + kThreadsX * j;
#pragma unroll
      for (int i = 0; i < D::TM; ++i) {
        const int64_t r = r0 + ty + kThreadsY * i;
        const acc_t g = (c < a.C && r < a.B)
                            ? score_grad(a, s[i][j], r, c, off[j], cid[j], rows.active[i],
                                         rows.coef[i], rows.lse[i])
                            : acc_t(0);
        colsum[j] += g;
        gs[(ty + kThreadsY * i) * (D::BN + 1) + tx + kThreadsX * j] = g;
      }
    }
    __syncthreads();
    // out[c0 + cc, k0 + kk] += sum_rr G[rr, cc] * query[r0 + rr, k0 + kk] / tau, d in chunks.
    acc_t* us = stage;  // [BM][DC + 1]
    for (int64_t k0 = 0; k0 < a.d; k0 += D::DC) {
      for (int e = tid; e < D::BM * D::DC; e += kThreads) {
        const int rr = e / D::DC, kk = e % D::DC;
        const int64_t gr = r0 + rr, gk = k0 + kk;
        us[rr * (D::DC + 1) + kk] =
            (gr < a.B && gk < a.d) ? to_acc(a.query[gr * a.d + gk]) : acc_t(0);
      }
      __syncthreads();
      constexpr int CI = D::BN / kThreadsY;  // columns per thread in this product
      acc_t o[CI][D::DJ];
#pragma unroll
      for (int i = 0; i < CI; ++i) {
#pragma unroll
        for (int jj = 0; jj < D::DJ; ++jj) o[i][jj] = 0;
      }
#pragma unroll 8
      for (int rr = 0; rr < D::BM; ++rr) {
        acc_t gv[CI], uv[D::DJ];
#pragma unroll
        for (int i = 0; i < CI; ++i) gv[i] = gs[rr * (D::BN + 1) + ty + kThreadsY * i];
#pragma unroll
        for (int jj = 0; jj < D::DJ; ++jj) uv[jj] = us[rr * (D::DC + 1) + tx + kThreadsX * jj];
#pragma unroll
        for (int i = 0; i < CI; ++i) {
#pragma unroll
          for (int jj = 0; jj < D::DJ; ++jj) o[i][jj] += gv[i] * uv[jj];
        }
      }
#pragma unroll
      for (int i = 0; i < CI; ++i) {
        const int64_t c = c0 + ty + kThreadsY * i;
#pragma unroll
        for (int jj = 0; jj < D::DJ; ++jj) {
          const int64_t k = k0 + tx + kThreadsX * jj;
          if (c < a.C && k < a.d) out[c * a.d + k] += o[i][jj] * a.inv_tau;
        }
      }
      __syncthreads();  // us (and, after the last chunk, gs) free again
    }
  }

  if (out_offset != nullptr) {
    // Sum colsum over the 16 thread rows (ty) in a fixed order, through the (free) G tile.
    // NB: gs is free: every loop iteration ends with a barrier after its last read of gs.
#pragma unroll
    for (int j = 0; j < D::TN; ++j) gs[ty * (D::BN + 1) + tx + kThreadsX * j] = colsum[j];
    __syncthreads();
    if (tid < D::BN) {
      const int64_t c = c0 + tid;
      acc_t sum = 0;
      for (int y = 0; y < kThreadsY; ++y) sum += gs[y * (D::BN + 1) + tid];
      if (c < a.C) out_offset[c] += sum;
    }
  }
}

// out[i] += sum_s part[s * n + i], the splits in order (deterministic).
template <typename acc_t>
__global__ void reduce_splits_kernel(const acc_t* __restrict__ part, int64_t splits, int64_t n,
                                     acc_t* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    acc_t s = 0;
    for (int64_t sp = 0; sp < splits; ++sp) s += part[sp * n + i];
    out[i] += s;
  }
}

// Per-row forward of sampled softmax: candidates' log-sum-exp (merged from the dense scan's
// partials, or computed over candidate_index), then the positives, lse and loss.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kRowWarps* kWarp)
    sampled_softmax_ce_fwd_kernel(const SampledSoftmaxCEFwdParams<scalar_t> p) {
  const int lane = threadIdx.x % kWarp;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarp;
  if (b >= p.B) return;  // warp-uniform
  const int64_t T = p.T, d = p.d;
  const scalar_t* q = p.query + b * d;
  const int64_t* pid = p.positive_ids != nullptr ? p.positive_ids + b * T : nullptr;

  OnlineLSE<acc_t> cand;
  if (p.candidate_index != nullptr) {
    const int64_t H = p.H;
    for (int64_t h = 0; h < H; ++h) {
      const int64_t j = p.candidate_index[b * H + h];
      if (j < 0) continue;  // padding
      if (p.mask_hits && is_accidental_hit(p.candidate_ids[j], pid, T)) continue;
      const acc_t s = warp_dot<scalar_t, acc_t>(q, p.candidates + j * d, d, lane) * p.inv_tau -
                      (p.candidate_log_q != nullptr ? p.candidate_log_q[b * H + h] : acc_t(0));
      cand.add(s);
    }
  } else {
    for (int64_t sp = 0; sp < p.plan.col_splits; ++sp) {
      cand.merge(p.partial_max[sp * p.B + b], p.partial_sum[sp * p.B + b]);
    }
  }
  // As on CPU: the candidates' log-sum-exp enters as one term, then the positives.
  OnlineLSE<acc_t> state;
  state.merge(cand.value(), acc_t(1));
  acc_t total_w = 0, weighted_s = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t bt = b * T + t;
    if (pid != nullptr && pid[t] < 0) continue;  // padding
    const acc_t s = warp_dot<scalar_t, acc_t>(q, p.positives + bt * d, d, lane) * p.inv_tau -
                    (p.positive_log_q != nullptr ? p.positive_log_q[bt] : acc_t(0));
    state.add(s);
    total_w += p.positive_weights[bt];
    weighted_s += p.positive_weights[bt] * s;
  }
  if (lane == 0) {
    const acc_t lse = state.value();
    p.lse[b] = lse;
    p.loss[b] = total_w == acc_t(0) ? acc_t(0) : total_w * lse - weighted_s;
  }
}

// Per-row backward of sampled softmax: the per-row candidates (when candidate_index is set; the
// shared candidates are done by the dense passes before) and the positives.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kRowWarps* kWarp)
    sampled_softmax_ce_bwd_kernel(const SampledSoftmaxCEBwdParams<scalar_t> p) {
  const int lane = threadIdx.x % kWarp;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarp;
  if (b >= p.B) return;  // warp-uniform
  const int64_t T = p.T, d = p.d;
  const scalar_t* q = p.query + b * d;
  const int64_t* pid = p.positive_ids != nullptr ? p.positive_ids + b * T : nullptr;
  acc_t* gq = p.grad_query + b * d;  // NB: row b of grad_query belongs to this warp
  const acc_t lse = p.lse[b], coef = p.coef[b];

  if (p.candidate_index != nullptr && coef != acc_t(0) && lse != neg_inf<acc_t>()) {
    const int64_t H = p.H;
    for (int64_t h = 0; h < H; ++h) {
      const int64_t j = p.candidate_index[b * H + h];
      if (j < 0) continue;
      if (p.mask_hits && is_accidental_hit(p.candidate_ids[j], pid, T)) continue;
      const scalar_t* c = p.candidates + j * d;
      const acc_t s = warp_dot<scalar_t, acc_t>(q, c, d, lane) * p.inv_tau -
                      (p.candidate_log_q != nullptr ? p.candidate_log_q[b * H + h] : acc_t(0));
      const acc_t g = coef * exp_acc(s - lse) * p.inv_tau;
      acc_t* gc = p.grad_candidates + j * d;
      for (int64_t k = lane; k < d; k += kWarp) {
        gq[k] += g * to_acc(c[k]);
        atomicAdd(gc + k, g * to_acc(q[k]));  // rows may share candidate j
      }
    }
  }

  // d loss / d s+_bt = g_b * (W_b * softmax(s+_bt) - w_bt).
  const acc_t W = p.total_weight[b], gl = p.grad_loss[b];
  if (W == acc_t(0)) return;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t bt = b * T + t;
    if (pid != nullptr && pid[t] < 0) continue;
    const scalar_t* e = p.positives + bt * d;
    const acc_t s = warp_dot<scalar_t, acc_t>(q, e, d, lane) * p.inv_tau -
                    (p.positive_log_q != nullptr ? p.positive_log_q[bt] : acc_t(0));
    const acc_t ds = gl * (W * exp_acc(s - lse) - p.valid_weights[bt]) * p.inv_tau;
    acc_t* ge = p.grad_positives + bt * d;
    for (int64_t k = lane; k < d; k += kWarp) {
      gq[k] += ds * to_acc(e[k]);
      ge[k] += ds * to_acc(q[k]);
    }
  }
}

// Per-row forward of full softmax: merges the scan's partials into lse, then the targets' scores
// give the loss.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kRowWarps* kWarp)
    full_softmax_ce_fwd_kernel(const FullSoftmaxCEFwdParams<scalar_t> p) {
  const int lane = threadIdx.x % kWarp;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarp;
  if (b >= p.B) return;  // warp-uniform
  const int64_t T = p.T, d = p.d;
  const scalar_t* q = p.query + b * d;
  OnlineLSE<acc_t> state;
  for (int64_t sp = 0; sp < p.plan.col_splits; ++sp) {
    state.merge(p.partial_max[sp * p.B + b], p.partial_sum[sp * p.B + b]);
  }
  const acc_t lse = state.value();
  acc_t total_w = 0, weighted_s = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t bt = b * T + t, y = p.targets[bt];
    if (y < 0) continue;
    const acc_t s = warp_dot<scalar_t, acc_t>(q, p.weight + y * d, d, lane) * p.inv_tau +
                    (p.offset != nullptr ? p.offset[y] : acc_t(0));
    total_w += p.target_weights[bt];
    weighted_s += p.target_weights[bt] * s;
  }
  if (lane == 0) {
    p.lse[b] = lse;
    p.loss[b] = total_w == acc_t(0) ? acc_t(0) : total_w * lse - weighted_s;
  }
}

// ---------------------------------------------------------------------------------------------
// Launch helpers.

template <typename acc_t>
void launch_reduce_splits(const acc_t* part, int64_t splits, int64_t n, acc_t* out,
                          cudaStream_t stream) {
  if (n == 0) return;
  const int threads = 256;
  const int64_t blocks = min_i64(ceil_div(n, threads), 8192);
  reduce_splits_kernel<acc_t><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(part, splits,
                                                                                      n, out);
}

dim3 row_kernel_grid(int64_t B) { return dim3(static_cast<unsigned>(ceil_div(B, kRowWarps))); }

template <typename scalar_t, typename acc_t>
void launch_dense_scan_fwd(const ScanArgs<scalar_t, acc_t>& a, const DenseScanPlan& plan,
                           acc_t* part_max, acc_t* part_sum, cudaStream_t stream) {
  if (plan.row_tiles == 0 || plan.col_splits == 0) return;
  const dim3 grid(static_cast<unsigned>(plan.row_tiles), static_cast<unsigned>(plan.col_splits));
  dense_scan_fwd_kernel<scalar_t, acc_t>
      <<<grid, kThreads, 0, stream>>>(a, plan.col_tiles_per_split, part_max, part_sum);
}

// Runs both backward passes. grad_offset may be null; the partial buffers are read only when the
// plan splits the corresponding axis.
template <typename scalar_t, typename acc_t>
void launch_dense_scan_bwd(const ScanArgs<scalar_t, acc_t>& a, const DenseScanPlan& plan,
                           acc_t* grad_query, acc_t* grad_query_partial, acc_t* grad_cand,
                           acc_t* grad_cand_partial, acc_t* grad_offset,
                           acc_t* grad_offset_partial, cudaStream_t stream) {
  if (plan.row_tiles == 0 || plan.col_tiles == 0) return;
  if (a.d > 0) {
    const bool split = plan.col_splits > 1;
    const dim3 grid(static_cast<unsigned>(plan.row_tiles), static_cast<unsigned>(plan.col_splits));
    dense_scan_bwd_query_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        a, plan.col_tiles_per_split, split ? grad_query_partial : grad_query);
    if (split) {
      launch_reduce_splits(grad_query_partial, plan.col_splits, a.B * a.d, grad_query, stream);
    }
  }
  // With d == 0 the scores are the offsets alone, which still have a gradient.
  if (a.d > 0 || grad_offset != nullptr) {
    const bool split = plan.row_splits > 1;
    const dim3 grid(static_cast<unsigned>(plan.col_tiles), static_cast<unsigned>(plan.row_splits));
    dense_scan_bwd_cand_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        a, plan.row_tiles_per_split, split ? grad_cand_partial : grad_cand,
        grad_offset == nullptr ? nullptr : (split ? grad_offset_partial : grad_offset));
    if (split) {
      launch_reduce_splits(grad_cand_partial, plan.row_splits, a.C * a.d, grad_cand, stream);
      if (grad_offset != nullptr) {
        launch_reduce_splits(grad_offset_partial, plan.row_splits, a.C, grad_offset, stream);
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
ScanArgs<scalar_t, acc_t> sampled_scan_args(const SampledSoftmaxCEInputs<scalar_t>& p) {
  ScanArgs<scalar_t, acc_t> a;
  a.query = p.query;
  a.cand = p.candidates;
  a.offset = p.candidate_offset;
  if (p.mask_hits) {
    a.hit_ids = p.positive_ids;
    a.cand_ids = p.candidate_ids;
    a.hit_T = p.T;
  }
  a.inv_tau = p.inv_tau;
  a.B = p.B;
  a.C = p.C;
  a.d = p.d;
  return a;
}

template <typename scalar_t, typename acc_t>
ScanArgs<scalar_t, acc_t> full_scan_args(const FullSoftmaxCEInputs<scalar_t>& p) {
  ScanArgs<scalar_t, acc_t> a;
  a.query = p.query;
  a.cand = p.weight;
  a.offset = p.offset;
  a.inv_tau = p.inv_tau;
  a.B = p.B;
  a.C = p.N;
  a.d = p.d;
  return a;
}

// Splits `tiles` into at most `want` contiguous non-empty ranges.
void split_tiles(int64_t tiles, int64_t want, int64_t* splits, int64_t* per_split) {
  constexpr int64_t kMaxGridY = 65535;
  want = want < 1 ? 1 : want;
  want = min_i64(min_i64(want, tiles), kMaxGridY);
  *per_split = ceil_div(tiles, want);
  *splits = ceil_div(tiles, *per_split);
}

}  // namespace

DenseScanPlan plan_dense_scan(int64_t B, int64_t C, bool double_acc) {
  DenseScanPlan plan;
  if (B <= 0 || C <= 0) return plan;
  const int64_t BM = double_acc ? Tile<double>::BM : Tile<float>::BM;
  const int64_t BN = double_acc ? Tile<double>::BN : Tile<float>::BN;
  plan.row_tiles = ceil_div(B, BM);
  plan.col_tiles = ceil_div(C, BN);
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      sms <= 0) {
    (void)cudaGetLastError();  // not fatal: plan for a large GPU
    sms = 132;
  }
  // Two blocks per SM: each block loops over many tiles, so this fills the GPU while keeping the
  // split partials (grad_query: col_splits x B x d) small.
  const int64_t target = 2 * static_cast<int64_t>(sms);
  split_tiles(plan.col_tiles, ceil_div(target, plan.row_tiles), &plan.col_splits,
              &plan.col_tiles_per_split);
  split_tiles(plan.row_tiles, ceil_div(target, plan.col_tiles), &plan.row_splits,
              &plan.row_tiles_per_split);
  return plan;
}

template <typename scalar_t>
void launch_sampled_softmax_ce_fwd(const SampledSoftmaxCEFwdParams<scalar_t>& p,
                                   cudaStream_t stream) {
  using acc_t = acc_type_t<scalar_t>;
  if (p.B == 0) return;
  if (p.candidate_index == nullptr) {
    launch_dense_scan_fwd(sampled_scan_args<scalar_t, acc_t>(p), p.plan, p.partial_max,
                          p.partial_sum, stream);
  }
  sampled_softmax_ce_fwd_kernel<scalar_t, acc_t>
      <<<row_kernel_grid(p.B), kRowWarps * kWarp, 0, stream>>>(p);
}

template <typename scalar_t>
void launch_sampled_softmax_ce_bwd(const SampledSoftmaxCEBwdParams<scalar_t>& p,
                                   cudaStream_t stream) {
  using acc_t = acc_type_t<scalar_t>;
  if (p.B == 0) return;
  if (p.candidate_index == nullptr && p.d > 0) {
    ScanArgs<scalar_t, acc_t> a = sampled_scan_args<scalar_t, acc_t>(p);
    a.grad_loss = p.grad_loss;
    a.coef = p.coef;
    a.lse = p.lse;
    launch_dense_scan_bwd(a, p.plan, p.grad_query, p.grad_query_partial, p.grad_candidates,
                          p.grad_candidates_partial, static_cast<acc_t*>(nullptr),
                          static_cast<acc_t*>(nullptr), stream);
  }
  // NB: runs after the dense passes on the same stream; it adds to their grad_query rows.
  sampled_softmax_ce_bwd_kernel<scalar_t, acc_t>
      <<<row_kernel_grid(p.B), kRowWarps * kWarp, 0, stream>>>(p);
}

template <typename scalar_t>
void launch_full_softmax_ce_fwd(const FullSoftmaxCEFwdParams<scalar_t>& p, cudaStream_t stream) {
  using acc_t = acc_type_t<scalar_t>;
  if (p.B == 0) return;
  launch_dense_scan_fwd(full_scan_args<scalar_t, acc_t>(p), p.plan, p.partial_max, p.partial_sum,
                        stream);
  full_softmax_ce_fwd_kernel<scalar_t, acc_t>
      <<<row_kernel_grid(p.B), kRowWarps * kWarp, 0, stream>>>(p);
}

template <typename scalar_t>
void launch_full_softmax_ce_bwd(const FullSoftmaxCEBwdParams<scalar_t>& p, cudaStream_t stream) {
  using acc_t = acc_type_t<scalar_t>;
  if (p.B == 0 || p.N == 0) return;
  ScanArgs<scalar_t, acc_t> a = full_scan_args<scalar_t, acc_t>(p);
  a.targets = p.targets;
  a.target_w = p.target_weights;
  a.target_T = p.T;
  a.grad_loss = p.grad_loss;
  a.coef = p.coef;
  a.lse = p.lse;
  launch_dense_scan_bwd(a, p.plan, p.grad_query, p.grad_query_partial, p.grad_weight,
                        p.grad_weight_partial, p.grad_offset, p.grad_offset_partial, stream);
}

#define FASTSOFTMAX_INSTANTIATE_SOFTMAX_CE(scalar_t)                                              \
  template void launch_sampled_softmax_ce_fwd<scalar_t>(                                          \
      const SampledSoftmaxCEFwdParams<scalar_t>&, cudaStream_t);                                   \
  template void launch_sampled_softmax_ce_bwd<scalar_t>(                                          \
      const SampledSoftmaxCEBwdParams<scalar_t>&, cudaStream_t);                                   \
  template void launch_full_softmax_ce_fwd<scalar_t>(const FullSoftmaxCEFwdParams<scalar_t>&,      \
                                                     cudaStream_t);                               \
  template void launch_full_softmax_ce_bwd<scalar_t>(const FullSoftmaxCEBwdParams<scalar_t>&,      \
                                                     cudaStream_t);

FASTSOFTMAX_INSTANTIATE_SOFTMAX_CE(float)
FASTSOFTMAX_INSTANTIATE_SOFTMAX_CE(double)
FASTSOFTMAX_INSTANTIATE_SOFTMAX_CE(__half)
FASTSOFTMAX_INSTANTIATE_SOFTMAX_CE(__nv_bfloat16)

#undef FASTSOFTMAX_INSTANTIATE_SOFTMAX_CE

}  // namespace cuda
}  // namespace fastsoftmax
