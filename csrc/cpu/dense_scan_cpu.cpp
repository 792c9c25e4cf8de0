#include "cpu/dense_scan_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm_cpu_dispatch.h>
#include <ATen/ops/mm_cpu_dispatch.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <algorithm>

#include "common/math.h"
#include "cpu/epilogue_cpu.h"

namespace fastsoftmax {
namespace cpu {
namespace {

// A 256 x 512 fp32 score tile is 512 KiB: it stays in a Zen 4 / Sapphire Rapids L2 between the
// matmul that writes it and the epilogue that reads it, and each tile's matmul (33 MFLOP at
// d = 128) is long enough that per-tile dispatch overhead stays in the low percent.
constexpr int64_t kRowBlock = 256;
constexpr int64_t kColTile = 512;
// The fused forward-backward keeps a panel of rows x C scores between its two passes: at most
// this many bytes, and at least kMinPanelRows rows (fewer make the matmuls inefficient).
constexpr int64_t kPanelBytes = 32 << 20;
constexpr int64_t kMinPanelRows = 32;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Tiles of the [B x C] score matrix, and which axis threads split. Threads split the longer
// axis, so the per-thread partial gradients are those of the shorter one
// (threads x min(B, C) x d).
struct TileGrid {
  int64_t B, C, row_blocks, col_tiles;
  bool rows_outer;

  TileGrid(int64_t B_, int64_t C_)
      : B(B_), C(C_), row_blocks(ceil_div(B_, kRowBlock)), col_tiles(ceil_div(C_, kColTile)),
        rows_outer(B_ >= C_) {}

