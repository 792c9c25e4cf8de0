// CPU kernel of mine_hard_negatives (DESIGN.md §3, the top-k and sample epilogues).
//
// Threads take blocks of kRowBlock queries; a block is scored against the pool one
// [kRowBlock x kColTile] tile at a time (a BLAS matmul into a per-thread buffer), and each tile is
// reduced while it is in cache, so no [B x P] buffer exists:
//   topk    one pass: a running top-H heap per row.
//   sample  pass 1: the row's log-sum-exp over the eligible pool; pass 2: the row's H sorted
//           Philox uniforms are matched against the running CDF, walking the pool in index order.
//           Pass 2 re-reads the tiles of pass 1 from a per-thread cache of the row block's scores
//           when that fits kScoreCacheElems (P <= 32768), and recomputes them otherwise; both give
//           the same scores bit for bit (same matmul shapes).
// Row blocks never depend on the thread count, so results are the same for any number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/mm_cpu_dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include "common/math.h"
#include "common/philox.h"
#include "mining_args.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FS_MINING_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FS_MINING_CLONES
#endif

namespace fastsoftmax {
namespace cpu {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// 64 x 512 fp32 scores are 128 KiB: a tile stays in L2 between its matmul and its epilogue.
// Row blocks are small so that B >= 64 * threads keeps every thread busy.
constexpr int64_t kRowBlock = 64;
constexpr int64_t kColTile = 512;
// Per-thread cache of a row block's scores for the second sampling pass (8 MiB in fp32).
constexpr int64_t kScoreCacheElems = int64_t{1} << 21;
// The CDF walk sums probabilities in blocks of this many and descends only into blocks that
// hold a draw.
constexpr int64_t kWalkBlock = 16;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ------------------------------------------------------------------ vectorised float helpers

FS_MINING_CLONES
void scale_inplace(float* s, int64_t n, float inv_tau) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) s[j] *= inv_tau;
}

FS_MINING_CLONES
float max_of(const float* s, int64_t n) {
  float m = neg_inf<float>();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = s[j] > m ? s[j] : m;
  return m;
}

FS_MINING_CLONES
float sum_exp_minus(const float* s, int64_t n, float shift) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) sum += fast_expf(s[j] - shift);
  return sum;
}

// p[j] = exp(s[j] - shift): the probabilities of a tile row, -inf (excluded) giving exactly 0.
FS_MINING_CLONES
void exp_minus(const float* s, int64_t n, float shift, float* p) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) p[j] = fast_expf(s[j] - shift);
}

double max_of(const double* s, int64_t n) {
  double m = neg_inf<double>();
  for (int64_t j = 0; j < n; ++j) m = s[j] > m ? s[j] : m;
  return m;
}

// out[k] = max of block k of kWalkBlock entries (the last block may be shorter).
FS_MINING_CLONES
void block_max(const float* s, int64_t n, float* out) {
  for (int64_t j0 = 0, k = 0; j0 < n; j0 += kWalkBlock, ++k) {
    const int64_t len = std::min(kWalkBlock, n - j0);
    float m = neg_inf<float>();
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < len; ++j) m = s[j0 + j] > m ? s[j0 + j] : m;
    out[k] = m;
  }
}

// out[k] = the double sum of block k of p.
FS_MINING_CLONES
void block_mass(const float* p, int64_t n, double* out) {
  for (int64_t j0 = 0, k = 0; j0 < n; j0 += kWalkBlock, ++k) {
    const int64_t len = std::min(kWalkBlock, n - j0);
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < len; ++j) sum += static_cast<double>(p[j0 + j]);
    out[k] = sum;
  }
}

void block_max(const double* s, int64_t n, double* out) {
  for (int64_t j0 = 0, k = 0; j0 < n; j0 += kWalkBlock, ++k) {
    out[k] = max_of(s + j0, std::min(kWalkBlock, n - j0));
  }
}

void block_mass(const double* p, int64_t n, double* out) {
  for (int64_t j0 = 0, k = 0; j0 < n; j0 += kWalkBlock, ++k) {
    double sum = 0.0;
    for (int64_t j = j0; j < std::min(n, j0 + kWalkBlock); ++j) sum += p[j];
    out[k] = sum;
  }
}

void scale_inplace(double* s, int64_t n, double inv_tau) {
  for (int64_t j = 0; j < n; ++j) s[j] *= inv_tau;
}

