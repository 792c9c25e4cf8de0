// Exact top-k inner-product retrieval on CPU (DESIGN.md §3: the scan with a top-k epilogue).
//
// Scores come one cache-sized tile at a time from a BLAS matmul (at::mm_out into a per-thread
// buffer), and each tile row is reduced while the tile is hot: a vectorised pass counts the scores
// above the row's running threshold (the k-th best score so far), which rejects almost every block
// of a tile once the threshold has settled, and only the survivors are appended to a per-row
// candidate buffer. When the buffer is full it is cut back to the k best (std::nth_element) and
// the threshold rises. Extra memory: threads x (tile + row block x buffer), plus
// col_splits x B x k when the columns are split between threads; never [B x N].
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <tuple>
#include <vector>

#include "common/topk.h"
#include "topk_checks.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace fastsoftmax {
namespace cpu {
namespace {

// A 256 x 1024 fp32 tile (1 MiB) keeps each matmul long enough (34-67 MFLOP at d = 64-128) for
// the per-call overhead of at::mm_out to vanish, and is read back from L2/L3 by the filter right
// after the matmul wrote it. Measured on Zen 4: 256-row blocks run at ~1.4x the speed of the
// single [B x N] matmul into memory; 64-row blocks lose that advantage.
constexpr int64_t kRowBlock = 256;
constexpr int64_t kColTile = 1024;
// Scores are checked against the threshold in blocks of this many; a block with no survivor
// costs one vectorised compare-and-or pass.
constexpr int64_t kFilterBlock = 64;
// Bound on the partial results kept when threads split the item axis (col_splits x B x k).
constexpr int64_t kSplitBudgetBytes = int64_t(32) << 20;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename acc_t>
struct Cand {
  acc_t score;
  int64_t index;
};

// How a candidate is stored in a row buffer. For float scores a candidate is one uint64 key,
// (order-preserving bits of the score) << 32 | ~index, so that "higher score first, lower index
// on ties" is plain unsigned `>` and the selections below compare integers instead of
// {score, index} pairs (common/topk.h). This needs N <= 2^32 - 2, checked at the entry. Double scores (the
// float64 path, used for checking) keep the pair.
template <typename acc_t>
struct KeyCodec;

template <>
struct KeyCodec<float> {
  using key_t = uint64_t;
  static key_t encode(float s, int64_t index) { return topk_key_encode(s, index); }
  static float score(key_t key) { return topk_key_score(key); }
  static int64_t index(key_t key) { return topk_key_index(key); }
  struct Before {
    bool operator()(key_t a, key_t b) const { return a > b; }
  };
};

template <>
struct KeyCodec<double> {
  using key_t = Cand<double>;
  static key_t encode(double s, int64_t index) { return {s, index}; }
  static double score(const key_t& key) { return key.score; }
  static int64_t index(const key_t& key) { return key.index; }
  struct Before {
    bool operator()(const key_t& a, const key_t& b) const {
      return topk_before(a.score, a.index, b.score, b.index);
    }
  };
};

// Positions j in [0, n) with s[j] (+ bias[j]) > thr, written to pos; returns how many.
// NaN never passes (every comparison with NaN is false, _CMP_GT_OQ included).
//
// Once the threshold has settled nearly every score fails, so the AVX-512 version tests 64 scores
// per step with four compares and one branch, and walks the set bits of the masks only when one
// passes. The portable version does the same per 64-block with an OR-reduction and collects
// without a data-dependent branch (a mispredicted branch per score cost more than the matmul
// when k = 1000).
template <bool kBias>
int64_t filter_above_portable(const float* s, const float* bias, int64_t n, float thr,
                              int32_t* pos) {
  int64_t count = 0;
  for (int64_t j0 = 0; j0 < n; j0 += kFilterBlock) {
    const int64_t len = std::min(kFilterBlock, n - j0);
    int any = 0;
#pragma omp simd reduction(| : any)
    for (int64_t j = 0; j < len; ++j) {
      const float v = kBias ? s[j0 + j] + bias[j0 + j] : s[j0 + j];
      any |= (v > thr) ? 1 : 0;
    }
    if (!any) continue;
    for (int64_t j = 0; j < len; ++j) {
      const float v = kBias ? s[j0 + j] + bias[j0 + j] : s[j0 + j];
      pos[count] = static_cast<int32_t>(j0 + j);
      count += (v > thr) ? 1 : 0;
    }
  }
  return count;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define FS_TOPK_HAVE_AVX512_FILTER 1
#define FS_TOPK_AVX512 __attribute__((target("avx512f,bmi")))

// NB: helpers of a target("avx512f") function must carry the attribute too (lambdas don't).
template <bool kBias>
FS_TOPK_AVX512 inline __mmask16 above_mask(const float* s, const float* bias, __m512 thr,
                                           __mmask16 live) {
  __m512 v = _mm512_maskz_loadu_ps(live, s);
  if (kBias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(live, bias));
  return _mm512_mask_cmp_ps_mask(live, v, thr, _CMP_GT_OQ);
}

FS_TOPK_AVX512 inline int64_t collect_bits(int64_t j, __mmask16 m, int32_t* pos, int64_t count) {
  uint32_t bits = m;
  while (bits != 0) {
    pos[count++] = static_cast<int32_t>(j + __builtin_ctz(bits));
    bits &= bits - 1;
  }
  return count;
}

template <bool kBias>
FS_TOPK_AVX512 int64_t filter_above_avx512(const float* s, const float* bias, int64_t n,
                                           float thr, int32_t* pos) {
  const __m512 t = _mm512_set1_ps(thr);
  const float* b = bias;
  int64_t count = 0, j = 0;
  for (; j + 64 <= n; j += 64) {
    const __mmask16 m0 = above_mask<kBias>(s + j, kBias ? b + j : b, t, 0xFFFF);
    const __mmask16 m1 = above_mask<kBias>(s + j + 16, kBias ? b + j + 16 : b, t, 0xFFFF);
    const __mmask16 m2 = above_mask<kBias>(s + j + 32, kBias ? b + j + 32 : b, t, 0xFFFF);
    const __mmask16 m3 = above_mask<kBias>(s + j + 48, kBias ? b + j + 48 : b, t, 0xFFFF);
    if (static_cast<uint16_t>(m0 | m1 | m2 | m3) == 0) continue;
    count = collect_bits(j, m0, pos, count);
    count = collect_bits(j + 16, m1, pos, count);
    count = collect_bits(j + 32, m2, pos, count);
    count = collect_bits(j + 48, m3, pos, count);
  }
  for (; j < n; j += 16) {
    const int64_t len = std::min<int64_t>(16, n - j);
    const __mmask16 live = static_cast<__mmask16>((1u << len) - 1u);
    count = collect_bits(j, above_mask<kBias>(s + j, kBias ? b + j : b, t, live), pos, count);
  }
  return count;
}
#endif

int64_t filter_above(const float* s, const float* bias, int64_t n, float thr, int32_t* pos) {
#ifdef FS_TOPK_HAVE_AVX512_FILTER
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (avx512) {
    return bias != nullptr ? filter_above_avx512<true>(s, bias, n, thr, pos)
                           : filter_above_avx512<false>(s, bias, n, thr, pos);
  }
#endif
  return bias != nullptr ? filter_above_portable<true>(s, bias, n, thr, pos)
                         : filter_above_portable<false>(s, bias, n, thr, pos);
}

int64_t filter_above(const double* s, const double* bias, int64_t n, double thr, int32_t* pos) {
  int64_t count = 0;
  for (int64_t j = 0; j < n; ++j) {
    const double v = bias != nullptr ? s[j] + bias[j] : s[j];
    if (v > thr) pos[count++] = static_cast<int32_t>(j);
  }
  return count;
}

// Orders {score, index} pairs by the tie rule (the float64 re-scoring of the bf16 path).
struct CandBefore {
  template <typename acc_t>
  bool operator()(const Cand<acc_t>& a, const Cand<acc_t>& b) const {
    return topk_before(a.score, a.index, b.score, b.index);
  }
};

// Cuts buf to its k best entries (unordered) and returns the k-th best score.
template <typename acc_t>
acc_t keep_best(std::vector<typename KeyCodec<acc_t>::key_t>& buf, int64_t k) {
  using Codec = KeyCodec<acc_t>;
  std::nth_element(buf.begin(), buf.begin() + (k - 1), buf.end(), typename Codec::Before{});
  buf.resize(k);
  return Codec::score(buf[k - 1]);  // NB: nth_element put the k-th best at k - 1
}

// Writes the (at most k) entries of buf to a row of the output, padding with (-inf, -1).
template <typename acc_t>
void write_row(std::vector<typename KeyCodec<acc_t>::key_t>& buf, int64_t k, bool sorted,
               acc_t* out_s, int64_t* out_i) {
  using Codec = KeyCodec<acc_t>;
  if (static_cast<int64_t>(buf.size()) > k) keep_best<acc_t>(buf, k);
  if (sorted) std::sort(buf.begin(), buf.end(), typename Codec::Before{});
  const int64_t n = static_cast<int64_t>(buf.size());
  for (int64_t t = 0; t < n; ++t) {
    out_s[t] = Codec::score(buf[t]);
    out_i[t] = Codec::index(buf[t]);
  }
  for (int64_t t = n; t < k; ++t) {
    out_s[t] = neg_inf<acc_t>();
    out_i[t] = kTopkPadIndex;
  }
}

// The running top-k of one row block over one contiguous range of items.
//
// NB: a unit visits its items in increasing index order, so a later item that ties the current
// threshold always has a higher index than the entries that set it and loses the tie: the strict
// `score > threshold` test is exact under the tie rule.
template <typename acc_t>
class BlockSelector {
 public:
  using Codec = KeyCodec<acc_t>;
  using key_t = typename Codec::key_t;

  BlockSelector(int64_t k, int64_t capacity, int64_t max_rows)
      : k_(k), cap_(capacity), rows_(max_rows), thr_(max_rows) {
    for (auto& r : rows_) r.reserve(capacity);
  }

  void reset(int64_t nrows) {
    for (int64_t r = 0; r < nrows; ++r) {
      rows_[r].clear();
      thr_[r] = neg_inf<acc_t>();
    }
  }

  // Offers the scores s[0..n) of items base..base+n to row r; excluded is the row's sorted
  // exclusion list. pos is scratch of at least n entries.
  void offer(int64_t r, const acc_t* s, const acc_t* bias, int64_t n, int64_t base,
             const int64_t* excluded, int64_t num_excluded, int32_t* pos) {
    acc_t thr = thr_[r];
    const int64_t m = filter_above(s, bias, n, thr, pos);
    auto& buf = rows_[r];
    for (int64_t t = 0; t < m; ++t) {
      const int64_t j = pos[t];
      const acc_t v = bias != nullptr ? s[j] + bias[j] : s[j];
      if (!(v > thr)) continue;  // the threshold rose since the filter ran
      const int64_t index = base + j;
      if (num_excluded > 0 && std::binary_search(excluded, excluded + num_excluded, index)) {
        continue;
      }
      buf.push_back(Codec::encode(v, index));
      if (static_cast<int64_t>(buf.size()) == cap_) thr = keep_best<acc_t>(buf, k_);
    }
    thr_[r] = thr;
  }

  void write(int64_t r, bool sorted, acc_t* out_s, int64_t* out_i) {
    write_row<acc_t>(rows_[r], k_, sorted, out_s, out_i);
  }

 private:
  int64_t k_, cap_;
  std::vector<std::vector<key_t>> rows_;
  std::vector<acc_t> thr_;
};

// Buffer capacity: k plus room so that a cut (O(capacity)) happens at most once per `room`
// insertions; bounded for large k so that row block x capacity stays near row block x k.
int64_t buffer_capacity(int64_t k) {
  const int64_t room = std::max<int64_t>(256, std::min<int64_t>(k, 4096 + k / 8));
  return k + room;
}

struct Plan {
  int64_t row_blocks, rows_per_block, col_splits, col_tiles;
};

Plan make_plan(int64_t B, int64_t N, int64_t k, int64_t cand_bytes) {
  Plan p;
  const int64_t threads = at::get_num_threads();
  p.row_blocks = ceil_div(B, kRowBlock);
  p.rows_per_block = ceil_div(B, p.row_blocks);
  p.col_tiles = ceil_div(N, kColTile);
  p.col_splits = 1;
  if (p.row_blocks % threads != 0) {
    // Too few row blocks to keep every thread busy (or an uneven share): split the items too,
    // so that row_blocks x col_splits is a multiple of the thread count.
    const int64_t g = std::gcd(p.row_blocks, threads);
    const int64_t budget = std::max<int64_t>(1, kSplitBudgetBytes / std::max<int64_t>(1, B * k * cand_bytes));
    p.col_splits = std::max<int64_t>(1, std::min({threads / g, budget, p.col_tiles}));
  }
  return p;
}

// kLowpGemm: multiply the fp16/bf16 inputs as they are (oneDNN/MKL bf16 kernels: AVX512-BF16 or
// AMX where the CPU has them) into a low-precision tile, then widen the tile; the scores are then
// approximate (see topk_inner_product_bf16_rescored_cpu). Otherwise fp16/bf16 inputs are widened
// to fp32 per tile and the fp32 matmul gives the exact fp32 sums of the exact products.
template <typename scalar_t, typename acc_t, bool kLowpGemm = false>
void topk_scan(const at::Tensor& query, const at::Tensor& items, const at::Tensor& bias,
               const at::Tensor& ex_offsets, const at::Tensor& ex_sorted, int64_t k, bool sorted,
               at::Tensor& out_scores, at::Tensor& out_indices) {
  const int64_t B = query.size(0), N = items.size(0), d = query.size(1);
  constexpr bool kWiden = !std::is_same_v<scalar_t, acc_t> && !kLowpGemm;
  const auto acc = c10::CppTypeToScalarType<acc_t>::value;
  const auto acc_opts = query.options().dtype(acc);
  const Plan plan = make_plan(B, N, k, sizeof(acc_t) + sizeof(int64_t));
  const int64_t capacity = buffer_capacity(k);

  const acc_t* bias_p = bias.defined() ? bias.const_data_ptr<acc_t>() : nullptr;
  const int64_t* ex_off = ex_offsets.defined() ? ex_offsets.const_data_ptr<int64_t>() : nullptr;
  const int64_t* ex_idx = ex_sorted.defined() ? ex_sorted.const_data_ptr<int64_t>() : nullptr;

  // With one column split each unit writes its rows of the output directly; otherwise every
  // split writes its own partial top-k, merged below.
  at::Tensor part_scores = out_scores, part_indices = out_indices;
  if (plan.col_splits > 1) {
    part_scores = at::empty({plan.col_splits, B, k}, acc_opts);
    part_indices = at::empty({plan.col_splits, B, k}, query.options().dtype(at::kLong));
  }
  acc_t* ps = part_scores.data_ptr<acc_t>();
  int64_t* pi = part_indices.data_ptr<int64_t>();

  const int64_t units = plan.row_blocks * plan.col_splits;
  at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
    const int64_t rb_rows = plan.rows_per_block;
    auto score_buf = at::empty({rb_rows * kColTile}, acc_opts);
    at::Tensor item_buf, query_buf, lowp_buf;
    if (kLowpGemm) lowp_buf = at::empty({rb_rows * kColTile}, query.options());
    if (kWiden) {
      item_buf = at::empty({kColTile, d}, acc_opts);
      query_buf = at::empty({rb_rows, d}, acc_opts);
    }
    std::vector<int32_t> pos(kColTile);
    BlockSelector<acc_t> sel(k, capacity, rb_rows);

    for (int64_t u = begin; u < end; ++u) {
      const int64_t rb = u / plan.col_splits, cs = u % plan.col_splits;
      const int64_t r0 = rb * rb_rows, r1 = std::min(B, r0 + rb_rows), rows = r1 - r0;
      if (rows <= 0) continue;
      const int64_t t0 = cs * plan.col_tiles / plan.col_splits;
      const int64_t t1 = (cs + 1) * plan.col_tiles / plan.col_splits;
      at::Tensor q_block = query.narrow(0, r0, rows);
      if (kWiden) q_block = query_buf.narrow(0, 0, rows).copy_(q_block);
      sel.reset(rows);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t c0 = t * kColTile, cols = std::min(N, c0 + kColTile) - c0;
        at::Tensor item_tile = items.narrow(0, c0, cols);
        if (kWiden) item_tile = item_buf.narrow(0, 0, cols).copy_(item_tile);
        at::Tensor scores = score_buf.narrow(0, 0, rows * cols).view({rows, cols});
        if (d == 0) {
          scores.zero_();  // NB: an empty inner dimension: every inner product is 0
        } else if (kLowpGemm) {
          at::Tensor lowp = lowp_buf.narrow(0, 0, rows * cols).view({rows, cols});
          at::mm_out(lowp, q_block, item_tile.t());
          scores.copy_(lowp);
        } else {
          at::mm_out(scores, q_block, item_tile.t());
        }
        const acc_t* s = scores.const_data_ptr<acc_t>();
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t row = r0 + r;
          const int64_t e0 = ex_off != nullptr ? ex_off[row] : 0;
          const int64_t ne = ex_off != nullptr ? ex_off[row + 1] - e0 : 0;
          sel.offer(r, s + r * cols, bias_p != nullptr ? bias_p + c0 : nullptr, cols, c0,
                    ex_idx + e0, ne, pos.data());
        }
      }
      // A single split already holds the final answer, so it sorts here; partial results are
      // sorted once after the merge.
      const bool sort_now = sorted && plan.col_splits == 1;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t off = (cs * B + r0 + r) * k;
        sel.write(r, sort_now, ps + off, pi + off);
      }
    }
  });

  if (plan.col_splits == 1) return;
  acc_t* os = out_scores.data_ptr<acc_t>();
  int64_t* oi = out_indices.data_ptr<int64_t>();
  at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
    using Codec = KeyCodec<acc_t>;
    std::vector<typename Codec::key_t> buf;
    buf.reserve(plan.col_splits * k);
    for (int64_t b = begin; b < end; ++b) {
      buf.clear();
      for (int64_t cs = 0; cs < plan.col_splits; ++cs) {
        const int64_t off = (cs * B + b) * k;
        for (int64_t t = 0; t < k; ++t) {
          if (pi[off + t] != kTopkPadIndex) buf.push_back(Codec::encode(ps[off + t], pi[off + t]));
        }
      }
      write_row<acc_t>(buf, k, sorted, os + b * k, oi + b * k);
    }
  });
}

