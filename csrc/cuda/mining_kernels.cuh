// Plain C++ interface of the CUDA hard-negative mining kernels (DESIGN.md §3: the scan with a
// top-k or a sample epilogue). No torch headers; the torch glue is mining_cuda.cpp, which scores
// one [rows, cols] tile of queries x pool rows with cuBLAS (at::mm, fp32 or fp64 accumulation)
// and hands it to these epilogues, so no [B x P] buffer ever exists.
//
// Each epilogue runs one CUDA block per query row of the tile. Per-row state lives in small
// [B] / [B, H] buffers between tiles; tiles of one row are processed in pool order.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fastsoftmax {
namespace cuda {

// Limits of the shared-memory sorts (the glue checks them and names `num`).
constexpr int64_t kMiningMaxSampleNum = 4096;  // draws per row, sorted in shared memory
constexpr int64_t kMiningMaxTopkNum = 1024;    // running top-H list per row

// One score tile: raw inner products q_b . pool_i for rows [r0, r0 + rows) and pool rows
// [c0, c0 + cols), row-major with leading dimension cols, in the acc dtype (float or double).
// The epilogues write -inf over each row's excluded positions in place.
struct MiningTile {
  void* scores = nullptr;
  int64_t r0 = 0, rows = 0, c0 = 0, cols = 0;
  const int64_t* excl_ptr = nullptr;  // [B + 1] CSR offsets of excluded pool positions, or null
  const int64_t* excl_pos = nullptr;  // [nnz] pool positions
};

// Sample mode (pass 1: log-sum-exp; pass 2: CDF walk with sorted Philox draws). acc-typed
// pointers are float* or double* as is_double says.
struct MiningSampleParams {
  bool is_double = false;
  int64_t B = 0, H = 0;
  double inv_tau = 1.0;
  uint64_t seed = 0, offset = 0;
  void* lse_max = nullptr;         // [B] acc, pass-1 running max, starts at -inf
  void* lse_sum = nullptr;         // [B] acc, pass-1 running sum of exp(s - max), starts at 0
  void* lse = nullptr;             // [B] acc, log-sum-exp after pass 1
  double* draw_u = nullptr;        // [B, H] each row's uniforms, sorted ascending
  int32_t* draw_h = nullptr;       // [B, H] the output column of each sorted uniform
  double* cdf = nullptr;           // [B] CDF mass walked so far
  int32_t* next = nullptr;         // [B] first draw not yet placed (sorted order)
  int64_t* last = nullptr;         // [B] last pool row with non-zero probability, -1 if none
  void* last_score = nullptr;      // [B] acc, its scaled score
  const void* pool_log_q = nullptr;  // [P] acc or null
  int64_t* out_index = nullptr;    // [B, H]
  void* out_log_q = nullptr;       // [B, H] acc
};

// Top-k mode: a running list per row, best first (higher score, lower index on ties).
struct MiningTopkParams {
  bool is_double = false;
  int64_t B = 0, H = 0;
  void* list_score = nullptr;       // [B, H] acc
  int32_t* list_index = nullptr;    // [B, H] pool rows (the glue checks P < 2^31)
  int32_t* list_count = nullptr;    // [B] entries held, starts at 0
  const void* pool_log_q = nullptr; // [P] acc or null
  int64_t* out_index = nullptr;     // [B, H]
  void* out_log_q = nullptr;        // [B, H] acc
};

// Sample mode.
void launch_mining_lse_tile(const MiningTile& tile, const MiningSampleParams& p,
                            cudaStream_t stream);
// lse = max + log(sum); draws sorted; walk state reset.
void launch_mining_sample_prepare(const MiningSampleParams& p, cudaStream_t stream);
void launch_mining_walk_tile(const MiningTile& tile, const MiningSampleParams& p,
                             cudaStream_t stream);
// Draws the walk did not place: -1/+inf without an eligible pool row, else the last eligible row.
void launch_mining_sample_finish(const MiningSampleParams& p, cudaStream_t stream);

// Top-k mode.
void launch_mining_topk_tile(const MiningTile& tile, const MiningTopkParams& p,
                             cudaStream_t stream);
void launch_mining_topk_finish(const MiningTopkParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastsoftmax
