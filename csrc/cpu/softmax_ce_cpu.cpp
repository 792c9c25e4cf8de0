// CPU kernels of the softmax cross-entropy ops (DESIGN.md §4):
//   sampled_softmax_ce / _backward   positives + shared or per-row candidates
//   full_softmax_ce / _backward      every row of the item table is a candidate
// Forward returns the per-row loss and the per-row log-sum-exp (acc dtype); backward recomputes
// the scores tile by tile from that log-sum-exp, so nothing of size [B x C] is kept.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "common/math.h"
#include "cpu/dense_scan_cpu.h"
#include "softmax_ce_checks.h"

namespace fastsoftmax {
namespace cpu {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

constexpr int64_t kRowGrain = 16;

template <typename scalar_t, typename acc_t>
inline acc_t dot(const scalar_t* a, const scalar_t* b, int64_t d) {
  acc_t s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < d; ++j) s += static_cast<acc_t>(a[j]) * static_cast<acc_t>(b[j]);
  return s;
}

// y[0..d) += alpha * x[0..d)
template <typename scalar_t, typename acc_t>
inline void axpy(acc_t* y, acc_t alpha, const scalar_t* x, int64_t d) {
#pragma omp simd
  for (int64_t j = 0; j < d; ++j) y[j] += alpha * static_cast<acc_t>(x[j]);
}

// y = alpha * x (y acc, x any float type).
template <typename acc_t, typename scalar_t>
inline void scaled_copy(acc_t* y, acc_t alpha, const scalar_t* x, int64_t d) {
#pragma omp simd
  for (int64_t j = 0; j < d; ++j) y[j] = alpha * static_cast<acc_t>(x[j]);
}

inline bool is_hit(int64_t id, const int64_t* hits, int64_t T) {
  for (int64_t t = 0; t < T; ++t) {
    if (hits[t] >= 0 && hits[t] == id) return true;
  }
  return false;
}

at::ScalarType acc_dtype(const Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

Tensor acc_or_undefined(const OptTensor& t, at::ScalarType acc) {
  return t.has_value() ? t->to(acc).contiguous() : Tensor();
}

Tensor ids_or_undefined(const OptTensor& t) {
  return t.has_value() ? t->contiguous() : Tensor();
}

void check_index_range(const Tensor& index, int64_t limit, const char* name) {
  if (index.numel() == 0) return;
  const auto [lo, hi] = at::aminmax(index);
  TORCH_CHECK(lo.item<int64_t>() >= -1, name, " has an entry below -1 (", lo.item<int64_t>(),
              "); -1 marks padding");
  TORCH_CHECK(hi.item<int64_t>() < limit, name, " has an entry ", hi.item<int64_t>(),
              " out of range for ", limit, " rows");
}

// Everything the sampled softmax kernels read, in the layout they want.
struct SampledArgs {
  Tensor query;          // [B, d] input dtype
  Tensor positives;      // [B, T, d] input dtype
  Tensor candidates;     // [C, d] input dtype
  Tensor positive_ids;   // [B, T] int64 or undefined
  Tensor candidate_ids;  // [C] int64 or undefined
  Tensor weights;        // [B, T] acc
  Tensor positive_log_q; // [B, T] acc or undefined
  Tensor candidate_log_q;  // [C] or [B, H] acc or undefined
  Tensor candidate_index;  // [B, H] int64 or undefined
  double inv_tau;
  bool mask_hits;
  int64_t B, T, d, C;
};

SampledArgs make_sampled_args(const Tensor& query, const Tensor& positives,
                              const Tensor& candidates, const OptTensor& positive_ids,
                              const OptTensor& candidate_ids, const Tensor& positive_weights,
                              const OptTensor& positive_log_q, const OptTensor& candidate_log_q,
                              const OptTensor& candidate_index, double temperature,
                              bool remove_accidental_hits) {
  check_sampled_softmax_args(query, positives, candidates, positive_ids, candidate_ids,
                             positive_weights, positive_log_q, candidate_log_q, candidate_index,
                             temperature);
  const auto acc = acc_dtype(query);
  SampledArgs a;
  a.query = query.contiguous();
  a.positives = positives.contiguous();
  a.candidates = candidates.contiguous();
  a.positive_ids = ids_or_undefined(positive_ids);
  a.candidate_ids = ids_or_undefined(candidate_ids);
  a.weights = positive_weights.to(acc).contiguous();
  a.positive_log_q = acc_or_undefined(positive_log_q, acc);
  a.candidate_log_q = acc_or_undefined(candidate_log_q, acc);
  a.candidate_index = ids_or_undefined(candidate_index);
  a.inv_tau = 1.0 / temperature;
  a.mask_hits = remove_accidental_hits && a.positive_ids.defined() && a.candidate_ids.defined();
  a.B = query.size(0);
  a.T = positives.size(1);
  a.d = query.size(1);
  a.C = candidates.size(0);
  if (a.candidate_index.defined()) check_index_range(a.candidate_index, a.C, "candidate_index");
  return a;
}

// Each row's positive ids with repeats replaced by -1 (padding), [B, T]: the hit mask costs
// B x C per distinct id, and rows often repeat ids (e.g. placeholder slots).
Tensor unique_hit_ids(const Tensor& positive_ids) {
  if (positive_ids.size(1) <= 1) return positive_ids;
  Tensor sorted = std::get<0>(positive_ids.sort(/*dim=*/1));
  Tensor repeat = sorted.narrow(1, 1, sorted.size(1) - 1)
                      .eq(sorted.narrow(1, 0, sorted.size(1) - 1));
  sorted.narrow(1, 1, sorted.size(1) - 1).masked_fill_(repeat, -1);
  return sorted.contiguous();
}

DenseScan shared_candidate_scan(const SampledArgs& a) {
  DenseScan scan;
  scan.query = a.query;
  scan.candidates = a.candidates;
  if (a.candidate_log_q.defined()) scan.offset = a.candidate_log_q.neg();
  if (a.mask_hits) {
    scan.hit_ids = unique_hit_ids(a.positive_ids);
    scan.candidate_ids = a.candidate_ids;
  }
  scan.inv_tau = a.inv_tau;
  return scan;
}

// Scores of each row's positives, [B, T] acc: <q_b, e_bt> / tau - log Q+_bt.
Tensor positive_scores(const SampledArgs& a) {
  const auto acc = acc_dtype(a.query);
  auto out = at::empty({a.B, a.T}, a.query.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.query.scalar_type(),
                                  "positive_scores", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* q = a.query.const_data_ptr<scalar_t>();
    const scalar_t* e = a.positives.const_data_ptr<scalar_t>();
    const acc_t* lq = a.positive_log_q.defined() ? a.positive_log_q.const_data_ptr<acc_t>()
                                                  : nullptr;
    acc_t* s = out.data_ptr<acc_t>();
    const int64_t T = a.T, d = a.d;
    const auto inv_tau = static_cast<acc_t>(a.inv_tau);
    at::parallel_for(0, a.B, kRowGrain, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t t = 0; t < T; ++t) {
          const int64_t bt = b * T + t;
          s[bt] = dot<scalar_t, acc_t>(q + b * d, e + bt * d, d) * inv_tau -
                  (lq ? lq[bt] : acc_t(0));
        }
      }
    });
  });
  return out;
}

