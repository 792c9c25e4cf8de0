"""Public functions of fastsoftmax: validation, defaults and reductions around the native ops.

Shapes: B queries, d embedding width, T positives per row, C shared candidates, H per-row
candidates, N items in the table. The math is DESIGN.md §4.
"""
from typing import Optional

import torch
from torch import Tensor

from . import ops
from ._validation import (
    FLOAT_DTYPES,
    check_ids_range,
    check_no_nan,
    check_nonnegative_finite,
    check_reduction,
    check_shape,
    check_temperature,
    check_tensor,
)

_IDS = (torch.int64,)


def _as_rows(name: str, value: Optional[Tensor], batch: int, width: int) -> Optional[Tensor]:
    """[B] -> [B, 1]; [B, T] stays. Used for per-positive arguments."""
    if value is None:
        return None
    if value.dim() == 1:
        value = value.unsqueeze(1)
    check_shape(name, value, (batch, width))
    return value


def _default_weights(valid: Optional[Tensor], batch: int, width: int, like: Tensor) -> Tensor:
    """Uniform weights over each row's valid (non-padding) entries: the normalised multi-hot."""
    dtype = ops.acc_dtype(like.dtype)
    if valid is None:
        return torch.full((batch, width), 1.0 / max(width, 1), dtype=dtype, device=like.device)
    valid = valid.to(dtype)
    return valid / valid.sum(1, keepdim=True).clamp_min(1.0)


def _row_coefficients(row_weight_total: Tensor, sample_weights: Optional[Tensor],
                      reduction: str) -> Tensor:
    """Per-row factors c_b such that the reduced loss is sum_b c_b * loss_b.

    ``mean`` divides by the (sample-weighted) number of rows that have at least one positive,
    like ``F.cross_entropy`` with ``ignore_index``; a batch without any such row gives 0.
    """
    dtype = row_weight_total.dtype
    coef = (torch.ones_like(row_weight_total) if sample_weights is None
            else sample_weights.to(dtype))
    if reduction == "sum":
        return coef
    count = (coef * (row_weight_total > 0).to(dtype)).sum()
    return coef / count.clamp_min(torch.finfo(dtype).tiny)


def _reduce(per_row: Tensor, row_weight_total: Tensor, sample_weights: Optional[Tensor],
            reduction: str) -> Tensor:
    """Applies sample weights and the reduction to per-row losses [B]."""
    if reduction == "none":
        return per_row if sample_weights is None else per_row * sample_weights.to(per_row.dtype)
    return (per_row * _row_coefficients(row_weight_total, sample_weights, reduction)).sum()


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _check_sample_weights(sample_weights: Optional[Tensor], batch: int, device) -> None:
    if sample_weights is None:
        return
    check_tensor("sample_weights", sample_weights, dims=(1,), dtypes=FLOAT_DTYPES, device=device)
    check_shape("sample_weights", sample_weights, (batch,))
    check_nonnegative_finite("sample_weights", sample_weights)


