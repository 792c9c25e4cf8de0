"""fastsoftmax: fused CPU/CUDA kernels for training and serving softmax recommenders."""
import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C, ops  # noqa: F401  (loads and registers the native ops)
from .functional import full_softmax_cross_entropy, sampled_softmax_cross_entropy
from .losses import FullSoftmaxLoss
from .mining import mine_hard_negatives

__version__ = "0.1.0"


def build_info() -> dict:
    """How the native extension was built: {'cuda', 'cuda_archs', 'torch', 'openmp'}."""
    return dict(_C.build_info())


__all__ = [
    "FullSoftmaxLoss",
    "build_info",
    "full_softmax_cross_entropy",
    "sampled_softmax_cross_entropy",
]

# ---- top-k inner-product retrieval (issue 3) ----
from .index import ItemIndex  # noqa: E402
from .reference_topk import topk_inner_product_reference  # noqa: E402,F401
from .retrieval import topk_inner_product, topk_inner_product_bf16  # noqa: E402,F401

__all__ += [
    "ItemIndex",
    "topk_inner_product",
    "topk_inner_product_bf16",
    "topk_inner_product_reference",
]