double sum_exp_minus(const double* s, int64_t n, double shift) {
  double sum = 0.0;
  for (int64_t j = 0; j < n; ++j) sum += std::exp(s[j] - shift);
  return sum;
}

void exp_minus(const double* s, int64_t n, double shift, double* p) {
  for (int64_t j = 0; j < n; ++j) p[j] = std::exp(s[j] - shift);
}

// ------------------------------------------------------------------------------- the scan

struct MiningArgs {
  Tensor query;          // [B, d] acc dtype, contiguous
  Tensor pool;           // [P, d] acc dtype, contiguous
  ExcludedPositions excluded;
  Tensor pool_log_q;     // [P] acc dtype or undefined
  int64_t B = 0, P = 0, H = 0;
  double inv_tau = 1.0;
  PhiloxStream stream{0, 0};
};

// Scores of rows [r0, r1) against pool rows [c0, c1) into `out` ([rows, cols] contiguous):
// <q, p> * inv_tau (when `scale`), -inf at each row's excluded positions.
template <typename acc_t>
void score_tile(const MiningArgs& a, const Tensor& query_block, int64_t r0, int64_t r1,
                int64_t c0, int64_t c1, acc_t* out, bool scale) {
  const int64_t rows = r1 - r0, cols = c1 - c0;
  Tensor tile = at::from_blob(out, {rows, cols}, query_block.options());
  // at::cpu:: calls the CPU kernel directly: no dispatcher round trip per tile.
  at::cpu::mm_out(tile, query_block, a.pool.narrow(0, c0, cols).t());
  if (scale) {
    for (int64_t r = 0; r < rows; ++r) {
      scale_inplace(out + r * cols, cols, static_cast<acc_t>(a.inv_tau));
    }
  }
  if (!a.excluded.defined()) return;
  const int64_t* ptr = a.excluded.ptr.const_data_ptr<int64_t>();
  const int64_t* pos = a.excluded.position.const_data_ptr<int64_t>();
  for (int64_t r = r0; r < r1; ++r) {
    acc_t* row = out + (r - r0) * cols;
    for (int64_t k = ptr[r]; k < ptr[r + 1]; ++k) {
      if (pos[k] >= c0 && pos[k] < c1) row[pos[k] - c0] = neg_inf<acc_t>();
    }
  }
}

// The calling thread's scratch buffer of at least n elements, kept across row blocks and calls.
// NB: allocating the megabyte-sized score buffers per row block made mining up to 1.8x slower
// wherever malloc serves such sizes by mmap (page faults on every block), e.g. under
// MALLOC_MMAP_THRESHOLD_ as the benchmarks set it for their memory measurement.
template <typename T, int Slot>
T* thread_scratch(int64_t n) {
  thread_local std::vector<T> buffer;
  if (buffer.size() < static_cast<size_t>(n)) buffer.resize(static_cast<size_t>(n));
  return buffer.data();
}

// Runs fn(tid, r0, r1, query_block) for every row block, in parallel over row blocks.
template <typename Fn>
void for_each_row_block(const MiningArgs& a, Fn&& fn) {
  at::parallel_for(0, ceil_div(a.B, kRowBlock), 1, [&](int64_t begin, int64_t end) {
    // NB: dispatch-key exclusions are thread-local and worker threads start without the
    // caller's, so the tensor ops below would otherwise see autograd keys.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const int tid = at::get_thread_num();
    for (int64_t rb = begin; rb < end; ++rb) {
      const int64_t r0 = rb * kRowBlock, r1 = std::min(a.B, r0 + kRowBlock);
      fn(tid, r0, r1, a.query.narrow(0, r0, r1 - r0));
    }
  });
}

// ------------------------------------------------------------------------------------- topk

// A bounded heap holding a row's best H (score, index) so far; its top is the worst of them.
// Order: higher score first, lower index on ties (the library's top-k rule).
template <typename acc_t>
struct TopH {
  struct Entry {
    acc_t score;
    int64_t index;
  };
  Entry* e;
  int64_t size = 0, cap;