def sampled_softmax_cross_entropy(
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
) -> Tensor:
    """Sampled softmax cross-entropy over each row's positives plus candidate negatives, fused.

    For row b with positives (e_bt, ids a_bt, weights w_bt) and candidates (c_j, ids u_j)::

        s+_bt = q_b·e_bt / temperature - log Q+_bt
        s_bj  = q_b·c_j  / temperature - log Q_j      (-inf where u_j is one of row b's a_bt)
        loss_b = -sum_t w_bt (s+_bt - log(sum_t exp(s+_bt) + sum_j exp(s_bj)))

    The [B, C] logits are never materialised (forward and backward scan the candidates in tiles).

    Args:
        query: [B, d] query embeddings (float16/bfloat16/float32/float64).
        positives: [B, d] or [B, T, d] embeddings of each row's positives.
        candidates: [C, d] negatives shared by the batch. For in-batch negatives pass the batch's
            positives (with ``positive_ids`` and ``candidate_ids``, each row's own copy is
            removed as an accidental hit).
        positive_ids: [B] or [B, T] int64 item ids of the positives; -1 marks padding.
        candidate_ids: [C] int64 item ids of the candidates; with ``positive_ids`` it enables
            accidental-hit removal.
        positive_weights: [B] or [B, T] non-negative weights (the normalised multi-hot p; not
            renormalised). Default: uniform over each row's valid positives.
        positive_log_q: [B] or [B, T] log expected counts of the positives (logQ correction).
        candidate_log_q: [C], or [B, H] with ``candidate_index`` ([C] is then gathered).
        candidate_index: [B, H] int64 indices into ``candidates``: a per-row candidate subset
            (e.g. mined hard negatives); -1 marks padding.
        temperature: divides the inner products; > 0.
        remove_accidental_hits: mask candidates whose id equals one of the row's positive ids.
        sample_weights: [B] non-negative per-row weights.
        reduction: "mean" (over rows with a positive, sample-weighted), "sum" or "none".

    Returns:
        A scalar, or [B] for ``reduction="none"``; float32 for float16/bfloat16/float32 inputs,
        float64 for float64. Gradients flow to ``query``, ``positives`` and ``candidates``.
    """
    check_tensor("query", query, dims=(2,), dtypes=FLOAT_DTYPES)
    device, batch, dim = query.device, query.shape[0], query.shape[1]
    if dim == 0:
        raise ValueError("query has an empty embedding dimension (d = 0)")
    check_tensor("positives", positives, dims=(2, 3), dtypes=(query.dtype,), device=device)
    check_tensor("candidates", candidates, dims=(2,), dtypes=(query.dtype,), device=device)
    positives3 = positives.unsqueeze(1) if positives.dim() == 2 else positives
    if positives3.shape[0] != batch or positives3.shape[2] != dim:
        raise ValueError(f"positives must be [B, d] or [B, T, d] with B = {batch}, d = {dim}; "
                         f"got shape {tuple(positives.shape)}")
    if candidates.shape[1] != dim:
        raise ValueError(f"candidates must be [C, d] with d = {dim}; got shape "
                         f"{tuple(candidates.shape)}")
    num_pos, num_cand = positives3.shape[1], candidates.shape[0]
    temperature = check_temperature(temperature)
    check_reduction(reduction)
    _check_sample_weights(sample_weights, batch, device)

    if positive_ids is not None:
        check_tensor("positive_ids", positive_ids, dims=(1, 2), dtypes=_IDS, device=device)
        positive_ids = _as_rows("positive_ids", positive_ids, batch, num_pos)
        check_ids_range("positive_ids", positive_ids, None)
    if candidate_ids is not None:
        check_tensor("candidate_ids", candidate_ids, dims=(1,), dtypes=_IDS, device=device)
        check_shape("candidate_ids", candidate_ids, (num_cand,))
    if positive_weights is not None:
        check_tensor("positive_weights", positive_weights, dims=(1, 2), dtypes=FLOAT_DTYPES,
                     device=device)
        positive_weights = _as_rows("positive_weights", positive_weights, batch, num_pos)
        check_nonnegative_finite("positive_weights", positive_weights)
        positive_weights = positive_weights.to(ops.acc_dtype(query.dtype))
        if positive_ids is not None:
            positive_weights = positive_weights.masked_fill(positive_ids < 0, 0.0)
    else:
        valid = None if positive_ids is None else positive_ids >= 0
        positive_weights = _default_weights(valid, batch, num_pos, query)
    if positive_log_q is not None:
        check_tensor("positive_log_q", positive_log_q, dims=(1, 2), dtypes=FLOAT_DTYPES,
                     device=device)
        positive_log_q = _as_rows("positive_log_q", positive_log_q, batch, num_pos)
        check_no_nan("positive_log_q", positive_log_q)
    if candidate_index is not None:
        check_tensor("candidate_index", candidate_index, dims=(2,), dtypes=_IDS, device=device)
        if candidate_index.shape[0] != batch:
            raise ValueError(f"candidate_index must be [B, H] with B = {batch}; got shape "
                             f"{tuple(candidate_index.shape)}")
        check_ids_range("candidate_index", candidate_index, num_cand)
    if candidate_log_q is not None:
        check_tensor("candidate_log_q", candidate_log_q, dims=(1, 2), dtypes=FLOAT_DTYPES,
                     device=device)
        check_no_nan("candidate_log_q", candidate_log_q)
        if candidate_index is None:
            check_shape("candidate_log_q", candidate_log_q, (num_cand,))
        elif candidate_log_q.dim() == 1:
            check_shape("candidate_log_q", candidate_log_q, (num_cand,))
            candidate_log_q = candidate_log_q[candidate_index.clamp_min(0)]
        else:
            check_shape("candidate_log_q", candidate_log_q, tuple(candidate_index.shape))

    args = (query, positives3, candidates, positive_ids, candidate_ids, positive_weights,
            positive_log_q, candidate_log_q, candidate_index)
    if reduction != "none" and _needs_grad(query, positives, candidates):
        # Training step of a reduced loss: forward and backward in one fused pass.
        row_coef = _row_coefficients(positive_weights.sum(1), sample_weights, reduction)
        loss, *_ = torch.ops.fastsoftmax.sampled_softmax_ce_fused(
            *args, row_coef, temperature, bool(remove_accidental_hits))
        return loss
    per_row, _ = torch.ops.fastsoftmax.sampled_softmax_ce(*args, temperature,
                                                          bool(remove_accidental_hits))
    return _reduce(per_row, positive_weights.sum(1), sample_weights, reduction)


