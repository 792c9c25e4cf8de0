"""fastsoftmax: fused CPU/CUDA kernels for training and serving softmax recommenders."""
import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C, ops  # noqa: F401  (loads and registers the native ops)
from .functional import full_softmax_cross_entropy, sampled_softmax_cross_entropy
from .index import ItemIndex
from .losses import FullSoftmaxLoss
from .mining import mine_hard_negatives
from .retrieval import topk_inner_product, topk_inner_product_bf16
from .sampled_loss import SampledSoftmaxLoss

__version__ = "0.1.0"


def build_info() -> dict:
    """How the native extension was built: {'cuda', 'cuda_archs', 'torch', 'openmp'}."""
    return dict(_C.build_info())


__all__ = [
    "FullSoftmaxLoss",
    "ItemIndex",
    "SampledSoftmaxLoss",
    "build_info",
    "full_softmax_cross_entropy",
    "mine_hard_negatives",
    "sampled_softmax_cross_entropy",
    "topk_inner_product",
    "topk_inner_product_bf16",
]
