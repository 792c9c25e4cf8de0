"""Pure-PyTorch references: the same math as the fused ops, materialising every logit.

Used by the tests (in float64) and by the benchmarks (as the eager baseline, in the inputs'
dtype). Readable first; no attempt at speed or memory economy.
"""
from typing import Optional

import torch
from torch import Tensor


def _reduce(per_row: Tensor, weight_total: Tensor, sample_weights: Optional[Tensor],
            reduction: str) -> Tensor:
    if sample_weights is not None:
        per_row = per_row * sample_weights.to(per_row.dtype)
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    counted = (weight_total > 0).to(per_row.dtype)
    if sample_weights is not None:
        counted = counted * sample_weights.to(per_row.dtype)
    count = counted.sum()
    return per_row.sum() / count if count > 0 else per_row.sum()


def _uniform_over_valid(valid: Tensor, dtype: torch.dtype) -> Tensor:
    valid = valid.to(dtype)
    return valid / valid.sum(1, keepdim=True).clamp_min(1.0)


def sampled_softmax_cross_entropy_reference(
    query: Tensor,
    positives: Tensor,
    candidates: Tensor,
    *,
    positive_ids: Optional[Tensor] = None,
    candidate_ids: Optional[Tensor] = None,
    positive_weights: Optional[Tensor] = None,
    positive_log_q: Optional[Tensor] = None,
    candidate_log_q: Optional[Tensor] = None,
    candidate_index: Optional[Tensor] = None,
    temperature: float = 1.0,
    remove_accidental_hits: bool = True,
    sample_weights: Optional[Tensor] = None,
    reduction: str = "mean",
    dtype: Optional[torch.dtype] = torch.float64,
) -> Tensor:
    """DESIGN.md §4 with explicit [B, T + C] (or [B, T + H]) logits. ``dtype`` is the compute
    dtype (float64 for tests; None keeps the inputs' dtype, as an eager baseline would)."""
    dtype = dtype or query.dtype
    q = query.to(dtype)
    pos = positives.to(dtype)
    pos = pos.unsqueeze(1) if pos.dim() == 2 else pos
    cand = candidates.to(dtype)
    batch, num_pos = pos.shape[0], pos.shape[1]
    if positive_ids is not None and positive_ids.dim() == 1:
        positive_ids = positive_ids.unsqueeze(1)
    valid_pos = (positive_ids >= 0) if positive_ids is not None else torch.ones(
        batch, num_pos, dtype=torch.bool, device=q.device)

    s_pos = torch.einsum("bd,btd->bt", q, pos) / temperature
    if positive_log_q is not None:
        s_pos = s_pos - positive_log_q.reshape(batch, num_pos).to(dtype)
    neg_inf = torch.tensor(float("-inf"), dtype=dtype, device=q.device)
    s_pos_masked = torch.where(valid_pos, s_pos, neg_inf)

    if candidate_index is None:
        s_cand = q @ cand.T / temperature                        # [B, C]
        cand_valid = torch.ones_like(s_cand, dtype=torch.bool)
        ids_of_cand = None if candidate_ids is None else candidate_ids.expand(batch, -1)
        if candidate_log_q is not None:
            s_cand = s_cand - candidate_log_q.to(dtype)
    else:
        safe = candidate_index.clamp_min(0)
        # A zero row keeps the gather valid when every index is padding and C == 0.
        gatherable = torch.cat([cand, cand.new_zeros(1, cand.shape[1])])
        s_cand = torch.einsum("bd,bhd->bh", q, gatherable[safe]) / temperature  # [B, H]
        cand_valid = candidate_index >= 0
        ids_of_cand = None if candidate_ids is None else torch.cat(
            [candidate_ids, candidate_ids.new_full((1,), -1)])[safe]
        if candidate_log_q is not None:
            lq = candidate_log_q.to(dtype)
            s_cand = s_cand - (lq[safe] if lq.dim() == 1 else lq)
    if remove_accidental_hits and positive_ids is not None and ids_of_cand is not None:
        hit = ((ids_of_cand.unsqueeze(2) == positive_ids.unsqueeze(1))
               & valid_pos.unsqueeze(1)).any(2)
        cand_valid = cand_valid & ~hit
    s_cand = torch.where(cand_valid, s_cand, neg_inf)

    lse = torch.logsumexp(torch.cat([s_pos_masked, s_cand], dim=1), dim=1)   # [B]
    if positive_weights is None:
        weights = _uniform_over_valid(valid_pos, dtype)
    else:
        weights = positive_weights.reshape(batch, num_pos).to(dtype) * valid_pos
    total = weights.sum(1)
    # Padding has weight 0; where() keeps 0 * -inf out of the sum.
    per_row = -torch.where(weights > 0, weights * (s_pos - lse.unsqueeze(1)),
                           torch.zeros_like(s_pos)).sum(1)
    return _reduce(per_row, total, sample_weights, reduction)


def full_softmax_cross_entropy_reference(
    query: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    target_weights: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    temperature: float = 1.0,
    sample_weights: Optional[Tensor] = None,
    reduction: str = "mean",
    dtype: Optional[torch.dtype] = torch.float64,
) -> Tensor:
    """Cross-entropy of softmax((q @ W.T + bias) / temperature) against weighted targets."""
    dtype = dtype or query.dtype
    logits = query.to(dtype) @ weight.to(dtype).T
    if bias is not None:
        logits = logits + bias.to(dtype)
    logits = logits / temperature
    targets = targets.unsqueeze(1) if targets.dim() == 1 else targets
    valid = targets >= 0
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    picked = torch.gather(log_p, 1, targets.clamp_min(0))
    if target_weights is None:
        weights = _uniform_over_valid(valid, dtype)
    else:
        weights = target_weights.reshape(targets.shape).to(dtype) * valid
    per_row = -(weights * torch.where(valid, picked, torch.zeros_like(picked))).sum(1)
    return _reduce(per_row, weights.sum(1), sample_weights, reduction)


def in_batch_softmax_cross_entropy_reference(query: Tensor, positives: Tensor,
                                             temperature: float = 1.0) -> Tensor:
    """The classic in-batch softmax: row b's positive is positives[b], the others' are its
    negatives (all ids distinct)."""
    logits = query.double() @ positives.double().T / temperature
    labels = torch.arange(query.shape[0], device=query.device)
    return torch.nn.functional.cross_entropy(logits, labels)


# ---- top-k inner-product retrieval (issue 3) ----
from .reference_topk import topk_inner_product_reference  # noqa: E402,F401