def full_softmax_cross_entropy(
    query: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    target_weights: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    temperature: float = 1.0,
    sample_weights: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Softmax cross-entropy over every row of the item table, without the [B, N] logits.

    ``loss_b = sum_t w_bt (logsumexp_j s_bj - s_{b, y_bt})`` with
    ``s_bj = (q_b·W_j + bias_j) / temperature``. Equals
    ``F.cross_entropy(q @ W.T + bias, y)`` for one target per row, and the cross-entropy against
    the normalised multi-hot vector for several.

    Args:
        query: [B, d].
        weight: [N, d] the whole item table (the softmax weights).
        targets: [B] or [B, T] int64 item ids in [0, N); -1 marks padding.
        target_weights: [B] or [B, T] non-negative weights; default uniform over valid targets.
        bias: [N] optional per-item bias (same dtype as weight).
        temperature: > 0.
        sample_weights: [B] non-negative per-row weights.
        reduction: "mean" (over rows with a target, sample-weighted), "sum" or "none".

    Returns:
        A scalar (or [B]) in float32 (float64 for float64 inputs). Gradients flow to ``query``,
        ``weight`` and ``bias``.
    """
    check_tensor("query", query, dims=(2,), dtypes=FLOAT_DTYPES)
    device, batch, dim = query.device, query.shape[0], query.shape[1]
    if dim == 0:
        raise ValueError("query has an empty embedding dimension (d = 0)")
    check_tensor("weight", weight, dims=(2,), dtypes=(query.dtype,), device=device)
    if weight.shape[1] != dim:
        raise ValueError(f"weight must be [N, d] with d = {dim}; got shape {tuple(weight.shape)}")
    num_items = weight.shape[0]
    check_tensor("targets", targets, dims=(1, 2), dtypes=_IDS, device=device)
    if targets.shape[0] != batch:
        raise ValueError(f"targets must be [B] or [B, T] with B = {batch}; got shape "
                         f"{tuple(targets.shape)}")
    targets = targets.unsqueeze(1) if targets.dim() == 1 else targets
    check_ids_range("targets", targets, num_items)
    num_targets = targets.shape[1]
    if bias is not None:
        check_tensor("bias", bias, dims=(1,), dtypes=(weight.dtype,), device=device)
        check_shape("bias", bias, (num_items,))
    temperature = check_temperature(temperature)
    check_reduction(reduction)
    _check_sample_weights(sample_weights, batch, device)
    if target_weights is not None:
        check_tensor("target_weights", target_weights, dims=(1, 2), dtypes=FLOAT_DTYPES,
                     device=device)
        target_weights = _as_rows("target_weights", target_weights, batch, num_targets)
        check_nonnegative_finite("target_weights", target_weights)
        target_weights = target_weights.to(ops.acc_dtype(query.dtype)).masked_fill(targets < 0, 0.0)
    else:
        target_weights = _default_weights(targets >= 0, batch, num_targets, query)

    per_row, _ = torch.ops.fastsoftmax.full_softmax_ce(query, weight, bias, targets,
                                                       target_weights, temperature)
    return _reduce(per_row, target_weights.sum(1), sample_weights, reduction)