// Per-row log-sum-exp over per-row candidate subsets (candidate_index [B, H]).
Tensor indexed_logsumexp(const SampledArgs& a) {
  const auto acc = acc_dtype(a.query);
  auto lse = at::empty({a.B}, a.query.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.query.scalar_type(),
                                  "indexed_logsumexp", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* q = a.query.const_data_ptr<scalar_t>();
    const scalar_t* c = a.candidates.const_data_ptr<scalar_t>();
    const int64_t* index = a.candidate_index.const_data_ptr<int64_t>();
    const acc_t* lq = a.candidate_log_q.defined() ? a.candidate_log_q.const_data_ptr<acc_t>()
                                                   : nullptr;
    const int64_t* pid = a.mask_hits ? a.positive_ids.const_data_ptr<int64_t>() : nullptr;
    const int64_t* cid = a.mask_hits ? a.candidate_ids.const_data_ptr<int64_t>() : nullptr;
    const int64_t H = a.candidate_index.size(1), T = a.T, d = a.d;
    const auto inv_tau = static_cast<acc_t>(a.inv_tau);
    acc_t* out = lse.data_ptr<acc_t>();
    at::parallel_for(0, a.B, kRowGrain, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        OnlineLSE<acc_t> state;
        for (int64_t h = 0; h < H; ++h) {
          const int64_t j = index[b * H + h];
          if (j < 0) continue;
          if (pid && is_hit(cid[j], pid + b * T, T)) continue;
          state.add(dot<scalar_t, acc_t>(q + b * d, c + j * d, d) * inv_tau -
                    (lq ? lq[b * H + h] : acc_t(0)));
        }
        out[b] = state.value();
      }
    });
  });
  return lse;
}