  static bool better(const Entry& x, const Entry& y) {
    return x.score > y.score || (x.score == y.score && x.index < y.index);
  }
  // Min-heap under `better`: e[0] is the entry every other one beats.
  void sift_down(int64_t i) {
    for (;;) {
      int64_t worst = i;
      const int64_t l = 2 * i + 1, r = l + 1;
      if (l < size && better(e[worst], e[l])) worst = l;
      if (r < size && better(e[worst], e[r])) worst = r;
      if (worst == i) return;
      std::swap(e[i], e[worst]);
      i = worst;
    }
  }
  void sift_up(int64_t i) {
    while (i > 0) {
      const int64_t parent = (i - 1) / 2;
      if (!better(e[parent], e[i])) return;
      std::swap(e[parent], e[i]);
      i = parent;
    }
  }
  // NB: rows are scanned in index order, so a new entry has a higher index than every held one
  // and an equal score loses: only strictly higher scores replace the top.
  acc_t threshold() const { return size < cap ? neg_inf<acc_t>() : e[0].score; }
  void push(acc_t score, int64_t index) {
    if (size < cap) {
      e[size] = {score, index};
      sift_up(size++);
    } else if (score > e[0].score) {
      e[0] = {score, index};
      sift_down(0);
    }
  }
};

// block: scratch of ceil(cols / kWalkBlock) entries.
template <typename acc_t>
void topk_row_tile(TopH<acc_t>& heap, const acc_t* s, int64_t cols, int64_t c0, acc_t* block) {
  block_max(s, cols, block);
  for (int64_t j0 = 0, k = 0; j0 < cols; j0 += kWalkBlock, ++k) {
    // Most blocks hold nothing above the H-th best score once the heap has filled.
    if (!(block[k] > heap.threshold())) continue;
    for (int64_t j = j0; j < std::min(cols, j0 + kWalkBlock); ++j) {
      // NB: excluded entries are -inf and NaN compares false: neither is ever selected.
      if (s[j] > heap.threshold()) heap.push(s[j], c0 + j);
    }
  }
}

