// Torch glue of the CUDA softmax cross-entropy ops (kernels: softmax_ce_kernels.cu). Compiled by
// the host compiler: argument checks, device guard, current stream, dtype dispatch, workspace
// allocation through the caching allocator, and the CUDA registrations. The semantics are those
// of the CPU kernels (cpu/softmax_ce_cpu.cpp), argument preparation included.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <limits>
#include <tuple>

#include "cuda/softmax_ce_kernels.cuh"
#include "softmax_ce_checks.h"

namespace fastsoftmax {
namespace cuda {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// c10 scalar types -> the CUDA types the launchers are instantiated for (same bit layout).
template <typename scalar_t>
struct CudaScalar {
  using type = scalar_t;
};
template <>
struct CudaScalar<c10::Half> {
  using type = __half;
};
template <>
struct CudaScalar<c10::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename scalar_t>
const typename CudaScalar<scalar_t>::type* input_ptr(const Tensor& t) {
  return reinterpret_cast<const typename CudaScalar<scalar_t>::type*>(
      t.const_data_ptr<scalar_t>());
}

template <typename T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

template <typename T>
T* mutable_ptr_or_null(Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
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

void check_cuda(const Tensor& query, const char* op) {
  TORCH_CHECK(query.is_cuda(), op, " (CUDA kernel): query must be a CUDA tensor, got ",
              query.device());
}

// Out-of-range indices would be illegal memory accesses in the kernels: check them up front
// (one device sync), with the CPU kernel's messages.
void check_index_range(const Tensor& index, int64_t limit, const char* name) {
  if (index.numel() == 0) return;
  const auto [lo_t, hi_t] = at::aminmax(index);
  const int64_t lo = lo_t.item<int64_t>(), hi = hi_t.item<int64_t>();
  TORCH_CHECK(lo >= -1, name, " has an entry below -1 (", lo, "); -1 marks padding");
  TORCH_CHECK(hi < limit, name, " has an entry ", hi, " out of range for ", limit, " rows");
}

// Workspace of the dense scan (see DenseScanPlan); undefined where the plan needs none.
struct ScanWorkspace {
  Tensor partial_max, partial_sum;                          // forward
  Tensor grad_query_partial, grad_cand_partial, grad_offset_partial;  // backward
};

ScanWorkspace forward_workspace(const DenseScanPlan& plan, int64_t B,
                                const at::TensorOptions& acc_opts) {
  ScanWorkspace ws;
  if (plan.col_splits > 0) {
    ws.partial_max = at::empty({plan.col_splits, B}, acc_opts);
    ws.partial_sum = at::empty({plan.col_splits, B}, acc_opts);
  }
  return ws;
}

// NB: zero-filled: the backward passes accumulate into their partials.
ScanWorkspace backward_workspace(const DenseScanPlan& plan, int64_t B, int64_t C, int64_t d,
                                 bool offset_grad, const at::TensorOptions& acc_opts) {
  ScanWorkspace ws;
  if (plan.col_splits > 1 && d > 0) {
    ws.grad_query_partial = at::zeros({plan.col_splits, B, d}, acc_opts);
  }
  if (plan.row_splits > 1 && d > 0) {
    ws.grad_cand_partial = at::zeros({plan.row_splits, C, d}, acc_opts);
  }
  if (plan.row_splits > 1 && offset_grad) {
    ws.grad_offset_partial = at::zeros({plan.row_splits, C}, acc_opts);
  }
  return ws;
}

// The sampled softmax inputs, in the layout and dtypes the kernels read (as on CPU).
struct SampledArgs {
  Tensor query;            // [B, d] input dtype
  Tensor positives;        // [B, T, d] input dtype
  Tensor candidates;       // [C, d] input dtype
  Tensor positive_ids;     // [B, T] int64 or undefined
  Tensor candidate_ids;    // [C] int64 or undefined
  Tensor weights;          // [B, T] acc
  Tensor positive_log_q;   // [B, T] acc or undefined
  Tensor candidate_offset; // [C] acc = -log Q (shared candidates) or undefined
  Tensor candidate_log_q;  // [B, H] acc (per-row candidates) or undefined
  Tensor candidate_index;  // [B, H] int64 or undefined
  double inv_tau;
  bool mask_hits;
  int64_t B, T, d, C, H;
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
  a.candidate_index = ids_or_undefined(candidate_index);
  const Tensor log_q = acc_or_undefined(candidate_log_q, acc);
  if (a.candidate_index.defined()) {
    a.candidate_log_q = log_q;
  } else if (log_q.defined()) {
    a.candidate_offset = log_q.neg();
  }
  a.inv_tau = 1.0 / temperature;
  a.mask_hits = remove_accidental_hits && a.positive_ids.defined() && a.candidate_ids.defined();
  a.B = query.size(0);
  a.T = positives.size(1);
  a.d = query.size(1);
  a.C = candidates.size(0);
  a.H = a.candidate_index.defined() ? a.candidate_index.size(1) : 0;
  if (a.candidate_index.defined()) check_index_range(a.candidate_index, a.C, "candidate_index");
  return a;
}

template <typename scalar_t>
void fill_sampled_inputs(SampledSoftmaxCEInputs<typename CudaScalar<scalar_t>::type>& p,
                         const SampledArgs& a, const DenseScanPlan& plan) {
  using acc_t = at::opmath_type<scalar_t>;
  p.query = input_ptr<scalar_t>(a.query);
  p.positives = input_ptr<scalar_t>(a.positives);
  p.candidates = input_ptr<scalar_t>(a.candidates);
  p.positive_ids = ptr_or_null<int64_t>(a.positive_ids);
  p.candidate_ids = ptr_or_null<int64_t>(a.candidate_ids);
  p.positive_log_q = ptr_or_null<acc_t>(a.positive_log_q);
  p.candidate_offset = ptr_or_null<acc_t>(a.candidate_offset);
  p.candidate_index = ptr_or_null<int64_t>(a.candidate_index);
  p.candidate_log_q = ptr_or_null<acc_t>(a.candidate_log_q);
  p.mask_hits = a.mask_hits;
  p.inv_tau = static_cast<acc_t>(a.inv_tau);
  p.B = a.B;
  p.T = a.T;
  p.d = a.d;
  p.C = a.C;
  p.H = a.H;
  p.plan = plan;
}

}  // namespace

std::tuple<Tensor, Tensor> sampled_softmax_ce_fwd_cuda(
    const Tensor& query, const Tensor& positives, const Tensor& candidates,
    const OptTensor& positive_ids, const OptTensor& candidate_ids,
    const Tensor& positive_weights, const OptTensor& positive_log_q,
    const OptTensor& candidate_log_q, const OptTensor& candidate_index, double temperature,
    bool remove_accidental_hits) {
  check_cuda(query, "sampled_softmax_ce");
  const c10::cuda::CUDAGuard guard(query.device());
  const SampledArgs a = make_sampled_args(query, positives, candidates, positive_ids,
                                          candidate_ids, positive_weights, positive_log_q,
                                          candidate_log_q, candidate_index, temperature,
                                          remove_accidental_hits);
  const auto acc_opts = query.options().dtype(acc_dtype(query));
  auto loss = at::empty({a.B}, acc_opts);
  auto lse = at::empty({a.B}, acc_opts);
  if (a.B == 0) return {loss, lse};

  DenseScanPlan plan;
  if (!a.candidate_index.defined()) {
    plan = plan_dense_scan(a.B, a.C, query.scalar_type() == at::kDouble);
  }
  ScanWorkspace ws = forward_workspace(plan, a.B, acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(),
                                  "sampled_softmax_ce_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    SampledSoftmaxCEFwdParams<typename CudaScalar<scalar_t>::type> p;
    fill_sampled_inputs<scalar_t>(p, a, plan);
    p.positive_weights = a.weights.const_data_ptr<acc_t>();
    p.loss = loss.mutable_data_ptr<acc_t>();
    p.lse = lse.mutable_data_ptr<acc_t>();
    p.partial_max = mutable_ptr_or_null<acc_t>(ws.partial_max);
    p.partial_sum = mutable_ptr_or_null<acc_t>(ws.partial_sum);
    launch_sampled_softmax_ce_fwd(p, c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, lse};
}

std::tuple<Tensor, Tensor, Tensor> sampled_softmax_ce_bwd_cuda(
    const Tensor& grad_loss, const Tensor& query, const Tensor& positives,
    const Tensor& candidates, const OptTensor& positive_ids, const OptTensor& candidate_ids,
    const Tensor& positive_weights, const OptTensor& positive_log_q,
    const OptTensor& candidate_log_q, const OptTensor& candidate_index, const Tensor& lse,
    double temperature, bool remove_accidental_hits) {
  check_cuda(query, "sampled_softmax_ce_backward");
  const c10::cuda::CUDAGuard guard(query.device());
  const SampledArgs a = make_sampled_args(query, positives, candidates, positive_ids,
                                          candidate_ids, positive_weights, positive_log_q,
                                          candidate_log_q, candidate_index, temperature,
                                          remove_accidental_hits);
  TORCH_CHECK(grad_loss.sizes() == at::IntArrayRef({a.B}) && lse.sizes() == grad_loss.sizes(),
              "grad_loss and lse must be [B]");
  TORCH_CHECK(grad_loss.device() == query.device() && lse.device() == query.device(),
              "grad_loss and lse must be on the device of query");
  const auto acc = acc_dtype(query);
  const auto acc_opts = query.options().dtype(acc);
  auto grad_q = at::zeros({a.B, a.d}, acc_opts);
  auto grad_e = at::zeros({a.B, a.T, a.d}, acc_opts);
  auto grad_c = at::zeros({a.C, a.d}, acc_opts);
  if (a.B > 0) {
    const Tensor g = grad_loss.to(acc).contiguous();
    const Tensor lse_acc = lse.to(acc).contiguous();
    const Tensor valid_w = a.positive_ids.defined()
                               ? a.weights.masked_fill(a.positive_ids.lt(0), 0).contiguous()
                               : a.weights;
    const Tensor total_w = valid_w.sum(1).contiguous();
    const Tensor coef = (g * total_w).contiguous();

    DenseScanPlan plan;
    if (!a.candidate_index.defined()) plan = plan_dense_scan(a.B, a.C, acc == at::kDouble);
    ScanWorkspace ws = backward_workspace(plan, a.B, a.C, a.d, /*offset_grad=*/false, acc_opts);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(),
                                    "sampled_softmax_ce_bwd_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      SampledSoftmaxCEBwdParams<typename CudaScalar<scalar_t>::type> p;
      fill_sampled_inputs<scalar_t>(p, a, plan);
      p.grad_loss = g.const_data_ptr<acc_t>();
      p.lse = lse_acc.const_data_ptr<acc_t>();
      p.valid_weights = valid_w.const_data_ptr<acc_t>();
      p.total_weight = total_w.const_data_ptr<acc_t>();
      p.coef = coef.const_data_ptr<acc_t>();
      p.grad_query = grad_q.mutable_data_ptr<acc_t>();
      p.grad_positives = grad_e.mutable_data_ptr<acc_t>();
      p.grad_candidates = grad_c.mutable_data_ptr<acc_t>();
      p.grad_query_partial = mutable_ptr_or_null<acc_t>(ws.grad_query_partial);
      p.grad_candidates_partial = mutable_ptr_or_null<acc_t>(ws.grad_cand_partial);
      launch_sampled_softmax_ce_bwd(p, c10::cuda::getCurrentCUDAStream());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_q.to(query.scalar_type()), grad_e.to(positives.scalar_type()),
          grad_c.to(candidates.scalar_type())};
}

// The reduced loss sum_b row_coef[b] * loss_b and its gradients. On CUDA this is the forward
// followed by the backward with grad_loss = row_coef: unlike on CPU, where keeping a scores panel
// hot between the two passes saves a matmul's worth of memory traffic, the GPU kernels recompute
// the tiles from the saved log-sum-exp at little cost, and one code path stays easier to verify.
std::tuple<Tensor, Tensor, Tensor, Tensor> sampled_softmax_ce_fused_cuda(
    const Tensor& query, const Tensor& positives, const Tensor& candidates,
    const OptTensor& positive_ids, const OptTensor& candidate_ids,
    const Tensor& positive_weights, const OptTensor& positive_log_q,
    const OptTensor& candidate_log_q, const OptTensor& candidate_index, const Tensor& row_coef,
    double temperature, bool remove_accidental_hits) {
  check_cuda(query, "sampled_softmax_ce_fused");
  TORCH_CHECK(row_coef.dim() == 1 && row_coef.size(0) == query.size(0),
              "row_coef must be [B], got ", row_coef.sizes());
  auto [loss, lse] = sampled_softmax_ce_fwd_cuda(
      query, positives, candidates, positive_ids, candidate_ids, positive_weights,
      positive_log_q, candidate_log_q, candidate_index, temperature, remove_accidental_hits);
  const Tensor coef = row_coef.to(loss.scalar_type());
  auto [grad_q, grad_e, grad_c] = sampled_softmax_ce_bwd_cuda(
      coef, query, positives, candidates, positive_ids, candidate_ids, positive_weights,
      positive_log_q, candidate_log_q, candidate_index, lse, temperature,
      remove_accidental_hits);
  return {(coef * loss).sum(), grad_q, grad_e, grad_c};
}

namespace {

struct FullArgs {
  Tensor query;           // [B, d] input dtype
  Tensor weight;          // [N, d] input dtype
  Tensor offset;          // [N] acc = bias / tau, or undefined
  Tensor targets;         // [B, T] int64
  Tensor target_weights;  // [B, T] acc, zero at padding
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

template <typename scalar_t>
void fill_full_inputs(FullSoftmaxCEInputs<typename CudaScalar<scalar_t>::type>& p,
                      const FullArgs& a, const DenseScanPlan& plan) {
  using acc_t = at::opmath_type<scalar_t>;
  p.query = input_ptr<scalar_t>(a.query);
  p.weight = input_ptr<scalar_t>(a.weight);
  p.offset = ptr_or_null<acc_t>(a.offset);
  p.targets = a.targets.const_data_ptr<int64_t>();
  p.target_weights = a.target_weights.const_data_ptr<acc_t>();
  p.inv_tau = static_cast<acc_t>(a.inv_tau);
  p.B = a.B;
  p.T = a.T;
  p.d = a.d;
  p.N = a.N;
  p.plan = plan;
}

}  // namespace

std::tuple<Tensor, Tensor> full_softmax_ce_fwd_cuda(const Tensor& query, const Tensor& weight,
                                                    const OptTensor& bias, const Tensor& targets,
                                                    const Tensor& target_weights,
                                                    double temperature) {
  check_cuda(query, "full_softmax_ce");
  const c10::cuda::CUDAGuard guard(query.device());
  const FullArgs a = make_full_args(query, weight, bias, targets, target_weights, temperature);
  const auto acc_opts = query.options().dtype(acc_dtype(query));
  auto loss = at::empty({a.B}, acc_opts);
  auto lse = at::empty({a.B}, acc_opts);
  if (a.B == 0) return {loss, lse};

  const DenseScanPlan plan = plan_dense_scan(a.B, a.N, query.scalar_type() == at::kDouble);
  ScanWorkspace ws = forward_workspace(plan, a.B, acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(),
                                  "full_softmax_ce_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    FullSoftmaxCEFwdParams<typename CudaScalar<scalar_t>::type> p;
    fill_full_inputs<scalar_t>(p, a, plan);
    p.loss = loss.mutable_data_ptr<acc_t>();
    p.lse = lse.mutable_data_ptr<acc_t>();
    p.partial_max = mutable_ptr_or_null<acc_t>(ws.partial_max);
    p.partial_sum = mutable_ptr_or_null<acc_t>(ws.partial_sum);
    launch_full_softmax_ce_fwd(p, c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, lse};
}

std::tuple<Tensor, Tensor, Tensor> full_softmax_ce_bwd_cuda(
    const Tensor& grad_loss, const Tensor& query, const Tensor& weight, const OptTensor& bias,
    const Tensor& targets, const Tensor& target_weights, const Tensor& lse, double temperature) {
  check_cuda(query, "full_softmax_ce_backward");
  const c10::cuda::CUDAGuard guard(query.device());
  const FullArgs a = make_full_args(query, weight, bias, targets, target_weights, temperature);
  TORCH_CHECK(grad_loss.sizes() == at::IntArrayRef({a.B}) && lse.sizes() == grad_loss.sizes(),
              "grad_loss and lse must be [B]");
  TORCH_CHECK(grad_loss.device() == query.device() && lse.device() == query.device(),
              "grad_loss and lse must be on the device of query");
  const auto acc = acc_dtype(query);
  const auto acc_opts = query.options().dtype(acc);
  auto grad_q = at::zeros({a.B, a.d}, acc_opts);
  auto grad_w = at::zeros({a.N, a.d}, acc_opts);
  Tensor grad_offset = bias.has_value() ? at::zeros({a.N}, acc_opts) : Tensor();
  if (a.B > 0 && a.N > 0) {
    const Tensor g = grad_loss.to(acc).contiguous();
    const Tensor lse_acc = lse.to(acc).contiguous();
    const Tensor coef = (g * a.target_weights.sum(1)).contiguous();
    const DenseScanPlan plan = plan_dense_scan(a.B, a.N, acc == at::kDouble);
    ScanWorkspace ws =
        backward_workspace(plan, a.B, a.N, a.d, grad_offset.defined(), acc_opts);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(),
                                    "full_softmax_ce_bwd_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      FullSoftmaxCEBwdParams<typename CudaScalar<scalar_t>::type> p;
      fill_full_inputs<scalar_t>(p, a, plan);
      p.grad_loss = g.const_data_ptr<acc_t>();
      p.lse = lse_acc.const_data_ptr<acc_t>();
      p.coef = coef.const_data_ptr<acc_t>();
      p.grad_query = grad_q.mutable_data_ptr<acc_t>();
      p.grad_weight = grad_w.mutable_data_ptr<acc_t>();
      p.grad_offset = mutable_ptr_or_null<acc_t>(grad_offset);
      p.grad_query_partial = mutable_ptr_or_null<acc_t>(ws.grad_query_partial);
      p.grad_weight_partial = mutable_ptr_or_null<acc_t>(ws.grad_cand_partial);
      p.grad_offset_partial = mutable_ptr_or_null<acc_t>(ws.grad_offset_partial);
      launch_full_softmax_ce_bwd(p, c10::cuda::getCurrentCUDAStream());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  // d loss / d bias = d loss / d offset / tau.
  Tensor grad_bias = bias.has_value() ? (grad_offset * a.inv_tau).to(bias->scalar_type())
                                      : at::empty({0}, query.options());
  return {grad_q.to(query.scalar_type()), grad_w.to(weight.scalar_type()), grad_bias};
}

}  // namespace cuda

TORCH_LIBRARY_IMPL(fastsoftmax, CUDA, m) {
  m.impl("sampled_softmax_ce", &cuda::sampled_softmax_ce_fwd_cuda);
  m.impl("sampled_softmax_ce_backward", &cuda::sampled_softmax_ce_bwd_cuda);
  m.impl("sampled_softmax_ce_fused", &cuda::sampled_softmax_ce_fused_cuda);
  m.impl("full_softmax_ce", &cuda::full_softmax_ce_fwd_cuda);
  m.impl("full_softmax_ce_backward", &cuda::full_softmax_ce_bwd_cuda);
}

}  // namespace fastsoftmax