// Gradients of sum_b coef[b] * lse_b over per-row candidates. grad_query [B, d] and
// grad_candidates [C, d] are acc tensors accumulated into.
void indexed_backward(const SampledArgs& a, const Tensor& lse, const Tensor& coef,
                      Tensor& grad_query, Tensor& grad_candidates) {
  const auto acc = acc_dtype(a.query);
  const int64_t H = a.candidate_index.size(1);
  // d loss / d <q_b, c_j> for every (b, h); [B, H] like candidate_index.
  auto g_score = at::zeros({a.B, H}, a.query.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.query.scalar_type(),
                                  "indexed_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* q = a.query.const_data_ptr<scalar_t>();
    const scalar_t* c = a.candidates.const_data_ptr<scalar_t>();
    const int64_t* index = a.candidate_index.const_data_ptr<int64_t>();
    const acc_t* lq = a.candidate_log_q.defined() ? a.candidate_log_q.const_data_ptr<acc_t>()
                                                   : nullptr;
    const int64_t* pid = a.mask_hits ? a.positive_ids.const_data_ptr<int64_t>() : nullptr;
    const int64_t* cid = a.mask_hits ? a.candidate_ids.const_data_ptr<int64_t>() : nullptr;
    const acc_t* lse_p = lse.const_data_ptr<acc_t>();
    const acc_t* coef_p = coef.const_data_ptr<acc_t>();
    const int64_t T = a.T, d = a.d, C = a.C;
    const auto inv_tau = static_cast<acc_t>(a.inv_tau);
    acc_t* gs = g_score.data_ptr<acc_t>();
    acc_t* gq = grad_query.data_ptr<acc_t>();
    at::parallel_for(0, a.B, kRowGrain, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        if (coef_p[b] == acc_t(0) || lse_p[b] == neg_inf<acc_t>()) continue;
        for (int64_t h = 0; h < H; ++h) {
          const int64_t j = index[b * H + h];
          if (j < 0) continue;
          if (pid && is_hit(cid[j], pid + b * T, T)) continue;
          const acc_t s = dot<scalar_t, acc_t>(q + b * d, c + j * d, d) * inv_tau -
                          (lq ? lq[b * H + h] : acc_t(0));
          const acc_t g = coef_p[b] * std::exp(s - lse_p[b]) * inv_tau;
          gs[b * H + h] = g;
          axpy(gq + b * d, g, c + j * d, d);
        }
      }
    });
    // grad_candidates[j] += g_score[b, h] * q_b. Threads own disjoint ranges of candidate rows
    // and each scans the whole index, so the scatter needs no atomics and is deterministic.
    acc_t* gc = grad_candidates.data_ptr<acc_t>();
    const int64_t BH = a.B * H;
    at::parallel_for(0, C, 1, [&](int64_t j0, int64_t j1) {
      for (int64_t bh = 0; bh < BH; ++bh) {
        const int64_t j = index[bh];
        if (j < j0 || j >= j1 || gs[bh] == acc_t(0)) continue;
        axpy(gc + j * d, gs[bh], q + (bh / H) * d, d);
      }
    });
  });
}