// Copies the CSR exclusion lists with each row's segment sorted (for binary search).
at::Tensor sorted_exclusions(const at::Tensor& offsets, const at::Tensor& indices) {
  at::Tensor out = indices.contiguous().clone();
  const int64_t* o = offsets.const_data_ptr<int64_t>();
  int64_t* e = out.data_ptr<int64_t>();
  const int64_t B = offsets.size(0) - 1;
  at::parallel_for(0, B, 256, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) std::sort(e + o[b], e + o[b + 1]);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> topk_inner_product_cpu(
    const at::Tensor& query,                         // [B, d] float16/bfloat16/float32/float64
    const at::Tensor& items,                         // [N, d] same dtype
    int64_t k,
    const std::optional<at::Tensor>& bias,           // [N] floating
    const std::optional<at::Tensor>& exclude_offsets,  // [B + 1] int64
    const std::optional<at::Tensor>& exclude_indices,  // [E] int64
    bool sorted) {
  check_topk_args(query, items, k, bias, exclude_offsets, exclude_indices);
  TORCH_CHECK(query.device().is_cpu(), "topk_inner_product_cpu: query must be a CPU tensor");
  const int64_t B = query.size(0), N = items.size(0);
  // NB: float candidates pack the item index into 32 bits (KeyCodec<float>).
  TORCH_CHECK(N <= int64_t(0xFFFFFFFE), "topk_inner_product: at most 2^32 - 2 items per call on "
              "CPU, got N = ", N, "; split the item table into shards and merge their top-k");
  const auto acc = query.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto out_scores = at::empty({B, k}, query.options().dtype(acc));
  auto out_indices = at::empty({B, k}, query.options().dtype(at::kLong));
  if (B == 0) return {out_scores, out_indices};

  at::Tensor ex_offsets, ex_sorted;
  if (exclude_offsets.has_value()) {
    check_topk_exclusion_values(*exclude_offsets, *exclude_indices, N);
    ex_offsets = exclude_offsets->contiguous();
    ex_sorted = sorted_exclusions(ex_offsets, *exclude_indices);
  }
  at::Tensor bias_acc;
  if (bias.has_value()) bias_acc = bias->to(acc).contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(),
                                  "topk_inner_product_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    topk_scan<scalar_t, acc_t>(query, items, bias_acc, ex_offsets, ex_sorted, k, sorted,
                               out_scores, out_indices);
  });
  return {out_scores, out_indices};
}

