"""Pure-PyTorch references: the same math as the fused ops, materialising every logit.

Used by the tests (in float64) and by the benchmarks (as the eager baseline, in the inputs'
dtype). Readable first; no attempt at speed or memory economy.
"""
import math
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


# ------------------------------------------------------------------------- hard-negative mining

_PHILOX_MUL = (0xD2511F53, 0xCD9E8D57)
_PHILOX_WEYL = (0x9E3779B9, 0xBB67AE85)
_U32 = 0xFFFFFFFF


def philox4x32_10(counter, key):
    """Philox4x32-10 (Salmon et al. 2011) on numpy arrays: counter is four broadcastable arrays
    of 32-bit words, key two ints; returns four uint64 arrays holding 32-bit words. The same
    function as csrc/common/philox.h, written independently for the tests."""
    import numpy as np

    c = [np.asarray(w, dtype=np.uint64) & np.uint64(_U32) for w in counter]
    k0, k1 = int(key[0]) & _U32, int(key[1]) & _U32
    mask = np.uint64(_U32)
    for _ in range(10):
        p0 = np.uint64(_PHILOX_MUL[0]) * c[0]
        p1 = np.uint64(_PHILOX_MUL[1]) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0), p1 & mask,
             (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1), p0 & mask]
        k0 = (k0 + _PHILOX_WEYL[0]) & _U32
        k1 = (k1 + _PHILOX_WEYL[1]) & _U32
    return c


def philox_uniforms(seed: int, offset: int, rows: int, draws: int) -> Tensor:
    """[rows, draws] float64 uniforms in [0, 1): draw h of row b is the 53-bit double built from
    words 2(h % 2), 2(h % 2) + 1 of Philox block (h // 2, b, offset lo, offset hi) under key seed
    (the stream layout of csrc/common/philox.h)."""
    import numpy as np

    seed, offset = seed % 2**64, offset % 2**64
    b = np.arange(rows, dtype=np.uint64)[:, None]
    h = np.arange(draws, dtype=np.uint64)[None, :]
    words = philox4x32_10((h >> np.uint64(1), b, offset & _U32, offset >> 32),
                          (seed & _U32, seed >> 32))
    words = np.stack(np.broadcast_arrays(*words))              # [4, rows, draws]
    w = ((h & np.uint64(1)) * np.uint64(2)).astype(np.int64)   # [1, draws]
    hi = np.take_along_axis(words, np.broadcast_to(w, (1, rows, draws)), 0)[0]
    lo = np.take_along_axis(words, np.broadcast_to(w + 1, (1, rows, draws)), 0)[0]
    bits = ((hi << np.uint64(32)) | lo) >> np.uint64(11)
    return torch.from_numpy(bits.astype(np.float64) * 2.0**-53)


def alias_sample_reference(alias_prob: Tensor, alias: Tensor, num: int, seed: int,
                           offset: int) -> Tensor:
    """The ids of ``torch.ops.fastsoftmax.alias_sample``: draw i reads Philox block
    (i mod 2^32, i // 2^32, offset lo, offset hi) under key seed; words 0-1 give the 53-bit
    uniform u picking bucket k = floor(u N), words 2-3 the coin; k is kept when
    coin < alias_prob[k], else alias[k]."""
    import numpy as np

    seed, offset = seed % 2**64, offset % 2**64
    i = np.arange(num, dtype=np.uint64)
    words = philox4x32_10((i & np.uint64(_U32), i >> np.uint64(32), offset & _U32, offset >> 32),
                          (seed & _U32, seed >> 32))
    words = [np.broadcast_to(w, i.shape) for w in words]
    u = (((words[0] << np.uint64(32)) | words[1]) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    coin = (((words[2] << np.uint64(32)) | words[3]) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    n = alias_prob.numel()
    bucket = torch.from_numpy(np.minimum((u * n).astype(np.int64), n - 1))
    prob = alias_prob.detach().cpu().double()[bucket]
    keep = torch.from_numpy(coin) < prob
    return torch.where(keep, bucket, alias.detach().cpu()[bucket])


def mine_hard_negatives_reference(
    query: Tensor,
    pool: Tensor,
    num: int,
    *,
    pool_ids: Optional[Tensor] = None,
    exclude_ids: Optional[Tensor] = None,
    mode: str = "sample",
    temperature: float = 1.0,
    pool_log_q: Optional[Tensor] = None,
    seed: int = 0,
    offset: int = 0,
    dtype: Optional[torch.dtype] = torch.float64,
):
    """fastsoftmax.mine_hard_negatives with the [B, P] scores materialised: masked scores, then
    a stable descending sort (topk) or inverse-CDF sampling with the op's Philox uniforms
    (sample). Returns (index [B, num] int64, log_q [B, num], scores [B, P] masked with -inf)."""
    dtype = dtype or query.dtype
    batch, size = query.shape[0], pool.shape[0]
    scores = query.to(dtype) @ pool.to(dtype).T / temperature            # [B, P]
    if exclude_ids is not None:
        ex = exclude_ids.reshape(batch, -1)
        ids = pool_ids if pool_ids is not None else torch.arange(size, device=pool.device)
        hit = ((ids.view(1, size, 1) == ex.unsqueeze(1)) & (ex >= 0).unsqueeze(1)).any(2)
        scores = scores.masked_fill(hit, float("-inf"))
    eligible = scores > float("-inf")
    lq = (torch.zeros(size, dtype=dtype, device=query.device) if pool_log_q is None
          else pool_log_q.to(dtype))
    inf = torch.tensor(float("inf"), dtype=dtype, device=query.device)
    if size == 0:
        return (torch.full((batch, num), -1, device=query.device),
                torch.full((batch, num), float("inf"), dtype=dtype, device=query.device), scores)
    if mode == "topk":
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :num]
        valid = eligible.gather(1, order)
        index = torch.where(valid, order, -1)
        log_q = torch.where(valid, lq[order], inf)
        return index, log_q, scores
    if mode != "sample":
        raise ValueError(f"mode must be 'sample' or 'topk', got {mode!r}")
    log_p = scores - torch.logsumexp(scores, dim=1, keepdim=True)
    cdf = torch.cumsum(log_p.exp(), dim=1)
    u = philox_uniforms(seed, offset, batch, num).to(device=query.device, dtype=dtype)
    picked = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True)  # first cdf > u
    positions = torch.arange(size, device=query.device).expand(batch, size)
    last = torch.where(eligible, positions, -1).amax(1, keepdim=True)
    picked = torch.where(picked >= size, last, picked)   # u past the rounded total
    valid = (picked >= 0) & eligible.any(1, keepdim=True)
    safe = picked.clamp_min(0)
    log_q = lq[safe] + math.log(num) + log_p.gather(1, safe)
    return torch.where(valid, safe, -1), torch.where(valid, log_q, inf), scores