// Gradients through the positives' own scores: d loss / d s+_bt = g_b (W_b softmax(s+)_bt - w_bt)
// with W_b = sum_t w_bt. Adds into grad_query [B, d]; writes every entry of grad_positives
// [B, T, d] (acc), which may therefore come uninitialised (with hard negatives as weight-0
// slots it is the largest buffer of a training step: zero-filling it cost a sixth of the step).
void accumulate_positive_grads(const SampledArgs& a, const Tensor& valid_w, const Tensor& total_w,
                               const Tensor& g, const Tensor& lse_acc, Tensor& grad_q,
                               Tensor& grad_e) {
  const Tensor s_pos = positive_scores(a);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.query.scalar_type(),
                                  "sampled_softmax_ce_positive_grads", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* q = a.query.const_data_ptr<scalar_t>();
    const scalar_t* e = a.positives.const_data_ptr<scalar_t>();
    const acc_t* s = s_pos.const_data_ptr<acc_t>();
    const acc_t* w = valid_w.const_data_ptr<acc_t>();
    const acc_t* W = total_w.const_data_ptr<acc_t>();
    const acc_t* gl = g.const_data_ptr<acc_t>();
    const acc_t* lse_p = lse_acc.const_data_ptr<acc_t>();
    const int64_t* pid = a.positive_ids.defined() ? a.positive_ids.const_data_ptr<int64_t>()
                                                  : nullptr;
    acc_t* gq = grad_q.data_ptr<acc_t>();
    acc_t* ge = grad_e.data_ptr<acc_t>();
    const int64_t T = a.T, d = a.d;
    const auto inv_tau = static_cast<acc_t>(a.inv_tau);
    at::parallel_for(0, a.B, kRowGrain, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        if (W[b] == acc_t(0)) {
          std::fill(ge + b * T * d, ge + (b + 1) * T * d, acc_t(0));
          continue;
        }
        for (int64_t t = 0; t < T; ++t) {
          const int64_t bt = b * T + t;
          if (pid && pid[bt] < 0) {
            std::fill(ge + bt * d, ge + (bt + 1) * d, acc_t(0));
            continue;
          }
          const acc_t ds = gl[b] * (W[b] * std::exp(s[bt] - lse_p[b]) - w[bt]) * inv_tau;
          axpy(gq + b * d, ds, e + bt * d, d);
          scaled_copy(ge + bt * d, ds, q + b * d, d);
        }
      }
    });
  });
}

// Weights with padding zeroed, [B, T] acc.
Tensor valid_weights(const SampledArgs& a) {
  return a.positive_ids.defined() ? a.weights.masked_fill(a.positive_ids.lt(0), 0) : a.weights;
}

}  // namespace

std::tuple<Tensor, Tensor> sampled_softmax_ce_fwd_cpu(
    const Tensor& query, const Tensor& positives, const Tensor& candidates,
    const OptTensor& positive_ids, const OptTensor& candidate_ids,
    const Tensor& positive_weights, const OptTensor& positive_log_q,
    const OptTensor& candidate_log_q, const OptTensor& candidate_index, double temperature,
    bool remove_accidental_hits) {
  const SampledArgs a = make_sampled_args(query, positives, candidates, positive_ids,
                                          candidate_ids, positive_weights, positive_log_q,
                                          candidate_log_q, candidate_index, temperature,
                                          remove_accidental_hits);
  Tensor lse = a.candidate_index.defined() ? indexed_logsumexp(a)
                                           : dense_scan_logsumexp(shared_candidate_scan(a));
  const Tensor s_pos = positive_scores(a);
  auto loss = at::empty_like(lse);
  AT_DISPATCH_FLOATING_TYPES(lse.scalar_type(), "sampled_softmax_ce_loss", [&] {
    using acc_t = scalar_t;
    const acc_t* s = s_pos.const_data_ptr<acc_t>();
    const acc_t* w = a.weights.const_data_ptr<acc_t>();
    const int64_t* pid = a.positive_ids.defined() ? a.positive_ids.const_data_ptr<int64_t>()
                                                  : nullptr;
    acc_t* lse_p = lse.data_ptr<acc_t>();
    acc_t* loss_p = loss.data_ptr<acc_t>();
    const int64_t T = a.T;
    for (int64_t b = 0; b < a.B; ++b) {
      OnlineLSE<acc_t> state;
      state.merge(lse_p[b], acc_t(1));
      acc_t total_w = 0, weighted_s = 0;
      for (int64_t t = 0; t < T; ++t) {
        const int64_t bt = b * T + t;
        if (pid && pid[bt] < 0) continue;  // padding
        state.add(s[bt]);
        total_w += w[bt];
        weighted_s += w[bt] * s[bt];
      }
      lse_p[b] = state.value();
      loss_p[b] = total_w == acc_t(0) ? acc_t(0) : total_w * lse_p[b] - weighted_s;
    }
  });
  return {loss, lse};
}

