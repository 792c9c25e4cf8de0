// The op schemas of fastsoftmax (kernels live in cpu/ and cuda/, registered per dispatch key)
// and the pybind11 module, which carries build-information helpers only, never the ops.
#include <torch/extension.h>
#include <torch/library.h>

#include <string>

TORCH_LIBRARY(fastsoftmax, m) {
  // Per-row sampled softmax cross-entropy (DESIGN.md §4). positives [B, T, d], weights [B, T]
  // (already zero at padding), candidate_index [B, H] selects per-row candidates.
  // Returns (loss [B], lse [B]) in the accumulation dtype (float32, or float64 for float64).
  m.def(
      "sampled_softmax_ce(Tensor query, Tensor positives, Tensor candidates, "
      "Tensor? positive_ids, Tensor? candidate_ids, Tensor positive_weights, "
      "Tensor? positive_log_q, Tensor? candidate_log_q, Tensor? candidate_index, "
      "float temperature, bool remove_accidental_hits) -> (Tensor, Tensor)");
  m.def(
      "sampled_softmax_ce_backward(Tensor grad_loss, Tensor query, Tensor positives, "
      "Tensor candidates, Tensor? positive_ids, Tensor? candidate_ids, Tensor positive_weights, "
      "Tensor? positive_log_q, Tensor? candidate_log_q, Tensor? candidate_index, Tensor lse, "
      "float temperature, bool remove_accidental_hits) -> (Tensor, Tensor, Tensor)");
  // Full softmax over every row of weight [N, d]; targets [B, T] with -1 padding.
  // The backward returns an empty grad_bias when bias is None.
  m.def(
      "full_softmax_ce(Tensor query, Tensor weight, Tensor? bias, Tensor targets, "
      "Tensor target_weights, float temperature) -> (Tensor, Tensor)");
  m.def(
      "full_softmax_ce_backward(Tensor grad_loss, Tensor query, Tensor weight, Tensor? bias, "
      "Tensor targets, Tensor target_weights, Tensor lse, float temperature) "
      "-> (Tensor, Tensor, Tensor)");
  // Hard-negative mining over a candidate pool [P, d]: per row, `num` pool indices ([B, num]
  // int64, -1 where nothing is eligible) and their log expected counts ([B, num], acc dtype).
  // mode "sample" draws with replacement from softmax(score / temperature) over the eligible pool
  // (Philox keyed by seed, offset; row, draw); "topk" takes the highest scores. exclude_ids
  // [B, T] (-1 padding) removes pool rows whose pool_ids [P] (default: the pool index) match.
  // Not differentiable.
  m.def(
      "mine_hard_negatives(Tensor query, Tensor pool, Tensor? pool_ids, Tensor? exclude_ids, "
      "Tensor? pool_log_q, int num, str mode, float temperature, int seed, int offset) "
      "-> (Tensor, Tensor)");
}

namespace {

bool built_with_cuda() {
#ifdef FASTSOFTMAX_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::string cuda_archs() {
#ifdef FASTSOFTMAX_CUDA_ARCHS
  return FASTSOFTMAX_CUDA_ARCHS;
#else
  return "";
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastsoftmax native extension: build information (the ops live in torch.ops.fastsoftmax)";
  m.def("built_with_cuda", &built_with_cuda, "True when the CUDA kernels were compiled and linked.");
  m.def("cuda_archs", &cuda_archs, "TORCH_CUDA_ARCH_LIST the CUDA kernels were built for ('' if none).");
  m.def("build_info", [] {
    pybind11::dict info;
    info["cuda"] = built_with_cuda();
    info["cuda_archs"] = cuda_archs();
    info["torch"] = std::string(TORCH_VERSION);
#ifdef _OPENMP
    info["openmp"] = true;
#else
    info["openmp"] = false;
#endif
    return info;
  }, "How the extension was built: {'cuda', 'cuda_archs', 'torch', 'openmp'}.");
}
