"""Pure-PyTorch float64 reference of topk_inner_product (tests and benchmarks use it).

Materialises the [B x N] score matrix, so it is for checking only.
"""
from typing import Optional, Tuple

import torch

from .retrieval import Exclusions, exclusions_to_csr

__all__ = ["topk_inner_product_reference"]


def topk_inner_product_reference(query: torch.Tensor, items: torch.Tensor, k: int, *,
                                 bias: Optional[torch.Tensor] = None,
                                 exclude: Optional[Exclusions] = None
                                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """float64 top-k of query [B, d] . items [N, d]^T (+ bias [N]) with the op's rules.

    Returns (scores [B, k] float64, indices [B, k] int64), best first, lower index on ties;
    excluded items and NaN/-inf scores are never returned; short rows are padded with (-inf, -1).
    """
    batch, num_items = query.shape[0], items.shape[0]
    scores = query.double() @ items.double().T
    if bias is not None:
        scores = scores + bias.double()
    scores = torch.where(torch.isnan(scores), torch.full_like(scores, float("-inf")), scores)
    if exclude is not None:
        offsets, indices = exclusions_to_csr(exclude, batch, num_items, query.device)
        rows = torch.repeat_interleave(torch.arange(batch, device=query.device),
                                       offsets[1:] - offsets[:-1])
        scores[rows, indices] = float("-inf")
    # A stable descending sort keeps the lower index first among equal scores.
    values, order = torch.sort(scores, dim=1, descending=True, stable=True)
    values, order = values[:, :k], order[:, :k]
    order = torch.where(values == float("-inf"), torch.full_like(order, -1), order)
    return values, order