std::tuple<Tensor, Tensor, Tensor> sampled_softmax_ce_bwd_cpu(
    const Tensor& grad_loss, const Tensor& query, const Tensor& positives,
    const Tensor& candidates, const OptTensor& positive_ids, const OptTensor& candidate_ids,
    const Tensor& positive_weights, const OptTensor& positive_log_q,
    const OptTensor& candidate_log_q, const OptTensor& candidate_index, const Tensor& lse,
    double temperature, bool remove_accidental_hits) {
  const SampledArgs a = make_sampled_args(query, positives, candidates, positive_ids,
                                          candidate_ids, positive_weights, positive_log_q,
                                          candidate_log_q, candidate_index, temperature,
                                          remove_accidental_hits);
  const auto acc = acc_dtype(query);
  auto opts = query.options().dtype(acc);
  TORCH_CHECK(grad_loss.sizes() == at::IntArrayRef({a.B}) && lse.sizes() == grad_loss.sizes(),
              "grad_loss and lse must be [B]");
  const Tensor g = grad_loss.to(acc).contiguous();
  const Tensor lse_acc = lse.to(acc).contiguous();
  const Tensor valid_w = valid_weights(a);
  const Tensor total_w = valid_w.sum(1);
  const Tensor coef = (g * total_w).contiguous();

  auto grad_q = at::zeros({a.B, a.d}, opts);
  auto grad_e = at::empty({a.B, a.T, a.d}, opts);  // every entry written below
  auto grad_c = at::zeros({a.C, a.d}, opts);
  if (a.candidate_index.defined()) {
    indexed_backward(a, lse_acc, coef, grad_q, grad_c);
  } else {
    Tensor no_offset_grad;
    dense_scan_backward(shared_candidate_scan(a), lse_acc, coef, grad_q, grad_c,
                        no_offset_grad);
  }

  accumulate_positive_grads(a, valid_w, total_w, g, lse_acc, grad_q, grad_e);
  return {grad_q.to(query.scalar_type()), grad_e.to(positives.scalar_type()),
          grad_c.to(candidates.scalar_type())};
}

// Forward and backward of the reduced loss sum_b row_coef[b] * loss_b in one call, for training
// steps that apply a mean or sum reduction: the gradients are computed while the scores are at
// hand (three matmuls per tile instead of four) and autograd only scales them by the upstream
// gradient. Returns (loss [] acc, grad_query, grad_positives, grad_candidates).
std::tuple<Tensor, Tensor, Tensor, Tensor> sampled_softmax_ce_fused_cpu(
    const Tensor& query, const Tensor& positives, const Tensor& candidates,
    const OptTensor& positive_ids, const OptTensor& candidate_ids,
    const Tensor& positive_weights, const OptTensor& positive_log_q,
    const OptTensor& candidate_log_q, const OptTensor& candidate_index, const Tensor& row_coef,
    double temperature, bool remove_accidental_hits) {
  const SampledArgs a = make_sampled_args(query, positives, candidates, positive_ids,
                                          candidate_ids, positive_weights, positive_log_q,
                                          candidate_log_q, candidate_index, temperature,
                                          remove_accidental_hits);
  const auto acc = acc_dtype(query);
  auto opts = query.options().dtype(acc);
  TORCH_CHECK(row_coef.sizes() == at::IntArrayRef({a.B}), "row_coef must be [B], got ",
              row_coef.sizes());
  const Tensor g = row_coef.to(acc).contiguous();
  const Tensor valid_w = valid_weights(a);
  const Tensor total_w = valid_w.sum(1);
  const Tensor coef = (g * total_w).contiguous();
  // The positives' own share of each row's log-sum-exp.
  Tensor s_pos = positive_scores(a);
  if (a.positive_ids.defined()) {
    s_pos = s_pos.masked_fill(a.positive_ids.lt(0), -std::numeric_limits<double>::infinity());
  }
  const Tensor pos_lse = a.T > 0 ? at::logsumexp(s_pos, 1)
                                 : at::full({a.B}, -std::numeric_limits<double>::infinity(), opts);

  auto grad_q = at::zeros({a.B, a.d}, opts);
  auto grad_e = at::empty({a.B, a.T, a.d}, opts);  // every entry written below
  auto grad_c = at::zeros({a.C, a.d}, opts);
  Tensor lse;
  if (a.candidate_index.defined()) {
    lse = at::logaddexp(indexed_logsumexp(a), pos_lse).contiguous();
    indexed_backward(a, lse, coef, grad_q, grad_c);
  } else {
    lse = dense_scan_fused(shared_candidate_scan(a), pos_lse.contiguous(), coef, grad_q, grad_c);
  }
  accumulate_positive_grads(a, valid_w, total_w, g, lse, grad_q, grad_e);
  // loss_b = W_b lse_b - sum_t w_bt s+_bt; padding has w = 0 (and s+ = -inf: keep it out).
  const Tensor weighted_s = at::where(valid_w > 0, valid_w * s_pos, at::zeros_like(s_pos)).sum(1);
  const Tensor per_row = at::where(total_w > 0, total_w * lse - weighted_s, at::zeros_like(lse));
  return {(g * per_row).sum(), grad_q.to(query.scalar_type()),
          grad_e.to(positives.scalar_type()), grad_c.to(candidates.scalar_type())};
}

