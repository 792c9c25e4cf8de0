"""Build fastsoftmax._C: CPU kernels always, CUDA kernels when torch and nvcc allow.

Environment switches:
  FASTSOFTMAX_CPU_ONLY=1   build without CUDA even when nvcc is found
  FORCE_CUDA=1             build CUDA kernels even if torch reports no CUDA device
  DEBUG=1                  -O0 -g
  TORCH_CUDA_ARCH_LIST     defaults to 9.0 when no GPU is visible at build time
"""
import glob
import os
import shutil

from setuptools import find_packages, setup

# CUDA_HOME must be settled before torch.utils.cpp_extension is imported: it reads it once.
if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from torch.utils.cpp_extension import (  # noqa: E402
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)

ROOT = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("DEBUG", "0") == "1"


def _want_cuda() -> bool:
    if os.environ.get("FASTSOFTMAX_CPU_ONLY", "0") == "1":
        return False
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    has_nvcc = CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    return torch.version.cuda is not None and has_nvcc


def _sources(pattern: str) -> list:
    return sorted(glob.glob(os.path.join("csrc", pattern)))


def _extension():
    with_cuda = _want_cuda()
    sources = _sources("*.cpp") + _sources("cpu/*.cpp")
    opt = ["-O0", "-g"] if DEBUG else ["-O3"]
    cxx = opt + ["-std=c++20", "-fopenmp", "-fno-math-errno"]
    # NB: -fopenmp on the link line too; without it at::parallel_for runs on one thread.
    link = ["-fopenmp"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    define_macros = [("TORCH_EXTENSION_NAME", "_C")]
    if not with_cuda:
        return CppExtension(
            "fastsoftmax._C", sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx}, extra_link_args=link,
        )
    if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "native")
    sources += _sources("cuda/*.cpp") + _sources("cuda/*.cu")
    # The CUDA glue (.cpp) includes c10/cuda headers only; newer wheels keep some CUDA headers
    # (cusparse.h and friends) under site-packages/nvidia/cu13/include.
    for sub in ("cu13", "cu12"):
        extra = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia", sub, "include")
        if os.path.isdir(extra):
            include_dirs.append(extra)
    define_macros += [("FASTSOFTMAX_WITH_CUDA", "1"), ("FASTSOFTMAX_CUDA_ARCHS", f'"{arch_list}"')]
    nvcc = opt + ["-std=c++20", "-lineinfo", "--expt-relaxed-constexpr"]
    return CUDAExtension(
        "fastsoftmax._C", sources, include_dirs=include_dirs, define_macros=define_macros,
        extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link,
    )


setup(
    name="fastsoftmax",
    version="0.1.0",
    description="Fused CPU/CUDA kernels for softmax recommenders: sampled and full softmax "
    "cross-entropy, negative sampling and exact top-k inner-product retrieval.",
    packages=find_packages(include=["fastsoftmax", "fastsoftmax.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
    python_requires=">=3.9",
    # tqdm: progress bars of `fastsoftmax train`; matplotlib: the plots of compare / folding.
    install_requires=["torch", "numpy", "tqdm", "matplotlib"],
    entry_points={"console_scripts": ["fastsoftmax = fastsoftmax.cli:main"]},
)
