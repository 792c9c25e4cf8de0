"""SampledSoftmaxLoss: the drop-in sampled softmax loss of a softmax / two-tower recommender.

One module draws the negatives (shared sampled ones, optionally per-row hard ones), embeds
every item it touches exactly once, applies the logQ correction and calls the fused
``sampled_softmax_cross_entropy`` kernel (DESIGN.md §4)::

    loss_fn = SampledSoftmaxLoss(num_items, num_negatives=1024, sampler="log_uniform")
    loss = loss_fn(query, item_embeddings, positive_ids)   # positive_ids [B] or [B, T], -1 pads

The estimator (what the logQ correction makes it converge to)
-------------------------------------------------------------
Row b has query q_b, positives a_bt (weights w_bt) and scores s_i = q_b·e_i / τ. The full
softmax normaliser is Z_b = Σ_i exp(s_i); the loss estimates it from draws. A draw j of item
u_j whose *expected count* in the draw is E_j enters as exp(s_j − log E_j); summing over the
draws estimates Σ_i exp(s_i) without bias (importance sampling), and the kernel removes the
draws that hit one of the row's positives.

* Samplers independent of the batch ("uniform", "log_uniform", "unigram"): the positive is
  not one of the draws. It enters the normaliser once, *uncorrected*, and the corrected
  non-hit draws estimate the rest::

      Ẑ_b = Σ_t exp(s⁺_bt) + Σ_{j not a hit} exp(s_j − log S q_j),   E[Ẑ_b] = Z_b.

  So the sampled gradient converges to the full-softmax gradient as S grows (the table in
  tests/test_estimator_consistency.py). TensorFlow's ``sampled_softmax_loss`` also subtracts
  log(S q_pos) from the positive logit; that weighs the positive by 1/(S q_pos) instead of 1
  in Ẑ and, as S → ∞, removes it from the normaliser altogether, a bias of order p(pos | q)
  that the same table shows.
* "in_batch": the candidates are the batch's positives, so row b's own positive *is* one of
  the draws: it carries its log expected count under that draw (``positive_log_q``, from the
  sampler's counts or streaming estimate) and its own copy among the candidates is removed as
  an accidental hit (DESIGN.md §4, Yi et al. 2019).
* "mixed": in-batch positives plus S draws from another sampler; every candidate and every
  positive carries log(n p_i + S q_i), its expected count in the union (the sampler's
  convention), the positive again being one of the draws.

Duplicates: a shared id drawn k times is scored once with log E − log k (identical to k
copies, cheaper: log-uniform draws of the popular ids repeat hundreds of times).

Hard negatives (``hard_negatives = H > 0``)
-------------------------------------------
A pool of ``hard_negative_pool`` = P ids is drawn from the sampler (from its ``other`` part for
"mixed"), and ``fastsoftmax.mine_hard_negatives`` picks H pool entries per row: in "sample" mode
with probability π_b(k) ∝ exp(q_b·p_k / τ_h) (excluding the row's positives), returning
log_q = log(P q_k) + log H + log π_b(k), the log expected count of that draw in the two-stage
proposal; so the H mined negatives alone are again an unbiased estimate of the normaliser.
"topk" mode takes the H best pool entries: deterministic and biased (no proposal to correct
for), the usual "hardest negatives" heuristic.

Combining them with the M shared draws: both sets estimate the same normaliser, so they are
mixed with weights proportional to their sizes, λ = M / (M + H) for the shared set and
1 − λ for the mined one; in log-count terms every shared draw (and, for in-batch/mixed, the
positive) gets log E + log((M + H) / M) and every mined draw log E_mined + log((M + H) / H).
The estimate stays unbiased and reduces to either estimator alone when the other set is empty
(``num_negatives=0`` gives hard negatives only). Without ``logq_correction`` the row's softmax
is simply over positives ∪ shared ∪ mined, uncorrected.

Kernel layout: the shared draws go through the kernel's shared-candidate path (tiled matmuls);
the mined ones are appended to each row's positives with weight 0. Per DESIGN.md §4 every
positive slot enters Z_b (Σ_t exp(s⁺_bt)) while only weighted slots enter the numerator, so a
weight-0 slot *is* a per-row negative, scored against its own row only, with its log_q as
``positive_log_q``. Their ids passed to the kernel are ``num_items`` (no item has that id), so
they never mask a shared draw of the same item as an accidental hit (the miner already
excludes the row's positives). This keeps the [B × M] part on the matmul path instead of a
per-row gather of M + H candidates; tests/test_sampled_loss.py checks the result against the
float64 reference fed with per-row ``candidate_index`` over the block [shared; pool].

Embeddings and gradients
------------------------
``item_embeddings`` is an ``nn.Embedding``, an [N, d] tensor, or a callable ids → [n, d] (an
item tower). The unique ids of positives ∪ shared draws ∪ pool are embedded in one call and
everything else indexes that [U, d] block, so an ``nn.Embedding(sparse=True)`` gets a sparse
gradient of U rows and an item tower runs once on U ids. With a dense table (an
``nn.Embedding`` without ``sparse=True`` or a plain tensor) autograd allocates a dense [N, d]
gradient for the gather (N · d · 4 bytes per step, 512 MiB for 1M × 128 in fp32), and a dense
optimizer then updates every row: use ``sparse=True`` with ``torch.optim.SGD``/``SparseAdam``
for large tables.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from . import functional as F
from ._validation import FLOAT_DTYPES, check_temperature
from .sampling import (
    SAMPLER_NAMES,
    InBatchSampler,
    MixedSampler,
    Sampler,
    _FixedDistributionSampler,
    make_sampler,
)

__all__ = ["SampledSoftmaxLoss", "NegativeDraw"]

HARD_NEGATIVE_MODES = ("sample", "topk")
ItemEmbeddings = Union[nn.Embedding, Tensor, Callable[[Tensor], Tensor]]


@dataclass
class NegativeDraw:
    """What one forward call drew (``loss_fn(..., return_draw=True)``), as fed to the kernel.

    Shapes: M shared draws (duplicates kept, in-batch padding dropped), P pool ids, B rows,
    T positives per row, H hard negatives per row. Log expected counts are the values the
    logits were corrected with (mixture weights for hard negatives included); None without
    ``logq_correction``.

    Attributes:
        negative_ids: [M] int64 shared candidate ids, in draw order.
        negative_log_q: [M] float32 or None.
        positive_log_q: [B, T] float32 or None (None also for samplers whose draws never
            contain the positive: the positive is then uncorrected, see the module docstring).
        pool_ids, pool_log_q: [P] int64 / float32 (the pool's own log expected count, as passed
            to the miner), or None without hard negatives.
        hard_index: [B, H] int64 indices into ``pool_ids`` (-1: none), or None.
        hard_ids: [B, H] int64 item ids of the mined negatives (-1: none), or None.
        hard_log_q: [B, H] float32 or None.
    """

    negative_ids: Tensor
    negative_log_q: Optional[Tensor]
    positive_log_q: Optional[Tensor]
    pool_ids: Optional[Tensor] = None
    pool_log_q: Optional[Tensor] = None
    hard_index: Optional[Tensor] = None
    hard_ids: Optional[Tensor] = None
    hard_log_q: Optional[Tensor] = None


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _mine_hard_negatives():
    """fastsoftmax.mine_hard_negatives, looked up at call time (it may land after this module)."""
    import fastsoftmax

    mine = getattr(fastsoftmax, "mine_hard_negatives", None)
    if mine is None:
        raise RuntimeError(
            "hard_negatives > 0 needs fastsoftmax.mine_hard_negatives, which this build of "
            "fastsoftmax does not provide; set hard_negatives=0 or install a build with "
            "hard-negative mining")
    return mine


def _merge_duplicates(ids: Tensor, log_q: Optional[Tensor]):
    """Unique shared ids with their combined log weight: k draws of one id with log counts
    l_1..l_k contribute Σ exp(s − l_i) = exp(s − L), L = −log Σ exp(−l_i) (= l − log k when
    the l_i are equal, as for every library sampler). Without a correction l_i = 0.

    ids: [M] int64 -> (unique ids [U] sorted, L [U] float64, inverse [M] into the unique ids).
    L stays in float64 so that merging adds no rounding of its own (the kernel casts it to its
    accumulation dtype).
    """
    uniq, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    if log_q is None:
        return uniq, -torch.log(counts.to(torch.float64)), inverse
    neg = -log_q.to(torch.float64)
    peak = torch.full(uniq.shape, -math.inf, dtype=torch.float64, device=ids.device)
    peak = peak.scatter_reduce(0, inverse, neg, reduce="amax")
    total = torch.zeros_like(peak).index_add_(0, inverse, torch.exp(neg - peak[inverse]))
    return uniq, -(peak + torch.log(total)), inverse


class SampledSoftmaxLoss(nn.Module):
    """Sampled softmax cross-entropy with logQ correction, accidental-hit removal and optional
    hard negatives, over an item table or item tower (see the module docstring for the math).

    Example::

        table = nn.Embedding(num_items, d, sparse=True)
        loss_fn = SampledSoftmaxLoss(num_items, num_negatives=1024, sampler="log_uniform",
                                     hard_negatives=64, hard_negative_pool=4096, seed=0)
        loss = loss_fn(query_tower(x), table, positive_ids)       # [B] or [B, T] ids, -1 pads
        loss.backward()

    Args:
        num_items: N, ids lie in [0, N).
        num_negatives: M shared draws per batch (for "mixed": draws from its other sampler in
            addition to the in-batch positives; ignored by "in_batch"). 0 is allowed only with
            hard_negatives > 0 (hard negatives alone).
        sampler: "log_uniform" (ids sorted by decreasing popularity), "uniform", "unigram"
            (needs ``counts``), "in_batch", "mixed", or a ``fastsoftmax.sampling.Sampler``.
            It is a submodule: a streaming frequency estimator's state is in the state_dict.
        hard_negatives: H mined negatives per row (0: none). Needs
            ``fastsoftmax.mine_hard_negatives`` and a sampler that draws ids (not "in_batch").
        hard_negative_pool: P pool ids drawn per batch to mine from (>= H).
        hard_negative_mode: "sample" (π ∝ exp(score / τ_h), logQ-corrected, unbiased) or
            "topk" (the H best pool entries).
        temperature: τ, divides every inner product.
        logq_correction: subtract the log expected counts (see the module docstring).
        remove_accidental_hits: drop shared draws equal to one of the row's positives.
        counts: [N] item counts for "unigram" (and the in-batch probabilities of "in_batch" /
            "mixed"; without them those use a StreamingFrequencyEstimator).
        sampler_options: extra keyword arguments of ``fastsoftmax.sampling.make_sampler``
            (unique, distortion, other, num_buckets, alpha).
        hard_negative_temperature: τ_h of the miner; default ``temperature`` (π_b is then the
            model's own softmax restricted to the pool).
        reduction: "mean" (over rows with a positive), "sum" or "none".
        seed: seeds the module's own CPU generator (advanced by every call, so a fresh module
            with the same seed replays the same sequence of draws). Without it, draws use
            torch's default generator unless ``forward`` gets ``generator`` or ``seed``.
    """

    def __init__(self, num_items: int, num_negatives: int = 1024,
                 sampler: Union[str, Sampler] = "log_uniform", hard_negatives: int = 0,
                 hard_negative_pool: int = 4096, hard_negative_mode: str = "sample",
                 temperature: float = 1.0, logq_correction: bool = True,
                 remove_accidental_hits: bool = True, *, counts=None,
                 sampler_options: Optional[dict] = None,
                 hard_negative_temperature: Optional[float] = None, reduction: str = "mean",
                 seed: Optional[int] = None):
        super().__init__()
        self.num_items = _check_count("num_items", num_items, 1)
        num_negatives = _check_count("num_negatives", num_negatives, 0)
        self.hard_negatives = _check_count("hard_negatives", hard_negatives, 0)
        self.hard_negative_pool = _check_count("hard_negative_pool", hard_negative_pool, 1)
        if self.hard_negatives and self.hard_negative_pool < self.hard_negatives:
            raise ValueError(f"hard_negative_pool must be >= hard_negatives "
                             f"({self.hard_negatives}), got {self.hard_negative_pool}")
        if hard_negative_mode not in HARD_NEGATIVE_MODES:
            raise ValueError(f"hard_negative_mode must be one of {HARD_NEGATIVE_MODES}, got "
                             f"{hard_negative_mode!r}")
        self.hard_negative_mode = hard_negative_mode
        self.temperature = check_temperature(temperature)
        self.hard_negative_temperature = (self.temperature if hard_negative_temperature is None
                                          else check_temperature(hard_negative_temperature))
        self.logq_correction = bool(logq_correction)
        self.remove_accidental_hits = bool(remove_accidental_hits)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction = reduction

        if isinstance(sampler, str):
            if sampler not in SAMPLER_NAMES:
                raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLER_NAMES} "
                                 "or a fastsoftmax.sampling.Sampler")
            options = dict(sampler_options or {})
            if sampler == "mixed":
                options.setdefault("num_samples", num_negatives)
            sampler = make_sampler(sampler, self.num_items, counts, **options)
        elif isinstance(sampler, Sampler):
            if counts is not None or sampler_options:
                raise ValueError("counts and sampler_options apply to a sampler given by name, "
                                 "not to a Sampler object")
        else:
            raise TypeError(f"sampler must be a name in {SAMPLER_NAMES} or a "
                            f"fastsoftmax.sampling.Sampler, got {type(sampler).__name__}")
        if not isinstance(sampler, (_FixedDistributionSampler, InBatchSampler, MixedSampler)):
            raise TypeError(f"sampler {type(sampler).__name__} is not supported: use a uniform, "
                            "log-uniform, unigram, in-batch or mixed sampler")
        fixed = sampler.other if isinstance(sampler, MixedSampler) else sampler
        if isinstance(fixed, _FixedDistributionSampler) and fixed.num_items != self.num_items:
            raise ValueError(f"sampler draws from {fixed.num_items} items but num_items is "
                             f"{self.num_items}")
        self.sampler = sampler  # a submodule: its buffers are in this module's state_dict

        draws_ids = not isinstance(sampler, InBatchSampler)
        if draws_ids and num_negatives == 0 and self.hard_negatives == 0:
            raise ValueError("num_negatives must be > 0 (0 is allowed only with "
                             "hard_negatives > 0)")
        if self.hard_negatives and not draws_ids:
            raise ValueError("hard_negatives > 0 needs a sampler that draws a pool of ids; the "
                             "'in_batch' sampler draws none (use 'mixed' or a fixed sampler)")
        if self.hard_negatives and isinstance(fixed, _FixedDistributionSampler) \
                and fixed.unique and self.hard_negative_pool > fixed.support:
            raise ValueError(f"hard_negative_pool={self.hard_negative_pool} unique ids requested "
                             f"but the sampler has only {fixed.support} items")
        self.num_negatives = num_negatives
        self._generator = None if seed is None else torch.Generator().manual_seed(
            _check_count("seed", seed, 0))

    # ------------------------------------------------------------------------------- helpers

    def _resolve_generator(self, generator, seed) -> Optional[torch.Generator]:
        if generator is not None and seed is not None:
            raise ValueError("pass either generator or seed, not both")
        if seed is not None:
            return torch.Generator().manual_seed(_check_count("seed", seed, 0))
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise TypeError(f"generator must be a torch.Generator, got "
                                f"{type(generator).__name__}")
            return generator
        return self._generator

    def _check_inputs(self, query: Tensor, positive_ids: Tensor) -> Tensor:
        if not isinstance(query, Tensor):
            raise TypeError(f"query must be a torch.Tensor, got {type(query).__name__}")
        if query.dim() != 2 or query.shape[1] == 0:
            raise ValueError(f"query must be [B, d] with d > 0, got shape {tuple(query.shape)}")
        if query.dtype not in FLOAT_DTYPES:
            raise TypeError(f"query must be a floating tensor, got {query.dtype}")
        if not isinstance(positive_ids, Tensor):
            raise TypeError(f"positive_ids must be a torch.Tensor, got "
                            f"{type(positive_ids).__name__}")
        if positive_ids.dtype != torch.int64:
            raise TypeError(f"positive_ids must be int64, got {positive_ids.dtype}")
        if positive_ids.dim() not in (1, 2) or positive_ids.shape[0] != query.shape[0]:
            raise ValueError(f"positive_ids must be [B] or [B, T] with B = {query.shape[0]}, got "
                             f"shape {tuple(positive_ids.shape)}")
        if positive_ids.device != query.device:
            raise ValueError(f"positive_ids is on {positive_ids.device} but query is on "
                             f"{query.device}")
        ids = positive_ids.unsqueeze(1) if positive_ids.dim() == 1 else positive_ids
        if ids.numel():
            lo, hi = int(ids.min()), int(ids.max())
            if lo < -1 or hi >= self.num_items:
                raise ValueError(f"positive_ids must lie in [0, {self.num_items}) (-1 marks "
                                 f"padding); found {lo if lo < -1 else hi}")
        return ids

    def _embed(self, item_embeddings: ItemEmbeddings, ids: Tensor, query: Tensor) -> Tensor:
        """Embeds the unique ids [U] once: -> [U, d] in query's dtype and device."""
        d = query.shape[1]
        if isinstance(item_embeddings, nn.Embedding):
            table = item_embeddings.weight
            self._check_table("item_embeddings.weight", table, query)
            rows = item_embeddings(ids)
        elif isinstance(item_embeddings, Tensor):
            self._check_table("item_embeddings", item_embeddings, query)
            rows = item_embeddings.index_select(0, ids)
        elif callable(item_embeddings):
            rows = item_embeddings(ids)
            if not isinstance(rows, Tensor) or rows.shape != (ids.shape[0], d):
                shape = tuple(rows.shape) if isinstance(rows, Tensor) else type(rows).__name__
                raise ValueError(f"item_embeddings(ids) must return [n, d] = "
                                 f"[{ids.shape[0]}, {d}] for n ids, got {shape}")
            if rows.dtype != query.dtype or rows.device != query.device:
                raise TypeError(f"item_embeddings(ids) returned {rows.dtype} on {rows.device}; "
                                f"query is {query.dtype} on {query.device}")
        else:
            raise TypeError("item_embeddings must be an nn.Embedding, an [N, d] tensor or a "
                            f"callable ids -> [n, d], got {type(item_embeddings).__name__}")
        return rows

    def _check_table(self, name: str, table: Tensor, query: Tensor) -> None:
        if table.dim() != 2 or table.shape[1] != query.shape[1]:
            raise ValueError(f"{name} must be [N, d] with d = {query.shape[1]}, got shape "
                             f"{tuple(table.shape)}")
        if table.shape[0] < self.num_items:
            raise ValueError(f"{name} has {table.shape[0]} rows but num_items is "
                             f"{self.num_items}")
        if table.dtype != query.dtype:
            raise TypeError(f"{name} is {table.dtype} but query is {query.dtype}")
        if table.device != query.device:
            raise ValueError(f"{name} is on {table.device} but query is on {query.device}")

    def _draw_shared(self, positive_ids: Tensor, generator, device):
        """Shared draws: (ids [M], log_q [M] or None, positive_log_q [B, T] or None)."""
        sampler = self.sampler
        if isinstance(sampler, _FixedDistributionSampler):
            if self.num_negatives == 0:
                empty = torch.empty(0, dtype=torch.int64, device=device)
                return empty, torch.empty(0, device=device), None
            draw = sampler.sample(self.num_negatives, generator=generator, device=device)
            # The positive is not one of these draws: it stays uncorrected (module docstring).
            return draw.ids, draw.log_q, None
        if isinstance(sampler, MixedSampler):
            draw = sampler.sample(self.num_negatives, positives=positive_ids,
                                  generator=generator, device=device)
        else:
            draw = sampler.sample(positives=positive_ids, device=device)
        positive_log_q = draw.log_expected_count(positive_ids)
        keep = draw.ids >= 0  # in-batch padding (log_q = +inf) is dropped here
        return draw.ids[keep], draw.log_q[keep], positive_log_q

    def _draw_pool(self, generator, device):
        fixed = self.sampler.other if isinstance(self.sampler, MixedSampler) else self.sampler
        draw = fixed.sample(self.hard_negative_pool, generator=generator, device=device)
        return draw.ids, draw.log_q

    # ------------------------------------------------------------------------------- forward

    def forward(self, query: Tensor, item_embeddings: ItemEmbeddings, positive_ids: Tensor, *,
                positive_weights: Optional[Tensor] = None,
                sample_weights: Optional[Tensor] = None,
                generator: Optional[torch.Generator] = None, seed: Optional[int] = None,
                return_draw: bool = False):
        """
        Args:
            query: [B, d] query embeddings (float16/bfloat16/float32/float64).
            item_embeddings: ``nn.Embedding``, [N, d] tensor, or callable ids [n] -> [n, d]
                (same dtype and device as ``query``).
            positive_ids: [B] or [B, T] int64 ids in [0, N); -1 marks padding.
            positive_weights: [B] or [B, T] weights of the positives (default: uniform over
                each row's valid positives, the normalised multi-hot).
            sample_weights: [B] per-row weights.
            generator / seed: randomness of this call (overrides the module's ``seed``).
            return_draw: also return the ``NegativeDraw`` (ids and log counts used).

        Returns:
            The loss (scalar, or [B] for reduction="none"; float32, float64 for float64
            inputs), and the NegativeDraw when ``return_draw``.
        """
        pos = self._check_inputs(query, positive_ids)                     # [B, T]
        gen = self._resolve_generator(generator, seed)
        device = query.device
        B, T = pos.shape
        H = self.hard_negatives

        shared_ids, shared_log_q, positive_log_q = self._draw_shared(pos, gen, device)
        pool_ids = pool_log_q = None
        if H:
            pool_ids, pool_log_q = self._draw_pool(gen, device)

        # Embed every touched id once; the rest indexes the [U, d] block.
        groups = [pos.reshape(-1), shared_ids] + ([pool_ids] if H else [])
        uniq, inverse = torch.unique(torch.cat(groups), return_inverse=True)
        if uniq.numel() and int(uniq[0]) < 0:  # padding (-1) sorts first: drop it, point at row 0
            uniq, inverse = uniq[1:], (inverse - 1).clamp_min(0)
        if uniq.numel() == 0:  # no positive and no candidate: nothing to learn from
            loss = query.sum() * 0.0
            loss = loss.to(torch.float64 if query.dtype == torch.float64 else torch.float32)
            if self.reduction == "none":
                loss = loss.expand(B).clone()
            return (loss, self._record(shared_ids, shared_log_q, positive_log_q)) \
                if return_draw else loss
        rows = self._embed(item_embeddings, uniq, query)                  # [U, d]
        sizes = [g.numel() for g in groups]
        inv_pos, inv_shared, *inv_pool = torch.split(inverse, sizes)
        slots = inv_pos.view(B, T)                 # block row of each positive slot

        correct = self.logq_correction
        m_draws = shared_ids.numel()
        shared_shift = math.log((m_draws + H) / m_draws) if H and m_draws else 0.0
        if correct and shared_shift:
            shared_log_q = shared_log_q + shared_shift
            if positive_log_q is not None:
                positive_log_q = positive_log_q + shared_shift
        if not correct:
            positive_log_q = None

        # Shared candidates, duplicates merged (module docstring).
        cand_ids, cand_log_q, cand_of_draw = _merge_duplicates(
            shared_ids, shared_log_q if correct else None)
        cand_rows = torch.empty(cand_ids.shape, dtype=torch.int64, device=device)
        cand_rows.scatter_(0, cand_of_draw, inv_shared)  # block row of each unique shared id
        candidates = rows.index_select(0, cand_rows)                      # [U_shared, d]

        hard_index = hard_ids = hard_log_q = None
        pos_ids_k, pos_log_q_k, weights_k = pos, positive_log_q, positive_weights
        if H:
            pool_rows = rows.detach().index_select(0, inv_pool[0])        # [P, d], mining only
            mine = _mine_hard_negatives()
            with torch.no_grad():
                hard_index, mined_log_q = mine(
                    query.detach(), pool_rows, H, pool_ids=pool_ids,
                    exclude_ids=pos, mode=self.hard_negative_mode,
                    temperature=self.hard_negative_temperature, pool_log_q=pool_log_q,
                    generator=gen)
            valid = hard_index >= 0
            safe = hard_index.clamp_min(0)
            hard_ids = torch.where(valid, pool_ids[safe], -1)
            slots = torch.cat([slots, inv_pool[0][safe]], dim=1)         # [B, T + H]
            # Weight-0 slots: in Z_b only. Id num_items (no such item) so that they never mask
            # a shared draw; -1 where the miner found nothing.
            pos_ids_k = torch.cat([pos, torch.where(valid, self.num_items, -1)], dim=1)
            if correct:
                hard_shift = math.log((m_draws + H) / H) if m_draws else 0.0
                hard_log_q = mined_log_q.to(torch.float32) + hard_shift
                hard_log_q = torch.where(valid, hard_log_q, 0.0)
                base = (positive_log_q if positive_log_q is not None
                        else torch.zeros(B, T, dtype=torch.float32, device=device))
                pos_log_q_k = torch.cat([base.to(torch.float32), hard_log_q], dim=1)
            if positive_weights is None:
                weights_k = (pos >= 0).to(torch.float32)
                weights_k = weights_k / weights_k.sum(1, keepdim=True).clamp_min(1.0)
            else:
                weights_k = self._as_rows("positive_weights", positive_weights, B, T)
            weights_k = torch.cat([weights_k, weights_k.new_zeros(B, H)], dim=1)

        # One gather for positives and mined negatives alike: [B, T (+ H), d].
        positives = rows.index_select(0, slots.reshape(-1)).view(B, slots.shape[1], -1)
        loss = F.sampled_softmax_cross_entropy(
            query, positives, candidates, positive_ids=pos_ids_k, candidate_ids=cand_ids,
            positive_weights=weights_k, positive_log_q=pos_log_q_k,
            candidate_log_q=cand_log_q if cand_ids.numel() else None,
            temperature=self.temperature, remove_accidental_hits=self.remove_accidental_hits,
            sample_weights=sample_weights, reduction=self.reduction)
        if not return_draw:
            return loss
        return loss, self._record(shared_ids, shared_log_q if correct else None, positive_log_q,
                                  pool_ids, pool_log_q, hard_index, hard_ids, hard_log_q)

    @staticmethod
    def _as_rows(name: str, value: Tensor, batch: int, width: int) -> Tensor:
        if not isinstance(value, Tensor) or value.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be a floating tensor")
        value = value.unsqueeze(1) if value.dim() == 1 else value
        if tuple(value.shape) != (batch, width):
            raise ValueError(f"{name} must have shape ({batch}, {width}) like positive_ids, got "
                             f"{tuple(value.shape)}")
        return value

    @staticmethod
    def _record(shared_ids, shared_log_q, positive_log_q, pool_ids=None, pool_log_q=None,
                hard_index=None, hard_ids=None, hard_log_q=None) -> NegativeDraw:
        return NegativeDraw(shared_ids, shared_log_q, positive_log_q, pool_ids, pool_log_q,
                            hard_index, hard_ids, hard_log_q)

    def extra_repr(self) -> str:
        text = (f"num_items={self.num_items}, num_negatives={self.num_negatives}, "
                f"hard_negatives={self.hard_negatives}")
        if self.hard_negatives:
            text += (f", hard_negative_pool={self.hard_negative_pool}, "
                     f"hard_negative_mode={self.hard_negative_mode!r}")
        return (text + f", temperature={self.temperature}, logq_correction={self.logq_correction}"
                f", remove_accidental_hits={self.remove_accidental_hits}, "
                f"reduction={self.reduction!r}")