template <typename acc_t>
void mine_topk(const MiningArgs& a, int64_t* out_index, acc_t* out_log_q) {
  const int64_t H = a.H, P = a.P;
  const acc_t* lq = a.pool_log_q.defined() ? a.pool_log_q.const_data_ptr<acc_t>() : nullptr;
  for_each_row_block(a, [&](int, int64_t r0, int64_t r1, const Tensor& query_block) {
    const int64_t rows = r1 - r0;
    acc_t* tile = thread_scratch<acc_t, 0>(rows * std::min(P, kColTile));
    std::vector<acc_t> block(static_cast<size_t>(ceil_div(kColTile, kWalkBlock)));
    std::vector<typename TopH<acc_t>::Entry> entries(static_cast<size_t>(rows * H));
    std::vector<TopH<acc_t>> heaps;
    heaps.reserve(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) heaps.push_back(TopH<acc_t>{entries.data() + r * H, 0, H});
    for (int64_t c0 = 0; c0 < P; c0 += kColTile) {
      const int64_t c1 = std::min(P, c0 + kColTile), cols = c1 - c0;
      // The ranking does not depend on the temperature: the tile stays unscaled.
      score_tile(a, query_block, r0, r1, c0, c1, tile, /*scale=*/false);
      for (int64_t r = 0; r < rows; ++r) {
        topk_row_tile(heaps[r], tile + r * cols, cols, c0, block.data());
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      TopH<acc_t>& heap = heaps[r];
      std::sort(heap.e, heap.e + heap.size, TopH<acc_t>::better);
      int64_t* idx = out_index + (r0 + r) * H;
      acc_t* lqo = out_log_q + (r0 + r) * H;
      for (int64_t h = 0; h < H; ++h) {
        if (h < heap.size) {
          idx[h] = heap.e[h].index;
          lqo[h] = lq ? lq[idx[h]] : acc_t(0);
        } else {  // fewer than H eligible pool rows
          idx[h] = -1;
          lqo[h] = std::numeric_limits<acc_t>::infinity();
        }
      }
    }
  });
}

// ----------------------------------------------------------------------------------- sample

// A row's position in its CDF walk. Invariant: every draw not yet assigned has u >= cdf.
template <typename acc_t>
struct RowWalk {
  double cdf = 0.0;
  int64_t next = 0;        // first unassigned draw, in sorted order
  int64_t last = -1;       // last pool row with non-zero probability seen so far
  acc_t last_score = 0;
};

struct Draw {
  double u;
  int64_t h;  // which output column this uniform is
};

template <typename acc_t>
struct SampleOut {
  int64_t* index;   // [B, H]
  acc_t* log_q;     // [B, H]
  const acc_t* pool_log_q;  // [P] or null
  acc_t log_h;
  int64_t H;

  void pick(int64_t b, int64_t h, int64_t i, acc_t log_pi) const {
    index[b * H + h] = i;
    log_q[b * H + h] = (pool_log_q ? pool_log_q[i] : acc_t(0)) + log_h + log_pi;
  }
};

// Matches the row's sorted draws against the CDF over this tile. s: the tile row (scaled,
// masked); p, mass: scratch for its probabilities and their block sums.
template <typename acc_t>
void walk_row_tile(RowWalk<acc_t>& w, const Draw* draws, int64_t H, const acc_t* s, acc_t* p,
                   double* mass, int64_t cols, int64_t c0, acc_t lse,
                   const SampleOut<acc_t>& out, int64_t b) {
  // Rows without an eligible pool row (lse -inf) or with a NaN score get no walk: the
  // leftover pass fills them.
  if (w.next >= H || !(lse > neg_inf<acc_t>())) return;
  exp_minus(s, cols, lse, p);
  block_mass(p, cols, mass);
  int64_t last_block = -1;
  for (int64_t j0 = 0, k = 0; j0 < cols && w.next < H; j0 += kWalkBlock, ++k) {
    if (mass[k] == 0.0) continue;
    last_block = j0;
    if (w.cdf + mass[k] <= draws[w.next].u) {  // no draw lands in this block
      w.cdf += mass[k];
      continue;
    }
    for (int64_t j = j0; j < std::min(cols, j0 + kWalkBlock); ++j) {
      const double upper = w.cdf + static_cast<double>(p[j]);
      // Draw u picks the first pool row whose cumulative probability exceeds u.
      while (w.next < H && draws[w.next].u < upper) {
        out.pick(b, draws[w.next].h, c0 + j, s[j] - lse);
        ++w.next;
      }
      w.cdf = upper;
    }
  }
  if (last_block >= 0) {
    for (int64_t j = std::min(cols, last_block + kWalkBlock) - 1; j >= last_block; --j) {
      if (p[j] > acc_t(0)) {
        w.last = c0 + j;
        w.last_score = s[j];
        break;
      }
    }
  }
}

template <typename acc_t>
void mine_sample(const MiningArgs& a, int64_t* out_index, acc_t* out_log_q) {
  const int64_t H = a.H, P = a.P;
  const int64_t col_tiles = ceil_div(P, kColTile);
  const bool cache = kRowBlock * P <= kScoreCacheElems;
  const SampleOut<acc_t> out{out_index, out_log_q,
                             a.pool_log_q.defined() ? a.pool_log_q.const_data_ptr<acc_t>()
                                                    : nullptr,
                             static_cast<acc_t>(std::log(static_cast<double>(H))), H};
  for_each_row_block(a, [&](int, int64_t r0, int64_t r1, const Tensor& query_block) {
    const int64_t rows = r1 - r0;
    const int64_t tile_elems = rows * std::min(P, kColTile);
    acc_t* scores = thread_scratch<acc_t, 1>(cache ? rows * P : tile_elems);
    std::vector<acc_t> probs(static_cast<size_t>(std::min(P, kColTile)));
    std::vector<double> mass(static_cast<size_t>(ceil_div(kColTile, kWalkBlock)));
    // Tile ct of the row block: its slot in the cache, or the one scratch tile.
    auto tile_at = [&](int64_t ct) { return scores + (cache ? ct * rows * kColTile : 0); };

    // Pass 1: log-sum-exp over each row's eligible pool rows.
    std::vector<OnlineLSE<acc_t>> lse_state(static_cast<size_t>(rows));
    for (int64_t ct = 0; ct < col_tiles; ++ct) {
      const int64_t c0 = ct * kColTile, c1 = std::min(P, c0 + kColTile), cols = c1 - c0;
      acc_t* tile = tile_at(ct);
      score_tile(a, query_block, r0, r1, c0, c1, tile, /*scale=*/true);
      for (int64_t r = 0; r < rows; ++r) {
        const acc_t* row = tile + r * cols;
        const acc_t m = max_of(row, cols);
        if (m == neg_inf<acc_t>()) continue;
        lse_state[r].merge(m, sum_exp_minus(row, cols, m));
      }
    }

    // The draws: H uniforms per row from Philox (seed, offset; row, draw), sorted.
    std::vector<Draw> draws(static_cast<size_t>(rows * H));
    std::vector<acc_t> lse(static_cast<size_t>(rows));
    std::vector<RowWalk<acc_t>> walk(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
      lse[r] = lse_state[r].value();
      Draw* d = draws.data() + r * H;
      for (int64_t h = 0; h < H; ++h) d[h] = {a.stream.uniform(r0 + r, h), h};
      std::sort(d, d + H, [](const Draw& x, const Draw& y) {
        return x.u < y.u || (x.u == y.u && x.h < y.h);
      });
    }

    // Pass 2: walk the CDF in pool order.
    for (int64_t ct = 0; ct < col_tiles; ++ct) {
      const int64_t c0 = ct * kColTile, c1 = std::min(P, c0 + kColTile), cols = c1 - c0;
      acc_t* tile = tile_at(ct);
      if (!cache) score_tile(a, query_block, r0, r1, c0, c1, tile, /*scale=*/true);
      for (int64_t r = 0; r < rows; ++r) {
        walk_row_tile(walk[r], draws.data() + r * H, H, tile + r * cols, probs.data(),
                      mass.data(), cols, c0, lse[r], out, r0 + r);
      }
    }

    // Draws the walk did not place: rows without eligible pool rows, and the draws (probability
    // ~1e-7) that fall past the rounded total of the CDF, which go to its last eligible row.
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = r0 + r;
      const RowWalk<acc_t>& w = walk[r];
      const Draw* d = draws.data() + r * H;
      const bool nan_row = std::isnan(lse[r]);
      for (int64_t k = w.next; k < H; ++k) {
        if (w.last >= 0 && !nan_row) {
          out.pick(b, d[k].h, w.last, w.last_score - lse[r]);
        } else {
          out_index[b * H + d[k].h] = -1;
          out_log_q[b * H + d[k].h] = nan_row ? std::numeric_limits<acc_t>::quiet_NaN()
                                              : std::numeric_limits<acc_t>::infinity();
        }
      }
    }
  });
}

}  // namespace

