// Plain C++ interface of the CUDA top-k inner-product kernels (DESIGN.md §3: the scan with a
// top-k epilogue). No torch headers; the torch glue is topk_cuda.cpp, which computes the scores
// of a chunk of items with cuBLAS (at::mm, fp32 accumulation) and hands the [B, C] chunk to
// launch_topk_select, so no [B x N] buffer ever exists.
//
// A candidate is one uint64 key: (order-preserving bits of the float score) << 32 | ~index, so
// "higher score first, lower index on ties" is unsigned `>` and every key is distinct; 0 means
// "empty" (an eligible score's key is always > 0). This needs N <= 2^32 - 2 (checked by the glue).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fastsoftmax {
namespace cuda {

// The in-kernel selection keeps up to this many results per row; the glue routes larger k to
// a chunked sort over packed keys (exact too).
constexpr int64_t kTopkMaxKernelK = 2048;

struct TopkSelectParams {
  const float* scores = nullptr;        // [rows, cols] raw inner products of the chunk, row-major
  int64_t rows = 0;                     // B
  int64_t cols = 0;                     // items in this chunk
  int64_t col0 = 0;                     // global index of the chunk's first item
  const float* bias = nullptr;          // [N] (global item index) or nullptr
  const int64_t* ex_offsets = nullptr;  // [rows + 1] CSR offsets or nullptr
  const int64_t* ex_sorted = nullptr;   // [E] each row's excluded items, sorted ascending
  uint64_t* run_keys = nullptr;         // [rows, k] running top-k, sorted descending, 0 = empty
  uint64_t* partial_keys = nullptr;     // [rows, slices, k] workspace when slices > 1
  int64_t k = 0;                        // 1 <= k <= kTopkMaxKernelK
  int64_t slices = 1;                   // CUDA blocks per row for this chunk (topk_plan_slices)
};

// How many CUDA blocks scan each row of a [rows, cols] chunk: enough blocks to fill the device,
// but at least 4096 columns per block.
int64_t topk_plan_slices(int64_t rows, int64_t cols);

// Merges the chunk into run_keys (each slice selects from its columns, then the partial lists are
// merged with the running list). Skips NaN/-inf scores and excluded items.
void launch_topk_select(const TopkSelectParams& p, cudaStream_t stream);

// Decodes run_keys [rows, k] into scores [rows, k] float32 and indices [rows, k] int64; empty
// slots become (-inf, -1).
void launch_topk_finalize(const uint64_t* run_keys, int64_t rows, int64_t k, float* scores,
                          int64_t* indices, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastsoftmax
