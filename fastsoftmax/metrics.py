"""Top-k ranking metrics (RecBole definitions) and full-corpus evaluation.

For a user with ground-truth set G and ranked list L (length K, best first, -1 = padding):

    hits@k     = |L[:k] ∩ G|
    recall@k   = hits@k / |G|
    precision@k= hits@k / k                      (padding counts as a miss, as in RecBole)
    hit@k      = 1 if hits@k > 0 else 0
    mrr@k      = 1 / rank of the first hit within L[:k]  (0 if none; ranks start at 1)
    ndcg@k     = DCG@k / IDCG@k,  DCG@k = Σ_{r ≤ k, L[r] ∈ G} 1 / log2(r + 1),
                 IDCG@k = Σ_{r ≤ min(|G|, k)} 1 / log2(r + 1)

Users with an empty G have no defined recall or NDCG; per-user results mark them NaN and every
average leaves them out. Ground truth is given either as CSR (``(offsets, indices)``,
``UserItemCSR``) or as a sequence of item sets, one per row of the ranked lists.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .data.csr import as_user_item_csr

__all__ = [
    "METRICS",
    "hit_matrix",
    "ranking_metrics",
    "recall_at_k",
    "ndcg_at_k",
    "hit_rate_at_k",
    "mrr_at_k",
    "precision_at_k",
    "average_metrics",
    "evaluate_ranking",
    "folding_score",
]

METRICS: tuple[str, ...] = ("recall", "ndcg", "hit", "mrr", "precision")

TopkFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _check_topk(topk_indices: torch.Tensor) -> torch.Tensor:
    if not isinstance(topk_indices, torch.Tensor) or topk_indices.dim() != 2:
        raise ValueError("topk_indices must be a [B, K] integer tensor")
    if topk_indices.dtype.is_floating_point or topk_indices.dtype == torch.bool:
        raise ValueError(f"topk_indices must be integer, got {topk_indices.dtype}")
    topk = topk_indices.to(torch.int64)
    # A repeated item would be counted as two hits; the kernels never repeat one, so a repeat
    # means a broken top-k function and is worth failing loudly on.
    if topk.shape[1] > 1:
        ordered = topk.sort(dim=1).values
        repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
        if bool(repeated.any()):
            row = int(repeated.any(dim=1).nonzero()[0])
            raise ValueError(f"topk_indices row {row} repeats an item: {topk[row].tolist()}")
    return topk


def hit_matrix(topk_indices: torch.Tensor, ground_truth) -> tuple[torch.Tensor, torch.Tensor]:
    """Which ranked items are relevant.

    topk_indices: [B, K] int64 item indices, best first; negative entries are padding.
    ground_truth: B rows of relevant items (CSR or sequence of sets); repeats count once.
    Returns (hits [B, K] bool, n_relevant [B] int64 = |G| per row).
    """
    topk = _check_topk(topk_indices)
    batch, _ = topk.shape
    device = topk.device
    gt = as_user_item_csr(ground_truth, batch, name="ground_truth").to(device)
    if gt.nnz and int(gt.indices.min()) < 0:
        raise ValueError("ground_truth item indices must be non-negative")
    gt_rows = gt.row_ids()
    stride = max(int(gt.indices.max()) if gt.nnz else 0, int(topk.max()) if topk.numel() else 0) + 1
    # Encode (row, item) as one int64 so a single sorted search answers every membership query.
    gt_keys = torch.unique(gt_rows * stride + gt.indices)  # sorted, repeats dropped
    n_relevant = torch.bincount(torch.div(gt_keys, stride, rounding_mode="floor"), minlength=batch)
    valid = topk >= 0
    if gt_keys.numel() == 0:
        return torch.zeros_like(valid), n_relevant
    rows = torch.arange(batch, device=device).unsqueeze(1)
    query_keys = rows * stride + topk.clamp(min=0)
    position = torch.searchsorted(gt_keys, query_keys).clamp(max=gt_keys.numel() - 1)
    hits = (gt_keys[position] == query_keys) & valid
    return hits, n_relevant


def _normalise_ks(ks: Sequence[int] | int, width: int | None = None) -> list[int]:
    """ks as a non-empty list of ints in [1, width] (width = top-k list length, if known)."""
    ks = [int(k) for k in ([ks] if isinstance(ks, int) else ks)]
    if not ks:
        raise ValueError("ks must name at least one cut-off")
    for k in ks:
        if k < 1 or (width is not None and k > width):
            raise ValueError(f"every k must be in [1, K={width}] (the top-k width), got {k}")
    return ks


def ranking_metrics(
    topk_indices: torch.Tensor, ground_truth, ks: Sequence[int] = (10, 20), metrics: Sequence[str] = METRICS
) -> dict[str, torch.Tensor]:
    """Per-user metrics for each k.

    topk_indices: [B, K] int64 ranked items, best first (-1 padding); every k must be <= K.
    ground_truth: B rows of relevant items.
    Returns {"recall@10": [B] float64, ...} for each name in ``metrics`` and k in ``ks``;
    users with empty ground truth get NaN.
    """
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metric(s) {sorted(unknown)}; available: {METRICS}")
    hits, n_relevant = hit_matrix(topk_indices, ground_truth)
    ks = _normalise_ks(ks, hits.shape[1])
    width = hits.shape[1]
    device = hits.device
    hits_f = hits.to(torch.float64)
    ranks = torch.arange(1, width + 1, device=device, dtype=torch.float64)  # [K]
    discount = 1.0 / torch.log2(ranks + 1.0)  # [K]
    ideal_dcg = torch.cumsum(discount, 0)  # [K]: IDCG with r relevant items at index r-1
    cum_hits = torch.cumsum(hits_f, 1)  # [B, K]
    cum_dcg = torch.cumsum(hits_f * discount, 1)  # [B, K]
    first_hit = torch.where(hits, ranks.expand_as(hits_f), torch.inf).min(dim=1).values  # [B]
    relevant = n_relevant.to(torch.float64)
    empty = n_relevant == 0
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=device)

    out: dict[str, torch.Tensor] = {}
    for k in ks:
        hits_k = cum_hits[:, k - 1]
        values = {
            "recall": hits_k / relevant.clamp(min=1),
            "precision": hits_k / k,
            "hit": (hits_k > 0).to(torch.float64),
            "mrr": torch.where(first_hit <= k, 1.0 / first_hit, 0.0),
            "ndcg": cum_dcg[:, k - 1] / ideal_dcg[(n_relevant.clamp(min=1, max=k) - 1)],
        }
        for name in metrics:
            out[f"{name}@{k}"] = torch.where(empty, nan, values[name])
    return out


def _one(name: str, topk_indices: torch.Tensor, ground_truth, k: int) -> torch.Tensor:
    return ranking_metrics(topk_indices, ground_truth, (k,), (name,))[f"{name}@{k}"]


def recall_at_k(topk_indices: torch.Tensor, ground_truth, k: int) -> torch.Tensor:
    """[B] float64 Recall@k = hits / |G| (NaN where G is empty)."""
    return _one("recall", topk_indices, ground_truth, k)


def ndcg_at_k(topk_indices: torch.Tensor, ground_truth, k: int) -> torch.Tensor:
    """[B] float64 NDCG@k, binary relevance, IDCG over min(|G|, k) (NaN where G is empty)."""
    return _one("ndcg", topk_indices, ground_truth, k)


def hit_rate_at_k(topk_indices: torch.Tensor, ground_truth, k: int) -> torch.Tensor:
    """[B] float64 HitRate@k: 1 if any of the top k is relevant, else 0 (NaN where G is empty)."""
    return _one("hit", topk_indices, ground_truth, k)


def mrr_at_k(topk_indices: torch.Tensor, ground_truth, k: int) -> torch.Tensor:
    """[B] float64 MRR@k: 1 / rank of the first hit in the top k, else 0 (NaN where G is empty)."""
    return _one("mrr", topk_indices, ground_truth, k)


def precision_at_k(topk_indices: torch.Tensor, ground_truth, k: int) -> torch.Tensor:
    """[B] float64 Precision@k = hits / k (NaN where G is empty)."""
    return _one("precision", topk_indices, ground_truth, k)


def average_metrics(per_user: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean of each per-user metric over users with non-empty ground truth (NaNs skipped)."""
    return {name: float(torch.nanmean(values)) for name, values in per_user.items()}


def _resolve_topk_fn(topk_fn: TopkFn | None) -> TopkFn:
    if topk_fn is not None:
        return topk_fn
    from .retrieval import topk_inner_product

    return topk_inner_product


@torch.no_grad()
def evaluate_ranking(
    user_embeddings: torch.Tensor,
    item_embeddings: torch.Tensor,
    ground_truth,
    exclude=None,
    ks: Sequence[int] = (10, 20),
    topk_fn: TopkFn | None = None,
    batch_size: int = 1024,
    *,
    item_bias: torch.Tensor | None = None,
    metrics: Sequence[str] = METRICS,
) -> dict[str, float]:
    """Rank all items for every user with ground truth and average the metrics.

    user_embeddings: [U, d] query embeddings, row u = user u.
    item_embeddings: [N, d] item embeddings (score = inner product, + item_bias [N] if given).
    ground_truth:    U rows of relevant items (CSR with U rows, or U item sets).
    exclude:         U rows of items never to recommend (e.g. the training items), or None.
    ks:              cut-offs; the top-k function is asked for max(ks) (at most N) items.
    topk_fn:         f(query, items, k, *, bias, exclude) -> (scores [b, k], indices [b, k] int64,
                     -1 padding); default ``fastsoftmax.topk_inner_product``, looked up now.
    batch_size:      users scored per call.

    Returns {"recall@10": mean, ..., "n_users": number of users averaged over}. Users with empty
    ground truth are skipped entirely (never scored).
    """
    if user_embeddings.dim() != 2 or item_embeddings.dim() != 2:
        raise ValueError("user_embeddings and item_embeddings must be 2-D ([U, d] and [N, d])")
    if user_embeddings.shape[1] != item_embeddings.shape[1]:
        raise ValueError(
            f"embedding sizes differ: users {user_embeddings.shape[1]}, items {item_embeddings.shape[1]}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_users, n_items = user_embeddings.shape[0], item_embeddings.shape[0]
    topk_fn = _resolve_topk_fn(topk_fn)
    gt = as_user_item_csr(ground_truth, n_users, name="ground_truth")
    excl = None if exclude is None else as_user_item_csr(exclude, n_users, name="exclude")
    ks = _normalise_ks(ks)
    k_max = max(ks)
    k_call = min(k_max, n_items)
    device = item_embeddings.device

    users = torch.nonzero(gt.row_lengths() > 0).flatten()
    sums: dict[str, torch.Tensor] = {}
    for start in range(0, users.numel(), batch_size):
        rows = users[start : start + batch_size]
        query = user_embeddings[rows.to(user_embeddings.device)]
        batch_exclude = None
        if excl is not None:
            sub = excl.take_rows(rows).to(device)
            batch_exclude = (sub.offsets, sub.indices)
        _, topk = topk_fn(query, item_embeddings, k_call, bias=item_bias, exclude=batch_exclude)
        if tuple(topk.shape) != (rows.numel(), k_call):
            raise ValueError(
                f"topk_fn returned indices of shape {tuple(topk.shape)}, expected {(rows.numel(), k_call)}"
            )
        if k_call < k_max:  # fewer items than the largest k: the rest of the list is padding
            topk = torch.nn.functional.pad(topk, (0, k_max - k_call), value=-1)
        per_user = ranking_metrics(topk, gt.take_rows(rows), ks, metrics)
        for name, values in per_user.items():
            sums[name] = sums.get(name, 0.0) + values.sum().cpu()

    n_evaluated = users.numel()
    result = {name: float(total) / n_evaluated for name, total in sums.items()}
    if n_evaluated == 0:
        result = {f"{m}@{k}": float("nan") for k in ks for m in metrics}
    result["n_users"] = n_evaluated
    return result


def folding_score(topk_indices: torch.Tensor, user_groups: torch.Tensor, item_groups: torch.Tensor) -> float:
    """Share of recommended items from a group other than the user's (higher = more folding).

    topk_indices: [B, K] int64 ranked items, -1 padding (ignored).
    user_groups:  [B] int64 group of each ranked row's user.
    item_groups:  [N] int64 group of every item.
    Returns a float in [0, 1]; NaN when there is no recommended item at all.
    """
    topk = _check_topk(topk_indices)
    user_groups = torch.as_tensor(user_groups, device=topk.device).reshape(-1)
    item_groups = torch.as_tensor(item_groups, device=topk.device).reshape(-1)
    if user_groups.numel() != topk.shape[0]:
        raise ValueError(
            f"user_groups has {user_groups.numel()} entries, topk_indices has {topk.shape[0]} rows"
        )
    valid = topk >= 0
    n_valid = int(valid.sum())
    if n_valid == 0:
        return float("nan")
    recommended_groups = item_groups[topk.clamp(min=0)]
    differs = (recommended_groups != user_groups.unsqueeze(1)) & valid
    return int(differs.sum()) / n_valid