namespace {

struct FullArgs {
  Tensor query, weight, offset, targets, target_weights;
  double inv_tau;
  int64_t B, T, d, N;
};

FullArgs make_full_args(const Tensor& query, const Tensor& weight, const OptTensor& bias,
                        const Tensor& targets, const Tensor& target_weights,
                        double temperature) {
  check_full_softmax_args(query, weight, bias, targets, target_weights, temperature);
  const auto acc = acc_dtype(query);
  FullArgs a;
  a.query = query.contiguous();
  a.weight = weight.contiguous();
  a.inv_tau = 1.0 / temperature;
  // The bias enters every score as bias / tau: it is the scan's per-candidate offset.
  if (bias.has_value()) a.offset = (bias->to(acc) * a.inv_tau).contiguous();
  a.targets = targets.contiguous();
  a.target_weights = target_weights.to(acc).masked_fill(a.targets.lt(0), 0).contiguous();
  a.B = query.size(0);
  a.T = targets.size(1);
  a.d = query.size(1);
  a.N = weight.size(0);
  check_index_range(a.targets, a.N, "targets");
  return a;
}

DenseScan full_scan(const FullArgs& a) {
  DenseScan scan;
  scan.query = a.query;
  scan.candidates = a.weight;
  scan.offset = a.offset;
  scan.inv_tau = a.inv_tau;
  return scan;
}

}  // namespace

std::tuple<Tensor, Tensor> full_softmax_ce_fwd_cpu(const Tensor& query, const Tensor& weight,
                                                   const OptTensor& bias, const Tensor& targets,
                                                   const Tensor& target_weights,
                                                   double temperature) {
  const FullArgs a = make_full_args(query, weight, bias, targets, target_weights, temperature);
  Tensor lse = dense_scan_logsumexp(full_scan(a));
  auto loss = at::empty_like(lse);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(),
                                  "full_softmax_ce_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* q = a.query.const_data_ptr<scalar_t>();
    const scalar_t* W = a.weight.const_data_ptr<scalar_t>();
    const acc_t* off = a.offset.defined() ? a.offset.const_data_ptr<acc_t>() : nullptr;
    const int64_t* y = a.targets.const_data_ptr<int64_t>();
    const acc_t* w = a.target_weights.const_data_ptr<acc_t>();
    const acc_t* lse_p = lse.const_data_ptr<acc_t>();
    acc_t* loss_p = loss.data_ptr<acc_t>();
    const int64_t T = a.T, d = a.d;
    const auto inv_tau = static_cast<acc_t>(a.inv_tau);
    at::parallel_for(0, a.B, kRowGrain, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        acc_t total_w = 0, weighted_s = 0;
        for (int64_t t = 0; t < T; ++t) {
          const int64_t bt = b * T + t;
          if (y[bt] < 0) continue;
          const acc_t s = dot<scalar_t, acc_t>(q + b * d, W + y[bt] * d, d) * inv_tau +
                          (off ? off[y[bt]] : acc_t(0));
          total_w += w[bt];
          weighted_s += w[bt] * s;
        }
        loss_p[b] = total_w == acc_t(0) ? acc_t(0) : total_w * lse_p[b] - weighted_s;
      }
    });
  });
  return {loss, lse};
}

