"""Hard-negative mining (issue 4): pick, for every query, the pool items it scores highest
(``mode="topk"``) or sample them with probability increasing in the score (``mode="sample"``),
fused on CPU and CUDA so that the [B, P] score matrix never exists.

Shapes: B queries, d embedding width, P pool items, T excluded ids per row, H = ``num`` picks.
"""
from typing import Optional, Union

import torch
from torch import Tensor

from . import ops  # noqa: F401  (registers the op's fake kernel)
from ._validation import (
    FLOAT_DTYPES,
    check_ids_range,
    check_no_nan,
    check_shape,
    check_temperature,
    check_tensor,
)

__all__ = ["mine_hard_negatives", "MINING_MODES"]

MINING_MODES = ("sample", "topk")
_IDS = (torch.int64,)


def _as_int64(name: str, value) -> int:
    """Any Python int as the signed int64 with the same low 64 bits (the op's int arguments)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value %= 2**64
    return value - 2**64 if value >= 2**63 else value


def _seed_from(generator) -> int:
    if isinstance(generator, int) and not isinstance(generator, bool):
        return _as_int64("generator", generator)
    if generator is None or isinstance(generator, torch.Generator):
        # One 63-bit draw from the generator (the default one when None) seeds the op. That is a
        # data-dependent int, which torch.compile cannot pass to the op inside a graph.
        if torch.compiler.is_compiling():
            raise TypeError("under torch.compile, pass an int seed as generator (a "
                            "torch.Generator or None needs a data-dependent draw)")
        device = generator.device if generator is not None else torch.device("cpu")
        return int(torch.randint(0, 2**63 - 1, (), generator=generator, device=device))
    raise TypeError(f"generator must be a torch.Generator, an int seed or None, got "
                    f"{type(generator).__name__}")


def mine_hard_negatives(
    query: Tensor,
    pool: Tensor,
    num: int,
    *,
    pool_ids: Optional[Tensor] = None,
    exclude_ids: Optional[Tensor] = None,
    mode: str = "sample",
    temperature: float = 1.0,
    pool_log_q: Optional[Tensor] = None,
    generator: Union[torch.Generator, int, None] = None,
    offset: int = 0,
):
    """Mines ``num`` hard negatives per query from a candidate pool, in one fused scan.

    Scores are ``s_bi = query[b]·pool[i] / temperature`` (accumulated in float32, float64 for
    float64 inputs). Pool row i is *eligible* for row b unless its id (``pool_ids[i]``, or i
    itself without ``pool_ids``) is one of row b's ``exclude_ids`` (typically its positives, which
    would otherwise be false negatives).

    ``mode="sample"``: ``num`` independent draws with replacement from

        π_b(i) = exp(s_bi) / Σ_{eligible j} exp(s_bj)      over the eligible pool rows,

    by exact inverse-CDF sampling: one pass computes each row's log-sum-exp, a second walks the
    pool in index order with the row's sorted Philox4x32-10 uniforms (keyed by (seed, offset) and
    (row, draw); identical on CPU and CUDA), summing the probabilities in float64. Column h of the
    result is draw h. A uniform that lands past the CDF's rounded total (probability ~1e-7) picks
    the row's last eligible pool row.

    ``log_q`` is the log expected count that the logQ correction needs, derived as follows.
    Let the pool be P slots drawn by a sampler under which item j has expected count
    Q_j = exp(pool_log_q_j) (``pool_log_q`` as returned by ``fastsoftmax.sampling``; without it,
    Q = 1: the pool is the corpus, each item once). For row b, the H draws give the
    Horvitz–Thompson estimate, for any f,

        F̂_b = Σ_h f(i_h) / (Q_{i_h} · H · π_b(i_h)).

    Given the pool, each draw has E[f(i)/π_b(i)] = Σ_{eligible slots} f, so the inner sum has
    expectation Σ_{eligible slots i} f(i) / Q_i; over the pool draw, a slot of item j occurs
    Q_j times in expectation, so E[F̂_b] = Σ_{eligible items j} f(j). Hence

        log_q[b, h] = pool_log_q[i_h] + log(H) + log π_b(i_h),

    and with f = exp(s), Σ_h exp(s_bh - log_q_bh) is an unbiased estimate of the corpus sum
    Σ_j exp(s_bj) (excluded ids left out) that sampled softmax approximates: passing
    ``(index, log_q)`` as ``candidate_index`` / ``candidate_log_q`` to
    :func:`fastsoftmax.sampled_softmax_cross_entropy` keeps its estimator consistent. (Inside the
    log the loss is consistent, not unbiased, as for any sampled softmax.)

    ``mode="topk"``: the ``num`` highest-scoring eligible pool rows, highest first, lower index
    on ties. This selection is deterministic and *biased*: no inclusion probability exists, so
    only the pool's own correction applies and ``log_q = pool_log_q[index]`` (0 without it).

    Rows with fewer eligible pool rows than needed (none in sample mode, fewer than ``num`` in
    topk mode) get index -1 and log_q +inf in the empty places; sampled softmax treats index -1
    as padding. Inputs must be finite (a row with a NaN score gets -1 and NaN in sample mode).

    Not differentiable: the outputs are integers and sampling probabilities, and query and pool
    are read detached. Re-score the picks with
    ``sampled_softmax_cross_entropy(q, pos, pool, candidate_index=index, candidate_log_q=log_q)``,
    which is differentiable.

    Args:
        query: [B, d] query embeddings (float16/bfloat16/float32/float64).
        pool: [P, d] candidate pool, e.g. S items drawn by a sampler; dtype and device of query.
        num: H, the picks per row; > 0, and <= P in topk mode (CUDA: <= 4096 in sample mode,
            <= 1024 in topk mode).
        pool_ids: [P] int64 item ids of the pool rows (default: the pool row index).
        exclude_ids: [B] or [B, T] int64 ids each row must not pick; -1 is padding.
        mode: "sample" or "topk".
        temperature: > 0; divides the scores (sample mode; the top-k is the same for any).
        pool_log_q: [P] log expected counts of the pool items under the pool's sampler.
        generator: an int seed, a torch.Generator (one 63-bit seed is drawn from it), or None
            (the default generator). Under torch.compile pass an int.
        offset: the Philox counter offset, e.g. the step number with a fixed seed.

    Returns:
        (index, log_q): index [B, H] int64 rows of ``pool`` (-1: nothing eligible), and log_q
        [B, H] float32 (float64 for float64 inputs), +inf where index is -1.

    Example::

        ids, log_q = sampler.sample(S)                         # the pool, with its log Q
        index, lq = mine_hard_negatives(q, table[ids], 64, pool_ids=ids, exclude_ids=pos_ids,
                                        pool_log_q=log_q, generator=step)
        loss = sampled_softmax_cross_entropy(q, table[pos_ids], table[ids],
                                             positive_ids=pos_ids, candidate_ids=ids,
                                             candidate_index=index, candidate_log_q=lq)
    """
    check_tensor("query", query, dims=(2,), dtypes=FLOAT_DTYPES)
    device, batch, dim = query.device, query.shape[0], query.shape[1]
    check_tensor("pool", pool, dims=(2,), dtypes=(query.dtype,), device=device)
    if pool.shape[1] != dim:
        raise ValueError(f"pool must be [P, d] with d = {dim}; got shape {tuple(pool.shape)}")
    size = pool.shape[0]
    if mode not in MINING_MODES:
        raise ValueError(f"mode must be one of {MINING_MODES}, got {mode!r}")
    if isinstance(num, bool) or not isinstance(num, int):
        raise TypeError(f"num must be an int, got {type(num).__name__}")
    if num <= 0:
        raise ValueError(f"num must be > 0, got {num}")
    if mode == "topk" and num > size:
        raise ValueError(f"num must be <= the pool size P = {size} in topk mode, got {num}")
    temperature = check_temperature(temperature)
    if pool_ids is not None:
        check_tensor("pool_ids", pool_ids, dims=(1,), dtypes=_IDS, device=device)
        check_shape("pool_ids", pool_ids, (size,))
    if exclude_ids is not None:
        check_tensor("exclude_ids", exclude_ids, dims=(1, 2), dtypes=_IDS, device=device)
        if exclude_ids.dim() == 1:
            exclude_ids = exclude_ids.unsqueeze(1)
        if exclude_ids.shape[0] != batch:
            raise ValueError(f"exclude_ids must be [B] or [B, T] with B = {batch}; got shape "
                             f"{tuple(exclude_ids.shape)}")
        check_ids_range("exclude_ids", exclude_ids, None)
    if pool_log_q is not None:
        check_tensor("pool_log_q", pool_log_q, dims=(1,), dtypes=FLOAT_DTYPES, device=device)
        check_shape("pool_log_q", pool_log_q, (size,))
        check_no_nan("pool_log_q", pool_log_q)
    if not (generator is None or isinstance(generator, (int, torch.Generator))) or \
            isinstance(generator, bool):
        raise TypeError("generator must be a torch.Generator, an int seed or None, got "
                        f"{type(generator).__name__}")
    # topk mode is deterministic: it takes no randomness (and leaves the generator untouched).
    seed = _seed_from(generator) if mode == "sample" else 0
    offset = _as_int64("offset", offset)
    return torch.ops.fastsoftmax.mine_hard_negatives(
        query.detach(), pool.detach(), pool_ids, exclude_ids,
        None if pool_log_q is None else pool_log_q.detach(), num, mode, temperature, seed,
        offset)