// The bf16 path for fp32 data: scan with bf16 products (about twice the fp32 matmul rate on
// AVX512-BF16 / AMX CPUs), over-fetch k_over candidates per row, re-score them in float64 from
// the fp32 inputs and keep the k best. Exact by certificate: with u = 2^-8 (bf16 rounding of
// both inputs and of each output score) and fp32 accumulation, every approximate score is within
//   delta_b = |q_b| * max_j |w_j| * (3u + u^2 + gamma_d)(1 + u)^2 + bias rounding
// of the true score (Cauchy-Schwarz bounds sum_i |q_i w_i|). An item left out has an approximate
// score <= t, the lowest over-fetched one, so a true score <= t + delta_b; when the k-th best
// re-scored candidate is > t + delta_b, nothing left out can enter (ties included). Rows that fail
// the test (or fetched every eligible item) are recomputed by the exact fp32 scan.
// NB: assumes the bf16 matmul accumulates in fp32 and rounds once (oneDNN and MKL do).
std::tuple<at::Tensor, at::Tensor> topk_inner_product_bf16_rescored_cpu(
    const at::Tensor& query,       // [B, d] float32
    const at::Tensor& items,       // [N, d] float32
    const at::Tensor& items_bf16,  // [N, d] bfloat16: items rounded (cached by ItemIndex)
    int64_t k, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& exclude_offsets,
    const std::optional<at::Tensor>& exclude_indices, bool sorted) {
  check_topk_args(query, items, k, bias, exclude_offsets, exclude_indices);
  TORCH_CHECK(query.device().is_cpu(), "topk_inner_product_bf16_rescored: CPU only");
  TORCH_CHECK(query.scalar_type() == at::kFloat,
              "topk_inner_product_bf16_rescored: query and items must be float32, got ",
              query.scalar_type());
  TORCH_CHECK(items_bf16.scalar_type() == at::kBFloat16 && items_bf16.sizes() == items.sizes() &&
                  items_bf16.device() == items.device(),
              "topk_inner_product_bf16_rescored: items_bf16 must be a bfloat16 copy of items, "
              "shape ", items.sizes(), ", got ", items_bf16.scalar_type(), " ",
              items_bf16.sizes());
  const int64_t B = query.size(0), N = items.size(0), d = query.size(1);
  TORCH_CHECK(N <= int64_t(0xFFFFFFFE), "topk_inner_product_bf16_rescored: N must be < 2^32 - 1");
  auto out_scores = at::empty({B, k}, query.options());
  auto out_indices = at::empty({B, k}, query.options().dtype(at::kLong));
  if (B == 0) return {out_scores, out_indices};

  at::Tensor ex_offsets, ex_sorted;
  if (exclude_offsets.has_value()) {
    check_topk_exclusion_values(*exclude_offsets, *exclude_indices, N);
    ex_offsets = exclude_offsets->contiguous();
    ex_sorted = sorted_exclusions(ex_offsets, *exclude_indices);
  }
  at::Tensor bias_f = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();

  const int64_t k_over = std::min(N, k + std::max<int64_t>(64, k / 2));
  auto approx_s = at::empty({B, k_over}, query.options());
  auto approx_i = at::empty({B, k_over}, query.options().dtype(at::kLong));
  topk_scan<at::BFloat16, float, /*kLowpGemm=*/true>(query.to(at::kBFloat16), items_bf16, bias_f,
                                                     ex_offsets, ex_sorted, k_over,
                                                     /*sorted=*/false, approx_s, approx_i);

  const auto q = query.contiguous();
  const auto w = items.contiguous();
  // max_j |w_j| in double, without a float64 copy of the table.
  double w_norm = 0.0;
  {
    const float* wp0 = w.const_data_ptr<float>();
    std::vector<double> part(at::get_num_threads(), 0.0);
    at::parallel_for(0, N, 4096, [&](int64_t begin, int64_t end) {
      double best = 0.0;
      for (int64_t j = begin; j < end; ++j) {
        double acc = 0.0;
        for (int64_t i = 0; i < d; ++i) acc += double(wp0[j * d + i]) * wp0[j * d + i];
        best = std::max(best, acc);
      }
      double& slot = part[at::get_thread_num()];
      slot = std::max(slot, best);
    });
    for (double v : part) w_norm = std::max(w_norm, v);
    w_norm = std::sqrt(w_norm);
  }
  const double b_max = bias_f.defined() ? bias_f.abs().max().item<double>() : 0.0;
  const double u = 1.0 / 256.0, gamma = d * std::ldexp(1.0, -24) / (1.0 - d * std::ldexp(1.0, -24));
  const double rel = (3.0 * u + u * u + gamma) * (1.0 + u) * (1.0 + u);
  const float* qp = q.const_data_ptr<float>();
  const float* wp = w.const_data_ptr<float>();
  const float* bp = bias_f.defined() ? bias_f.const_data_ptr<float>() : nullptr;
  const float* sp = approx_s.const_data_ptr<float>();
  const int64_t* ip = approx_i.const_data_ptr<int64_t>();
  float* os = out_scores.data_ptr<float>();
  int64_t* oi = out_indices.data_ptr<int64_t>();
  std::vector<uint8_t> failed(B, 0);
  at::parallel_for(0, B, 8, [&](int64_t begin, int64_t end) {
    std::vector<Cand<double>> cands;
    for (int64_t b = begin; b < end; ++b) {
      const float* qb = qp + b * d;
      double q_norm = 0.0;
      for (int64_t i = 0; i < d; ++i) q_norm += double(qb[i]) * qb[i];
      q_norm = std::sqrt(q_norm);
      const double mag = q_norm * w_norm;
      // Bias is added to the fp32 approximate score: one more fp32 rounding.
      const double delta =
          1.01 * (mag * rel + std::ldexp(1.0, -23) * (mag * (1.0 + 4.0 * u) + b_max));
      cands.clear();
      float lowest = std::numeric_limits<float>::infinity();
      int64_t fetched = 0;
      for (int64_t t = 0; t < k_over; ++t) {
        const int64_t j = ip[b * k_over + t];
        if (j == kTopkPadIndex) continue;
        ++fetched;
        lowest = std::min(lowest, sp[b * k_over + t]);
        const float* wj = wp + j * d;
        double s = 0.0;
        for (int64_t i = 0; i < d; ++i) s += double(qb[i]) * double(wj[i]);
        if (bp != nullptr) s += bp[j];
        if (!(s > -std::numeric_limits<double>::infinity())) continue;  // NaN, -inf
        cands.push_back({s, j});
      }
      const int64_t m = static_cast<int64_t>(cands.size());
      // Fewer than k_over fetched: every item with an eligible approximate score is here.
      const bool fetched_all = fetched < k_over;
      bool ok = std::isfinite(delta) && mag < 1e37;  // no overflow anywhere in the bf16 scan
      const int64_t keep = std::min(k, m);
      std::partial_sort(cands.begin(), cands.begin() + keep, cands.end(), CandBefore{});
      if (!fetched_all) ok = ok && keep == k && cands[k - 1].score > double(lowest) + delta;
      if (!ok) {
        failed[b] = 1;
        continue;
      }
      for (int64_t t = 0; t < keep; ++t) {
        os[b * k + t] = static_cast<float>(cands[t].score);
        oi[b * k + t] = cands[t].index;
      }
      for (int64_t t = keep; t < k; ++t) {
        os[b * k + t] = neg_inf<float>();
        oi[b * k + t] = kTopkPadIndex;
      }
    }
  });
  (void)sorted;  // NB: rows come out best first either way

  // Rows without a certificate: the exact fp32 scan, on those rows only.
  std::vector<int64_t> redo;
  for (int64_t b = 0; b < B; ++b) {
    if (failed[b]) redo.push_back(b);
  }
  if (!redo.empty()) {
    const int64_t R = static_cast<int64_t>(redo.size());
    auto rows = at::tensor(redo, query.options().dtype(at::kLong));
    at::Tensor sub_off, sub_ex;
    if (ex_offsets.defined()) {
      std::vector<int64_t> off{0}, ex;
      const int64_t* o = ex_offsets.const_data_ptr<int64_t>();
      const int64_t* e = ex_sorted.const_data_ptr<int64_t>();
      for (int64_t b : redo) {
        ex.insert(ex.end(), e + o[b], e + o[b + 1]);
        off.push_back(static_cast<int64_t>(ex.size()));
      }
      sub_off = at::tensor(off, rows.options());
      sub_ex = at::tensor(ex, rows.options());
    }
    auto rs = at::empty({R, k}, query.options());
    auto ri = at::empty({R, k}, rows.options());
    topk_scan<float, float>(q.index_select(0, rows), w, bias_f, sub_off, sub_ex, k, true, rs, ri);
    out_scores.index_copy_(0, rows, rs);
    out_indices.index_copy_(0, rows, ri);
  }
  return {out_scores, out_indices};
}

}  // namespace
}  // namespace cpu
}  // namespace fastsoftmax

TORCH_LIBRARY_IMPL(fastsoftmax, CPU, m) {
  m.impl("topk_inner_product", &fastsoftmax::cpu::topk_inner_product_cpu);
  m.impl("topk_inner_product_bf16_rescored",
         &fastsoftmax::cpu::topk_inner_product_bf16_rescored_cpu);
}
