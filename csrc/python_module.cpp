// The pybind11 module fastsoftmax._C: build-information helpers only (the ops are registered
// with torch by the TORCH_LIBRARY blocks and are reached through torch.ops.fastsoftmax).
#include <torch/extension.h>

#include <string>

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
