"""Drop-in nn.Module losses over the fused kernels."""
from typing import Optional

import torch
from torch import Tensor, nn

from . import functional as F


class FullSoftmaxLoss(nn.Module):
    """Softmax cross-entropy over the whole item table, like ``nn.CrossEntropyLoss`` on
    ``query @ weight.T (+ bias)`` but without materialising the [B, N] logits.

    Example::

        loss_fn = FullSoftmaxLoss()
        loss = loss_fn(query, item_embedding.weight, targets)   # targets [B] or [B, T], -1 pads

    Args:
        temperature: divides the logits.
        reduction: "mean", "sum" or "none".
    """

    def __init__(self, temperature: float = 1.0, reduction: str = "mean"):
        super().__init__()
        self.temperature = temperature
        self.reduction = reduction

    def forward(self, query: Tensor, weight: Tensor, targets: Tensor, *,
                target_weights: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                sample_weights: Optional[Tensor] = None) -> Tensor:
        return F.full_softmax_cross_entropy(
            query, weight, targets, target_weights=target_weights, bias=bias,
            temperature=self.temperature, sample_weights=sample_weights,
            reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}"