std::tuple<Tensor, Tensor> mine_hard_negatives_cpu(const Tensor& query, const Tensor& pool,
                                                   const OptTensor& pool_ids,
                                                   const OptTensor& exclude_ids,
                                                   const OptTensor& pool_log_q, int64_t num,
                                                   c10::string_view mode,
                                                   double temperature, int64_t seed,
                                                   int64_t offset) {
  const MiningMode m = parse_mining_mode(mode);
  check_mining_args(query, pool, pool_ids, exclude_ids, pool_log_q, num, m, temperature);
  const auto acc = query.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t B = query.size(0), P = pool.size(0);
  auto index = at::empty({B, num}, query.options().dtype(at::kLong));
  auto log_q = at::empty({B, num}, query.options().dtype(acc));
  if (B == 0) return {index, log_q};

  MiningArgs a;
  // NB: fp16/bf16 inputs are widened once (O((B + P) d), the size of the inputs) so that every
  // tile's matmul accumulates in fp32.
  a.query = query.to(acc).contiguous();
  a.pool = pool.to(acc).contiguous();
  a.excluded = excluded_positions(pool_ids, exclude_ids, P);
  if (pool_log_q) a.pool_log_q = pool_log_q->to(acc).contiguous();
  a.B = B;
  a.P = P;
  a.H = num;
  a.inv_tau = 1.0 / temperature;
  a.stream = PhiloxStream{static_cast<uint64_t>(seed), static_cast<uint64_t>(offset)};

  AT_DISPATCH_FLOATING_TYPES(acc, "mine_hard_negatives_cpu", [&] {
    int64_t* idx = index.data_ptr<int64_t>();
    scalar_t* lq = log_q.data_ptr<scalar_t>();
    if (m == MiningMode::kTopK) {
      mine_topk<scalar_t>(a, idx, lq);
    } else {
      mine_sample<scalar_t>(a, idx, lq);
    }
  });
  return {index, log_q};
}

}  // namespace cpu

TORCH_LIBRARY_IMPL(fastsoftmax, CPU, m) {
  m.impl("mine_hard_negatives", &cpu::mine_hard_negatives_cpu);
}

}  // namespace fastsoftmax