  template <typename Fn>
  void for_each(Fn&& fn) const {
    const int64_t outer = rows_outer ? row_blocks : col_tiles;
    const int64_t inner = rows_outer ? col_tiles : row_blocks;
    at::parallel_for(0, outer, 1, [&](int64_t begin, int64_t end) {
      // NB: dispatch-key exclusions are thread-local and worker threads start without the
      // caller's, so the tensor ops below would otherwise see autograd keys.
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      const int tid = at::get_thread_num();
      for (int64_t o = begin; o < end; ++o) {
        for (int64_t i = 0; i < inner; ++i) {
          const int64_t rb = rows_outer ? o : i, ct = rows_outer ? i : o;
          const int64_t r0 = rb * kRowBlock, c0 = ct * kColTile;
          fn(tid, r0, std::min(B, r0 + kRowBlock), c0, std::min(C, c0 + kColTile));
        }
      }
    });
  }
};

struct ScoreTile {
  at::Tensor query_block;  // [rows, d] acc dtype
  at::Tensor cand_block;   // [cols, d] acc dtype
  at::Tensor scores;       // [rows, cols] acc dtype, a view of the thread's buffer
};

// Raw inner products of rows [r0, r1) with candidates [c0, c1), in the acc dtype (fp16/bf16
// inputs are widened per tile, so the products accumulate in fp32).
ScoreTile score_tile(const DenseScan& scan, const at::Tensor& thread_buffer, int64_t r0,
                     int64_t r1, int64_t c0, int64_t c1) {
  const auto acc = thread_buffer.scalar_type();
  ScoreTile tile;
  tile.query_block = scan.query.narrow(0, r0, r1 - r0).to(acc);
  tile.cand_block = scan.candidates.narrow(0, c0, c1 - c0).to(acc);
  tile.scores = thread_buffer.narrow(0, 0, (r1 - r0) * (c1 - c0)).view({r1 - r0, c1 - c0});
  // at::cpu:: calls the CPU kernel directly: no dispatcher round trip per tile.
  at::cpu::mm_out(tile.scores, tile.query_block, tile.cand_block.t());
  return tile;
}

bool masks_hits(const DenseScan& scan) {
  return scan.hit_ids.defined() && scan.candidate_ids.defined();
}

template <typename acc_t>
void mask_row(const DenseScan& scan, acc_t* row, int64_t r, int64_t c0, int64_t cols) {
  if (!masks_hits(scan)) return;
  const int64_t T = scan.hit_ids.size(1);
  const int64_t* hits = scan.hit_ids.const_data_ptr<int64_t>() + r * T;
  const int64_t* ids = scan.candidate_ids.const_data_ptr<int64_t>() + c0;
  for (int64_t t = 0; t < T; ++t) {
    if (hits[t] < 0) continue;  // padding
    mask_ids(row, cols, ids, hits[t], neg_inf<acc_t>());
  }
}

at::ScalarType acc_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

at::Tensor dense_scan_logsumexp(const DenseScan& scan) {
  const int64_t B = scan.query.size(0), C = scan.candidates.size(0);
  const auto acc = acc_dtype(scan.query);
  auto opts = scan.query.options().dtype(acc);
  if (B == 0 || C == 0) return at::full({B}, -std::numeric_limits<double>::infinity(), opts);

  const int nthreads = at::get_num_threads();
  const TileGrid grid(B, C);
  auto run_max = at::full({nthreads, B}, -std::numeric_limits<double>::infinity(), opts);
  auto run_sum = at::zeros({nthreads, B}, opts);
  auto buffers = at::empty({nthreads, kRowBlock * kColTile}, opts);

  AT_DISPATCH_FLOATING_TYPES(acc, "dense_scan_logsumexp", [&] {
    using acc_t = scalar_t;
    const acc_t* offset =
        scan.offset.defined() ? scan.offset.const_data_ptr<acc_t>() : nullptr;
    const auto inv_tau = static_cast<acc_t>(scan.inv_tau);
    grid.for_each([&](int tid, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
      ScoreTile tile = score_tile(scan, buffers[tid], r0, r1, c0, c1);
      acc_t* s = tile.scores.data_ptr<acc_t>();
      acc_t* max_out = run_max.data_ptr<acc_t>() + tid * B;
      acc_t* sum_out = run_sum.data_ptr<acc_t>() + tid * B;
      const int64_t cols = c1 - c0;
      for (int64_t r = r0; r < r1; ++r) {
        acc_t* row = s + (r - r0) * cols;
        mask_row(scan, row, r, c0, cols);
        const acc_t m = scale_shift_max(row, cols, inv_tau, offset ? offset + c0 : nullptr);
        if (m == neg_inf<acc_t>()) continue;
        OnlineLSE<acc_t> state(max_out[r], sum_out[r]);
        state.merge(m, sum_exp_shifted(row, cols, m));
        max_out[r] = state.max;
        sum_out[r] = state.sum;
      }
    });
  });

  // Merge the per-thread partial states row by row.
  auto lse = at::empty({B}, opts);
  AT_DISPATCH_FLOATING_TYPES(acc, "dense_scan_merge", [&] {
    using acc_t = scalar_t;
    const acc_t* m = run_max.const_data_ptr<acc_t>();
    const acc_t* s = run_sum.const_data_ptr<acc_t>();
    acc_t* out = lse.data_ptr<acc_t>();
    for (int64_t b = 0; b < B; ++b) {
      OnlineLSE<acc_t> state;
      for (int t = 0; t < nthreads; ++t) state.merge(m[t * B + b], s[t * B + b]);
      out[b] = state.value();
    }
  });
  return lse;
}

void dense_scan_backward(const DenseScan& scan, const at::Tensor& lse, const at::Tensor& coef,
                         at::Tensor& grad_query, at::Tensor& grad_candidates,
                         at::Tensor& grad_offset) {
  const int64_t B = scan.query.size(0), C = scan.candidates.size(0), d = scan.query.size(1);
  if (B == 0 || C == 0 || d == 0) return;
  const auto acc = acc_dtype(scan.query);
  auto opts = scan.query.options().dtype(acc);
  const int nthreads = at::get_num_threads();
  const TileGrid grid(B, C);
  const bool with_offset_grad = grad_offset.defined();

  // Partial sums for the axis that threads share (see TileGrid).
  at::Tensor query_partial, cand_partial, offset_partial;
  if (grid.rows_outer) {
    cand_partial = at::zeros({nthreads, C, d}, opts);
    if (with_offset_grad) offset_partial = at::zeros({nthreads, C}, opts);
  } else {
    query_partial = at::zeros({nthreads, B, d}, opts);
  }
  auto buffers = at::empty({nthreads, kRowBlock * kColTile}, opts);

  AT_DISPATCH_FLOATING_TYPES(acc, "dense_scan_backward", [&] {
    using acc_t = scalar_t;
    const acc_t* offset =
        scan.offset.defined() ? scan.offset.const_data_ptr<acc_t>() : nullptr;
    const acc_t* lse_p = lse.const_data_ptr<acc_t>();
    const acc_t* coef_p = coef.const_data_ptr<acc_t>();
    const auto inv_tau = static_cast<acc_t>(scan.inv_tau);
    grid.for_each([&](int tid, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
      ScoreTile tile = score_tile(scan, buffers[tid], r0, r1, c0, c1);
      acc_t* s = tile.scores.data_ptr<acc_t>();
      const int64_t cols = c1 - c0, rows = r1 - r0;
      bool any = false;
      for (int64_t r = r0; r < r1; ++r) {
        acc_t* row = s + (r - r0) * cols;
        if (coef_p[r] == acc_t(0) || lse_p[r] == neg_inf<acc_t>()) {
          std::fill(row, row + cols, acc_t(0));
          continue;
        }
        any = true;
        mask_row(scan, row, r, c0, cols);
        softmax_grad_inplace(row, cols, inv_tau, offset ? offset + c0 : nullptr, lse_p[r],
                             coef_p[r]);
      }
      if (!any) return;
      const at::Tensor& G = tile.scores;  // [rows, cols]: d loss / d score
      at::Tensor gq = grid.rows_outer ? grad_query.narrow(0, r0, rows)
                                      : query_partial[tid].narrow(0, r0, rows);
      at::Tensor gc = grid.rows_outer ? cand_partial[tid].narrow(0, c0, cols)
                                      : grad_candidates.narrow(0, c0, cols);
      at::cpu::addmm_(gq, G, tile.cand_block, /*beta=*/1, /*alpha=*/scan.inv_tau);
      at::cpu::addmm_(gc, G.t(), tile.query_block, /*beta=*/1, /*alpha=*/scan.inv_tau);
      if (with_offset_grad) {
        at::Tensor go = grid.rows_outer ? offset_partial[tid].narrow(0, c0, cols)
                                        : grad_offset.narrow(0, c0, cols);
        go.add_(G.sum(0));
      }
    });
  });

  if (grid.rows_outer) {
    grad_candidates.add_(cand_partial.sum(0));
    if (with_offset_grad) grad_offset.add_(offset_partial.sum(0));
  } else {
    grad_query.add_(query_partial.sum(0));
  }
}

at::Tensor dense_scan_fused(const DenseScan& scan, const at::Tensor& extra_lse,
                            const at::Tensor& coef, at::Tensor& grad_query,
                            at::Tensor& grad_candidates) {
  const int64_t B = scan.query.size(0), C = scan.candidates.size(0), d = scan.query.size(1);
  const auto acc = acc_dtype(scan.query);
  auto opts = scan.query.options().dtype(acc);
  // Rows per panel: as many as fit the budget, at most one row block; too wide a C for even
  // kMinPanelRows rows falls back to the two-pass scan (same results, four matmuls).
  const int64_t elem = acc == at::kDouble ? 8 : 4;
  const int64_t panel_rows = std::min<int64_t>(kRowBlock, kPanelBytes / std::max<int64_t>(C * elem, 1));
  if (B == 0 || C == 0 || d == 0 || panel_rows < kMinPanelRows) {
    at::Tensor lse = dense_scan_logsumexp(scan);
    lse = at::logaddexp(lse, extra_lse);
    at::Tensor no_offset_grad;
    dense_scan_backward(scan, lse, coef, grad_query, grad_candidates, no_offset_grad);
    return lse;
  }

  const int nthreads = at::get_num_threads();
  const int64_t col_tiles = ceil_div(C, kColTile);
  auto panel = at::empty({panel_rows, C}, opts);
  auto tile_max = at::empty({panel_rows, col_tiles}, opts);
  auto tile_sum = at::empty({panel_rows, col_tiles}, opts);
  auto query_partial = at::zeros({nthreads, panel_rows, d}, opts);
  auto lse = at::empty({B}, opts);

  AT_DISPATCH_FLOATING_TYPES(acc, "dense_scan_fused", [&] {
    using acc_t = scalar_t;
    const acc_t* offset =
        scan.offset.defined() ? scan.offset.const_data_ptr<acc_t>() : nullptr;
    const acc_t* extra = extra_lse.const_data_ptr<acc_t>();
    const acc_t* coef_p = coef.const_data_ptr<acc_t>();
    const auto inv_tau = static_cast<acc_t>(scan.inv_tau);
    acc_t* lse_p = lse.data_ptr<acc_t>();
    acc_t* panel_p = panel.data_ptr<acc_t>();
    acc_t* tmax = tile_max.data_ptr<acc_t>();
    acc_t* tsum = tile_sum.data_ptr<acc_t>();

    for (int64_t r0 = 0; r0 < B; r0 += panel_rows) {
      const int64_t rows = std::min(panel_rows, B - r0);
      const at::Tensor query_block = scan.query.narrow(0, r0, rows).to(acc);
      // Pass 1: scores of the panel, tile by tile, and each tile's (max, sum exp) per row.
      at::parallel_for(0, col_tiles, 1, [&](int64_t t0, int64_t t1) {
        at::AutoDispatchBelowADInplaceOrView below_autograd;
        for (int64_t ct = t0; ct < t1; ++ct) {
          const int64_t c0 = ct * kColTile, cols = std::min(kColTile, C - c0);
          at::Tensor scores = panel.narrow(0, 0, rows).narrow(1, c0, cols);
          at::cpu::mm_out(scores, query_block,
                          scan.candidates.narrow(0, c0, cols).to(acc).t());
          for (int64_t i = 0; i < rows; ++i) {
            acc_t* row = panel_p + i * C + c0;
            mask_row(scan, row, r0 + i, c0, cols);
            const acc_t m = scale_shift_max(row, cols, inv_tau, offset ? offset + c0 : nullptr);
            tmax[i * col_tiles + ct] = m;
            tsum[i * col_tiles + ct] = m == neg_inf<acc_t>() ? acc_t(0)
                                                             : sum_exp_shifted(row, cols, m);
          }
        }
      });
      for (int64_t i = 0; i < rows; ++i) {
        OnlineLSE<acc_t> state;
        state.merge(extra[r0 + i], acc_t(1));
        for (int64_t ct = 0; ct < col_tiles; ++ct) {
          state.merge(tmax[i * col_tiles + ct], tsum[i * col_tiles + ct]);
        }
        lse_p[r0 + i] = state.value();
      }
      // Pass 2: the panel becomes d loss / d score, then the two gradient matmuls per tile.
      // Candidate rows of a tile belong to one thread; query rows are shared, so partial.
      at::parallel_for(0, col_tiles, 1, [&](int64_t t0, int64_t t1) {
        at::AutoDispatchBelowADInplaceOrView below_autograd;
        const int tid = at::get_thread_num();
        for (int64_t ct = t0; ct < t1; ++ct) {
          const int64_t c0 = ct * kColTile, cols = std::min(kColTile, C - c0);
          for (int64_t i = 0; i < rows; ++i) {
            acc_t* row = panel_p + i * C + c0;
            const int64_t r = r0 + i;
            if (coef_p[r] == acc_t(0) || lse_p[r] == neg_inf<acc_t>()) {
              std::fill(row, row + cols, acc_t(0));
            } else {
              // Scores are already scaled and shifted: inv_tau = 1, no offset.
              softmax_grad_inplace(row, cols, acc_t(1), static_cast<const acc_t*>(nullptr),
                                   lse_p[r], coef_p[r]);
            }
          }
          const at::Tensor G = panel.narrow(0, 0, rows).narrow(1, c0, cols);
          const at::Tensor cand_block = scan.candidates.narrow(0, c0, cols).to(acc);
          at::Tensor gq = query_partial[tid].narrow(0, 0, rows);
          at::Tensor gc = grad_candidates.narrow(0, c0, cols);
          at::cpu::addmm_(gq, G, cand_block, /*beta=*/1, /*alpha=*/scan.inv_tau);
          at::cpu::addmm_(gc, G.t(), query_block, /*beta=*/1, /*alpha=*/scan.inv_tau);
        }
      });
      grad_query.narrow(0, r0, rows).add_(query_partial.narrow(1, 0, rows).sum(0));
      query_partial.zero_();
    }
  });
  return lse;
}

}  // namespace cpu
}  // namespace fastsoftmax