std::tuple<Tensor, Tensor, Tensor> full_softmax_ce_bwd_cpu(
    const Tensor& grad_loss, const Tensor& query, const Tensor& weight, const OptTensor& bias,
    const Tensor& targets, const Tensor& target_weights, const Tensor& lse, double temperature) {
  const FullArgs a = make_full_args(query, weight, bias, targets, target_weights, temperature);
  const auto acc = acc_dtype(query);
  auto opts = query.options().dtype(acc);
  TORCH_CHECK(grad_loss.sizes() == at::IntArrayRef({a.B}) && lse.sizes() == grad_loss.sizes(),
              "grad_loss and lse must be [B]");
  const Tensor g = grad_loss.to(acc).contiguous();
  const Tensor lse_acc = lse.to(acc).contiguous();
  const Tensor coef = (g * a.target_weights.sum(1)).contiguous();

  auto grad_q = at::zeros({a.B, a.d}, opts);
  auto grad_w = at::zeros({a.N, a.d}, opts);
  Tensor grad_offset = bias.has_value() ? at::zeros({a.N}, opts) : Tensor();
  dense_scan_backward(full_scan(a), lse_acc, coef, grad_q, grad_w, grad_offset);

  // The targets' own scores: d loss / d s_y = -g_b * w_bt. Rows may share targets, so the
  // scatter into grad_weight runs serially (B x T x d work, small next to the scan).
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(),
                                  "full_softmax_ce_bwd_targets", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* q = a.query.const_data_ptr<scalar_t>();
    const scalar_t* W = a.weight.const_data_ptr<scalar_t>();
    const int64_t* y = a.targets.const_data_ptr<int64_t>();
    const acc_t* w = a.target_weights.const_data_ptr<acc_t>();
    const acc_t* gl = g.const_data_ptr<acc_t>();
    acc_t* gq = grad_q.data_ptr<acc_t>();
    acc_t* gw = grad_w.data_ptr<acc_t>();
    acc_t* goff = grad_offset.defined() ? grad_offset.data_ptr<acc_t>() : nullptr;
    const int64_t T = a.T, d = a.d;
    const auto inv_tau = static_cast<acc_t>(a.inv_tau);
    for (int64_t b = 0; b < a.B; ++b) {
      for (int64_t t = 0; t < T; ++t) {
        const int64_t bt = b * T + t;
        if (y[bt] < 0 || w[bt] == acc_t(0)) continue;
        const acc_t ds = -gl[b] * w[bt];
        axpy(gq + b * d, ds * inv_tau, W + y[bt] * d, d);
        axpy(gw + y[bt] * d, ds * inv_tau, q + b * d, d);
        if (goff) goff[y[bt]] += ds;
      }
    }
  });
  Tensor grad_bias = bias.has_value() ? (grad_offset * a.inv_tau).to(bias->scalar_type())
                                      : at::empty({0}, query.options());
  return {grad_q.to(query.scalar_type()), grad_w.to(weight.scalar_type()), grad_bias};
}

}  // namespace cpu

TORCH_LIBRARY_IMPL(fastsoftmax, CPU, m) {
  m.impl("sampled_softmax_ce", &cpu::sampled_softmax_ce_fwd_cpu);
  m.impl("sampled_softmax_ce_backward", &cpu::sampled_softmax_ce_bwd_cpu);
  m.impl("sampled_softmax_ce_fused", &cpu::sampled_softmax_ce_fused_cpu);
  m.impl("full_softmax_ce", &cpu::full_softmax_ce_fwd_cpu);
  m.impl("full_softmax_ce_backward", &cpu::full_softmax_ce_bwd_cpu);
}

}  // namespace fastsoftmax
