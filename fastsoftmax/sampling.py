"""Negative samplers for sampled softmax, in pure PyTorch (issue 4).

Every sampler draws candidate item ids and returns them with ``log_q``, the log of their
*expected count* in this draw, which is what the logQ correction subtracts (DESIGN.md §4)::

    with replacement, S draws from p:     E[count of i] = S * p_i
    unique=True (TF's approximation):     E[count of i] = 1 - (1 - p_i)^num_tries
    in-batch, n positives drawn from p:   E[count of i] = n * p_i
    mixed (in-batch + S draws):           E[count of i] = E_in_batch[i] + E_other[i]

``unique=True`` draws with replacement until ``S`` distinct ids have been seen and keeps them
in order of first appearance (sequential sampling without replacement, as TensorFlow's
candidate samplers do). ``num_tries`` is the number of draws that took; an id with
probability p_i is then in the set with probability ~ 1 - (1 - p_i)^num_tries, computed as
``-expm1(num_tries * log1p(-p_i))``. The formula is exact in expectation only for the uniform
sampler, where the inclusion probability is exactly S / N and is returned as such.

Randomness: draws are made with a CPU ``torch.Generator`` (or ``torch.Generator`` seeded with
``seed``; the default CPU generator when neither is given) and the results are moved to the
requested device, so the same seed gives the same ids on CPU and CUDA. (A CUDA generator is
accepted too; the random numbers are then drawn on the GPU and differ from the CPU's.)

Shapes: S sampled candidates, N items, n in-batch positives (any shape, flattened).
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from .mining import _seed_from

__all__ = [
    "SampleResult",
    "Sampler",
    "UniformSampler",
    "LogUniformSampler",
    "UnigramSampler",
    "StreamingFrequencyEstimator",
    "InBatchSampler",
    "MixedSampler",
    "build_alias_table",
    "hash_bucket",
    "make_sampler",
    "SAMPLER_NAMES",
]

Device = Union[str, torch.device, None]
SAMPLER_NAMES = ("uniform", "log_uniform", "unigram", "in_batch", "mixed")


# ----------------------------------------------------------------------------------------------
# Argument checks (messages name the argument)

def _check_int(name: str, value, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, Tensor) and value.dim() == 0 and not value.is_floating_point():
            value = int(value)
        else:
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_ids(name: str, ids) -> Tensor:
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of item ids, got {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype (int64), got {ids.dtype}")
    return ids.long()


def _check_counts(counts) -> Tensor:
    """counts: [N] non-negative, finite, not all zero -> float64 on CPU."""
    if not isinstance(counts, Tensor):
        try:
            counts = torch.as_tensor(counts)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"counts must be a 1-D tensor of item counts: {err}") from None
    if counts.dtype == torch.bool or counts.is_complex():
        raise TypeError(f"counts must have a real (integer or floating) dtype, got {counts.dtype}")
    if counts.dim() != 1:
        raise ValueError(f"counts must be 1-D [N], got shape {tuple(counts.shape)}")
    if counts.numel() == 0:
        raise ValueError("counts must have at least one item (num_items > 0)")
    c = counts.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(c).all()):
        raise ValueError("counts must be finite (found NaN or inf)")
    if bool((c < 0).any()):
        raise ValueError("counts must be non-negative")
    if not bool((c > 0).any()):
        raise ValueError("counts are all zero: no item can be sampled")
    return c


def _probabilities_from_counts(counts, distortion: float = 1.0) -> Tensor:
    """p_i ∝ counts_i ** distortion over items with counts_i > 0 (zero counts stay zero).

    Returns [N] float64 on CPU, summing to 1.
    """
    c = _check_counts(counts)
    if isinstance(distortion, bool) or not isinstance(distortion, (int, float)):
        raise TypeError(f"distortion must be a float, got {type(distortion).__name__}")
    if not (math.isfinite(distortion) and distortion >= 0):
        raise ValueError(f"distortion must be finite and >= 0, got {distortion}")
    w = torch.where(c > 0, c.pow(distortion), torch.zeros_like(c))
    return w / w.sum()


def _resolve_generator(generator: Optional[torch.Generator],
                       seed: Optional[int]) -> torch.Generator:
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        return torch.Generator().manual_seed(seed)
    if generator is None:
        return torch.default_generator
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


def _log_inclusion(p: Tensor, num_tries: int) -> Tensor:
    """log(1 - (1 - p)^num_tries), stable for tiny p; p: float64."""
    if num_tries == 0:
        return torch.full_like(p, -math.inf)
    # NB: p == 1 gives log1p(-1) = -inf, expm1(-inf) = -1, log(1) = 0, as it should.
    return torch.log(-torch.expm1(num_tries * torch.log1p(-p)))


def _masked_padding(ids: Tensor, values: Tensor, fill: float) -> Tensor:
    return values.masked_fill(ids < 0, fill)


# ----------------------------------------------------------------------------------------------
# Result and base class

class SampleResult(tuple):
    """The result of one draw. Unpacks as ``ids, log_q = result``.

    Attributes:
        ids: [S] int64 sampled item ids, on the requested device.
        log_q: [S] float32 log expected count of each id in this draw.
        num_tries: draws made (= S with replacement; >= S for ``unique=True``; for in-batch
            sampling the number of valid positives).
    ``result.log_expected_count(other_ids)`` gives the same quantity for arbitrary ids (e.g. the
    positives, for the logQ correction of the positive logits) under this very draw.
    """

    def __new__(cls, ids: Tensor, log_q: Tensor, num_tries: int,
                log_expected_count: Optional[Callable[[Tensor], Tensor]] = None):
        self = super().__new__(cls, (ids, log_q))
        self.num_tries = num_tries
        self._log_expected_count = log_expected_count
        return self

    @property
    def ids(self) -> Tensor:
        return self[0]

    @property
    def log_q(self) -> Tensor:
        return self[1]

    def log_expected_count(self, ids: Tensor) -> Tensor:
        """[any shape] int64 -> float32 of the same shape, on ``ids``' device."""
        if self._log_expected_count is None:
            raise RuntimeError("this SampleResult carries no expected-count function")
        return self._log_expected_count(ids)

    def __repr__(self) -> str:
        return f"SampleResult(ids={self.ids!r}, log_q={self.log_q!r}, num_tries={self.num_tries})"


class Sampler(nn.Module):
    """Base class: ``sample(num_samples, *, positives=None, generator=None, seed=None,
    device=None) -> SampleResult``.

    Samplers are ``nn.Module``s so that ``.to(device)`` moves their tables and a loss that
    holds one carries its state (e.g. a streaming frequency estimate) in its ``state_dict``.
    Calling the module is ``sample``. Samplers with ``needs_positives = True`` (in-batch, mixed)
    build their candidates from the batch's positive ids; the others ignore ``positives``.
    """

    needs_positives: bool = False
    unique: bool = False

    def __init__(self, device: Device = None):
        super().__init__()
        # Empty buffer that tracks the module's device through .to()/.cuda().
        self.register_buffer("_device_anchor", torch.empty(0, device=device), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._device_anchor.device

    def forward(self, *args, **kwargs) -> SampleResult:
        return self.sample(*args, **kwargs)

    def sample(self, num_samples: Optional[int] = None, *, positives: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None, seed: Optional[int] = None,
               device: Device = None) -> SampleResult:
        raise NotImplementedError

    def probabilities(self) -> Tensor:
        """[N] float64 probability of each item per draw; not defined for every sampler."""
        raise NotImplementedError(f"{type(self).__name__} has no fixed item distribution")


class _FixedDistributionSampler(Sampler):
    """Samplers that draw i.i.d. from a fixed distribution p over N items.

    Subclasses give ``_draw(m, generator) -> [m] int64`` (with replacement, on the generator's
    or the table's device), ``_prob_of(ids) -> float64 p_ids`` and ``support`` (items with p > 0).
    """

    _exact_unique = False  # True where log_q with unique=True needs no num_tries

    def __init__(self, num_items: int, *, unique: bool = False, device: Device = None):
        super().__init__(device)
        self.num_items = _check_int("num_items", num_items, minimum=1)
        if not isinstance(unique, bool):
            raise TypeError(f"unique must be a bool, got {type(unique).__name__}")
        self.unique = unique

    @property
    def support(self) -> int:
        return self.num_items

    def _draw(self, m: int, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def _prob_of(self, ids: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, num_samples: Optional[int] = None, *, positives: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None, seed: Optional[int] = None,
               device: Device = None) -> SampleResult:
        """Draws ``num_samples`` ids.

        Returns:
            SampleResult: ids [S] int64, log_q [S] float32 (log S p_i with replacement,
            log(1 - (1 - p_i)^num_tries) with ``unique=True``), num_tries.
        """
        if num_samples is None:
            raise TypeError("num_samples is required")
        num_samples = _check_int("num_samples", num_samples, minimum=0)
        gen = _resolve_generator(generator, seed)
        device = self.device if device is None else torch.device(device)
        if self.unique:
            if num_samples > self.support:
                raise ValueError(f"num_samples={num_samples} unique ids requested but only "
                                 f"{self.support} items can be sampled (unique=True)")
            ids, num_tries = _draw_unique(self._draw, num_samples, gen)
            ids, log_q = ids.to(device), None
        else:
            ids, log_q = self._draw_with_log_q(num_samples, gen)
            num_tries = num_samples
            ids = ids.to(device)
        log_q = self._log_q(ids, num_samples, num_tries) if log_q is None else log_q.to(device)
        expected = functools.partial(self.log_expected_count, num_samples=num_samples,
                                     num_tries=num_tries)
        return SampleResult(ids, log_q, num_tries, expected)

    def _draw_with_log_q(self, m: int, generator: torch.Generator):
        """m draws with replacement and their log expected counts log(m p_i), or None for
        ``_log_q`` to compute them (samplers whose kernel yields both override this)."""
        return self._draw(m, generator), None

    def log_expected_count(self, ids: Tensor, num_samples: int, *,
                           num_tries: Optional[int] = None) -> Tensor:
        """log E[count of each id] in a draw of ``num_samples``.

        Args:
            ids: any shape, int64 in [0, N); negative ids (padding) get 0.
            num_samples: S, the draw's size.
            num_tries: required when ``unique=True`` (``SampleResult.num_tries``).
        Returns:
            float32, same shape and device as ``ids``: log(S p_i), or with ``unique=True``
            log(1 - (1 - p_i)^num_tries).
        """
        ids = _check_ids("ids", ids)
        num_samples = _check_int("num_samples", num_samples, minimum=0)
        if self.unique and not self._exact_unique:
            if num_tries is None:
                raise ValueError("num_tries is required with unique=True "
                                 "(take it from SampleResult.num_tries)")
            num_tries = _check_int("num_tries", num_tries, minimum=0)
        return _masked_padding(ids, self._log_q(ids.clamp_min(0), num_samples, num_tries), 0.0)

    def _log_q(self, ids: Tensor, num_samples: int, num_tries: Optional[int]) -> Tensor:
        """log_q of valid ids (no checks): [any] int64 -> float32 of the same shape."""
        if self.unique:
            return _log_inclusion(self._prob_of(ids), num_tries).float()
        # NB: in place: _log_prob_of returns a fresh tensor, and one [S] buffer fewer matters
        # when S is in the millions.
        return self._log_prob_of(ids).add_(math.log(num_samples) if num_samples else -math.inf)

    def _log_prob_of(self, ids: Tensor) -> Tensor:
        return torch.log(self._prob_of(ids)).float()

    def probabilities(self) -> Tensor:
        return self._prob_of(torch.arange(self.num_items, device=self.device))

    def extra_repr(self) -> str:
        return f"num_items={self.num_items}, unique={self.unique}"


def _draw_unique(draw: Callable[[int, torch.Generator], Tensor], num_samples: int,
                 generator: torch.Generator, max_tries: Optional[int] = None):
    """Draws with replacement until ``num_samples`` distinct ids appeared.

    Returns ([S] int64 ids in order of first appearance, num_tries). Draws in growing chunks
    (each chunk doubles the total), so the work is O(T log T) for T draws in total. Gives up
    with a RuntimeError after max(64 S, 2^24) draws (S close to the number of items with
    non-negligible probability needs coupon-collector numbers of draws).
    """
    if num_samples == 0:
        return draw(0, generator), 0
    if max_tries is None:
        max_tries = max(64 * num_samples, 1 << 24)
    chunks, total, chunk = [], 0, num_samples + num_samples // 2 + 16
    while True:
        if total >= max_tries:
            raise RuntimeError(f"unique sampling found fewer than num_samples={num_samples} "
                               f"distinct ids in {total} draws; ask for fewer samples or use "
                               "unique=False")
        chunks.append(draw(chunk, generator))
        total += chunk
        x = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
        # Stable sort keeps equal ids in draw order: the first of each run is its first draw.
        values, order = torch.sort(x, stable=True)
        is_first = torch.ones_like(values, dtype=torch.bool)
        is_first[1:] = values[1:] != values[:-1]
        first = order[is_first]
        if first.numel() >= num_samples:
            first = torch.sort(first).values[:num_samples]
            return x[first], int(first[-1]) + 1
        chunk = total


# ----------------------------------------------------------------------------------------------
# Uniform and log-uniform

class UniformSampler(_FixedDistributionSampler):
    """Uniform over N items: p_i = 1/N.

    log_q: log(S/N) with replacement; with ``unique=True`` the set is a uniformly random
    S-subset, so the inclusion probability is exactly S/N and log_q = log(S/N) as well
    (TF's 1 - (1 - 1/N)^num_tries is only its approximation).
    """

    _exact_unique = True

    def _draw(self, m: int, generator: torch.Generator) -> Tensor:
        return torch.randint(self.num_items, (m,), generator=generator, device=generator.device)

    def _prob_of(self, ids: Tensor) -> Tensor:
        return torch.full(ids.shape, 1.0 / self.num_items, dtype=torch.float64, device=ids.device)

    def _log_q(self, ids: Tensor, num_samples: int, num_tries: Optional[int]) -> Tensor:
        """log(S/N) for every id, with or without replacement (see the class docstring)."""
        value = math.log(num_samples / self.num_items) if num_samples else -math.inf
        return torch.full(ids.shape, value, dtype=torch.float32, device=ids.device)


class LogUniformSampler(_FixedDistributionSampler):
    """Zipfian over ids sorted by decreasing popularity (TF's log_uniform_candidate_sampler):

        P(k) = (log(k + 2) - log(k + 1)) / log(N + 1),   k in [0, N).

    Drawn by inversion: k = floor(exp(u log(N + 1))) - 1 with u ~ U[0, 1) in float64.
    """

    def _draw(self, m: int, generator: torch.Generator) -> Tensor:
        u = torch.rand(m, generator=generator, device=generator.device, dtype=torch.float64)
        k = torch.exp(u * math.log(self.num_items + 1)).floor_().long() - 1
        return k.clamp_(0, self.num_items - 1)

    def _prob_of(self, ids: Tensor) -> Tensor:
        k = ids.to(torch.float64)
        return torch.log1p(1.0 / (k + 1.0)) / math.log(self.num_items + 1)


# ----------------------------------------------------------------------------------------------
# Unigram (alias table)

def build_alias_table(probs: Tensor):
    """Walker/Vose alias table for a distribution p over N items, fully vectorised.

    Draw: k ~ U{0..N-1}, u ~ U[0,1); id = k if u < prob[k] else alias[k].
    Item i is then drawn with probability (prob[i] + sum_{k: alias[k]=i} (1 - prob[k])) / N = p_i.

    Construction (equivalent to Vose's two-list loop, processed in index order): with s = N p,
    light items (s < 1) have deficits d = 1 - s and heavy items (s >= 1) excesses e = s - 1.
    Walking lights and heavies in order, heavy j stays open while the lights' cumulative deficit
    D (before the light) is <= E_j, its cumulative excess; a light is aliased to the first open
    heavy. Heavy j closes at the first light with D_i > E_j, keeping prob = 1 + E_j - D_i of its
    own bucket and aliasing the rest to heavy j + 1 (which absorbs that deficit). Both lookups
    are ``searchsorted`` on cumulative sums, O(N log N), no Python loop over items.

    Args:
        probs: [N] non-negative, not all zero (renormalised to sum to 1 in float64).
    Returns:
        (prob [N] float64 in [0, 1], alias [N] int64), on CPU.
    """
    p = probs.detach().to("cpu", torch.float64)
    p = p / p.sum()  # NB: the construction needs sum(s) = N to the last bit it can
    n = p.numel()
    s = p * n
    prob = torch.ones(n, dtype=torch.float64)
    alias = torch.arange(n, dtype=torch.int64)
    light = s < 1.0
    light_idx = light.nonzero().squeeze(1)
    heavy_idx = (~light).nonzero().squeeze(1)
    if light_idx.numel() == 0 or heavy_idx.numel() == 0:  # all s == 1 (up to rounding)
        return prob, alias
    d = 1.0 - s[light_idx]
    cum_d = torch.cumsum(d, 0)
    cum_d_before = torch.cat([cum_d.new_zeros(1), cum_d[:-1]])
    cum_e = torch.cumsum(s[heavy_idx] - 1.0, 0)
    num_heavy, num_light = heavy_idx.numel(), light_idx.numel()

    owner = torch.searchsorted(cum_e, cum_d_before, side="left").clamp_(max=num_heavy - 1)
    prob[light_idx] = s[light_idx]
    alias[light_idx] = heavy_idx[owner]

    close_at = torch.searchsorted(cum_d, cum_e, side="right")  # first light with D_i > E_j
    # NB: the last heavy never closes (sum of excesses = sum of deficits; rounding aside).
    closes = close_at < num_light
    closes[-1] = False
    j = closes.nonzero().squeeze(1)
    prob[heavy_idx[j]] = (1.0 + cum_e[j] - cum_d[close_at[j]]).clamp_(0.0, 1.0)
    alias[heavy_idx[j]] = heavy_idx[j + 1]
    return prob, alias


class UnigramSampler(_FixedDistributionSampler):
    """Draws from p_i ∝ counts_i ** distortion (items with zero count are never drawn).

    An alias table built once (on CPU in float64, so CPU and CUDA tables are bit-identical) and
    kept on the sampler's device; a draw is two random tensors (bucket, coin), two gathers and a
    ``where``: O(1) per id. log_q = log(S p_i), or log(1 - (1 - p_i)^num_tries) if unique.
    The coin is float32 (20% faster than float64): each item's probability is exact up to
    2^-24 of a bucket's mass 1/N, which matters only for items with p_i below ~1e-7 / N.

    Args:
        counts: [N] non-negative item counts (any real dtype), not all zero.
        distortion: exponent on the counts (word2vec uses 0.75); 0 gives uniform over the
            items with a positive count.
        unique: sample without replacement (S <= number of items with a positive count).
        device: where the table lives; default ``counts.device``.
    """

    def __init__(self, counts, distortion: float = 1.0, *, unique: bool = False,
                 device: Device = None):
        p = _probabilities_from_counts(counts, distortion)
        if device is None and isinstance(counts, Tensor):
            device = counts.device
        super().__init__(p.numel(), unique=unique, device=device)
        self.distortion = float(distortion)
        self._support = int((p > 0).sum())
        prob, alias = build_alias_table(p)
        self.register_buffer("probs", p.to(self.device), persistent=False)  # [N] float64
        self.register_buffer("log_probs", p.log().float().to(self.device), persistent=False)
        self.register_buffer("alias_prob", prob.float().to(self.device), persistent=False)
        self.register_buffer("alias", alias.to(self.device), persistent=False)

    @property
    def support(self) -> int:
        return self._support

    def _draw(self, m: int, generator: torch.Generator) -> Tensor:
        return self._alias_sample(m, generator, with_log_q=False)[0]

    def _draw_with_log_q(self, m: int, generator: torch.Generator):
        return self._alias_sample(m, generator, with_log_q=True)

    def _alias_sample(self, m: int, generator: torch.Generator, with_log_q: bool):
        # One 63-bit draw from the generator seeds the fused kernel (fastsoftmax::alias_sample:
        # Philox per draw, one pass, log_q gathered in the same pass); the results land where
        # the table lives.
        seed = _seed_from(generator)
        if not with_log_q:
            return torch.ops.fastsoftmax.alias_sample(self.alias_prob, self.alias, m, seed, 0)
        shift = math.log(m) if m else -math.inf
        return torch.ops.fastsoftmax.alias_sample(self.alias_prob, self.alias, m, seed, 0,
                                                  self.log_probs, shift)

    def _prob_of(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1).to(self.probs.device)
        return self.probs.index_select(0, flat).reshape(ids.shape).to(ids.device)

    def _log_prob_of(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1).to(self.log_probs.device)
        return self.log_probs.index_select(0, flat).reshape(ids.shape).to(ids.device)

    def probabilities(self) -> Tensor:
        return self.probs

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, distortion={self.distortion}"


# ----------------------------------------------------------------------------------------------
# Streaming frequency estimate (Yi et al. 2019) and in-batch / mixed sampling

_HASH_PRIME = 2**31 - 1          # Mersenne prime: products below stay < 2^62, no int64 overflow
_HASH_MULT_LO = 1_540_483_477    # 0x5BD1E995, coprime with the prime
_HASH_MULT_HI = 668_265_261      # 0x27D4EB2D


def hash_bucket(ids: Tensor, num_buckets: int) -> Tensor:
    """Fixed multiplicative hash of int64 ids into [0, num_buckets).

    h = (lo * a + (hi mod P) * b) mod P with P = 2^31 - 1, lo = the low 31 bits, hi = the rest;
    bucket = h mod num_buckets. Deterministic and identical on CPU and CUDA. Distinct ids below
    P never share h (it is a bijection there), so collisions come only from folding P values into
    num_buckets: for n distinct active ids about a fraction 1 - exp(-n / num_buckets) of them
    share a bucket with another id.
    """
    lo = ids & 0x7FFFFFFF
    hi = torch.remainder(ids >> 31, _HASH_PRIME)
    h = torch.remainder(lo * _HASH_MULT_LO + hi * _HASH_MULT_HI, _HASH_PRIME)
    return torch.remainder(h, num_buckets)


class StreamingFrequencyEstimator(nn.Module):
    """Streaming estimate of each item's expected count per batch (Yi et al. 2019, Alg. 2).

    Per hash bucket h it keeps A[h], the step at which h was last hit (``last_step``), and B[h],
    a moving average of the number of steps between hits (``mean_gap``). At step t (one call of
    ``update`` per batch of positive ids), for each bucket hit c >= 1 times in the batch::

        B[h] <- (1 - α)^c B[h] + (1 - (1 - α)^c) (t - A[h]) / c,     A[h] <- t

    i.e. the paper's update B <- (1 - α) B + α (t - A) applied once per occurrence, with the
    gap t - A spread evenly over the c occurrences; for c = 1 it is exactly the paper's rule,
    and an item seen c times in every batch converges to B = 1/c. The first hit of a bucket
    initialises B[h] = t / c (A = 0 means "never seen"). The expected count of item i in a batch
    is 1 / B[h(i)], so ``log_q(ids) = -log B[h(ids)]``; a bucket never hit gets
    -log(max(step, 1)) (at most one hit in ``step`` steps).

    Collisions: ids sharing a bucket share A and B, so the estimate is their summed frequency,
    which overestimates q for the rarer ones (their logits are over-corrected). With the
    multiplicative hash about a fraction 1 - exp(-n/num_buckets) of n active items collide: use
    num_buckets several times the number of items. ``hash_ids=False`` uses id mod num_buckets
    instead, which is collision-free for dense ids in [0, num_buckets).

    State (buffers, in the state_dict): last_step [H] int64, mean_gap [H] float32, step [] int64.

    Args:
        num_buckets: H, number of hash buckets (< 2^31).
        alpha: moving-average rate α in (0, 1]; the estimate averages ~1/α recent hits.
        hash_ids: hash the ids (default) or use id mod num_buckets.
    """

    def __init__(self, num_buckets: int, alpha: float = 0.01, *, hash_ids: bool = True,
                 device: Device = None):
        super().__init__()
        num_buckets = _check_int("num_buckets", num_buckets, minimum=1)
        if num_buckets > _HASH_PRIME:
            raise ValueError(f"num_buckets must be < 2^31, got {num_buckets}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise TypeError(f"alpha must be a float, got {type(alpha).__name__}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.num_buckets, self.alpha, self.hash_ids = num_buckets, float(alpha), bool(hash_ids)
        zeros = functools.partial(torch.zeros, device=device)
        self.register_buffer("last_step", zeros(num_buckets, dtype=torch.int64))   # A
        self.register_buffer("mean_gap", zeros(num_buckets, dtype=torch.float32))  # B
        self.register_buffer("step", zeros((), dtype=torch.int64))                 # t

    def bucket(self, ids: Tensor) -> Tensor:
        """Bucket of each id: any shape int64 -> same shape int64 in [0, num_buckets)."""
        ids = _check_ids("ids", ids)
        if self.hash_ids:
            return hash_bucket(ids, self.num_buckets)
        return torch.remainder(ids, self.num_buckets)

    @torch.no_grad()
    def update(self, ids: Tensor) -> None:
        """Advances one step with this batch's positive ids (any shape; ids < 0 are padding)."""
        ids = _check_ids("ids", ids).reshape(-1).to(self.mean_gap.device)
        self.step += 1
        ids = ids[ids >= 0]
        if ids.numel() == 0:
            return
        buckets, hits = torch.unique(self.bucket(ids), return_counts=True)
        hits = hits.to(torch.float64)
        gap = (self.step - self.last_step[buckets]).to(torch.float64) / hits
        keep = torch.pow(1.0 - self.alpha, hits)
        old = self.mean_gap[buckets].to(torch.float64)
        new = torch.where(self.last_step[buckets] > 0, keep * old + (1.0 - keep) * gap, gap)
        self.mean_gap[buckets] = new.to(self.mean_gap.dtype)
        self.last_step[buckets] = self.step

    def log_q(self, ids: Tensor) -> Tensor:
        """log expected count per batch, -log B[h(id)]: any shape int64 -> float32, same shape
        and device as ``ids``; padding ids (< 0) get 0."""
        ids = _check_ids("ids", ids)
        h = self.bucket(ids.to(self.mean_gap.device).clamp_min(0))
        unseen_gap = self.step.clamp_min(1).to(self.mean_gap.dtype)
        gap = torch.where(self.last_step[h] > 0, self.mean_gap[h], unseen_gap)
        return _masked_padding(ids, -torch.log(gap).to(ids.device), 0.0).float()

    forward = log_q

    def extra_repr(self) -> str:
        return f"num_buckets={self.num_buckets}, alpha={self.alpha}, hash_ids={self.hash_ids}"


def _check_positives(positives) -> Tensor:
    if positives is None:
        raise ValueError("positives is required: in-batch candidates are the batch's positive ids")
    return _check_ids("positives", positives)


class InBatchSampler(Sampler):
    """Candidates are the batch's positive ids (flattened, padding -1 kept in place so that
    ids line up with ``positive_embeddings.reshape(-1, d)``).

    log_q, the log expected count of item i among the batch's n positives:
      - with ``counts`` (item probabilities p_i ∝ counts_i): log(n p_i), n = valid positives;
      - with an ``estimator``: -log B[h(i)] from ``StreamingFrequencyEstimator``. In training
        mode ``sample`` first updates the estimator with the batch (one step per call);
      - with neither: 0 (no correction).
    Padding candidates (id < 0) get log_q = +inf, so that score - log_q = -inf drops them
    from the softmax. ``generator``/``seed``/``num_samples`` are accepted and ignored.
    """

    needs_positives = True

    def __init__(self, estimator: Optional[StreamingFrequencyEstimator] = None, counts=None, *,
                 update_estimator: bool = True):
        super().__init__()
        if estimator is not None and counts is not None:
            raise ValueError("pass either estimator or counts, not both")
        if estimator is not None and not isinstance(estimator, StreamingFrequencyEstimator):
            raise TypeError("estimator must be a StreamingFrequencyEstimator, got "
                            f"{type(estimator).__name__}")
        self.estimator = estimator
        self.update_estimator = bool(update_estimator)
        probs = None if counts is None else _probabilities_from_counts(counts)
        self.register_buffer("probs", probs, persistent=False)  # [N] float64 or None

    @property
    def has_correction(self) -> bool:
        return self.estimator is not None or self.probs is not None

    def log_expected_count(self, ids: Tensor, num_samples) -> Tensor:
        """log E[count of each id] among ``num_samples`` in-batch positives.

        Args:
            ids: any shape int64; padding (< 0) gets 0.
            num_samples: n, the batch's number of valid positives (int or 0-D tensor); unused
                with an estimator (its estimate is per batch already).
        Returns: float32, same shape and device as ``ids``.
        """
        ids = _check_ids("ids", ids)
        if self.estimator is not None:
            return self.estimator.log_q(ids)
        if self.probs is None:
            return torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
        flat = ids.reshape(-1).clamp_min(0).to(self.probs.device)
        p = self.probs.index_select(0, flat).reshape(ids.shape).to(ids.device)
        n = torch.as_tensor(num_samples, dtype=torch.float64, device=ids.device)
        return _masked_padding(ids, torch.log(n * p), 0.0).float()

    def _take(self, positives: Optional[Tensor], device: Device) -> Tensor:
        """Flattened positive ids on ``device``; updates the estimator (training mode)."""
        ids = _check_positives(positives).reshape(-1)
        ids = ids.to(positives.device if device is None else device)
        if self.estimator is not None and self.update_estimator and self.training:
            self.estimator.update(ids)
        return ids

    def sample(self, num_samples: Optional[int] = None, *, positives: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None, seed: Optional[int] = None,
               device: Device = None) -> SampleResult:
        """positives [any shape] int64 -> SampleResult(ids [n_total], log_q [n_total], n_total)."""
        ids = self._take(positives, device)
        n = (ids >= 0).sum()  # 0-D tensor: no host sync
        expected = functools.partial(self.log_expected_count, num_samples=n)
        log_q = _masked_padding(ids, expected(ids), math.inf)
        return SampleResult(ids, log_q, ids.numel(), expected)

    def probabilities(self) -> Tensor:
        if self.probs is None:
            return super().probabilities()
        return self.probs


class MixedSampler(Sampler):
    """Mixed Negative Sampling (Yang et al. 2020): the batch's positives plus ``num_samples``
    draws from ``other`` (typically uniform), concatenated: ids = [in_batch_ids, other_ids].

    Each candidate's log_q is the log of its total expected count in the candidate set::

        log_q_i = log(E_in_batch[i] + E_other[i]) = logaddexp(log n p_i, log S q_i)

    (with ``unique=True`` in ``other``, E_other[i] = 1 - (1 - q_i)^num_tries). Padding
    positives get +inf (dropped from the softmax), as in ``InBatchSampler``.

    Args:
        in_batch: an InBatchSampler with counts or an estimator (needed for E_in_batch).
        other: a fixed-distribution sampler (uniform, log-uniform, unigram).
        num_samples: S, draws from ``other`` per batch (``sample`` may override it).
    """

    needs_positives = True

    def __init__(self, in_batch: InBatchSampler, other: Sampler, num_samples: int):
        super().__init__()
        if not isinstance(in_batch, InBatchSampler):
            raise TypeError(f"in_batch must be an InBatchSampler, got {type(in_batch).__name__}")
        if not in_batch.has_correction:
            raise ValueError("in_batch needs counts or an estimator: mixed sampling must add "
                             "the in-batch expected count to the other sampler's")
        if not isinstance(other, _FixedDistributionSampler):
            raise TypeError("other must be a uniform, log-uniform or unigram sampler, got "
                            f"{type(other).__name__}")
        self.in_batch, self.other = in_batch, other
        self.num_samples = _check_int("num_samples", num_samples, minimum=0)

    def log_expected_count(self, ids: Tensor, num_samples: Optional[int] = None, *,
                           num_positives, num_tries: Optional[int] = None) -> Tensor:
        """log(n p_i + E_other[i]) for any ids: any shape int64 -> float32 of the same shape.

        Args:
            num_samples: S, draws from ``other`` (default ``self.num_samples``).
            num_positives: n, valid in-batch positives (int or 0-D tensor).
            num_tries: ``other``'s num_tries when it samples with ``unique=True``.
        """
        s = self.num_samples if num_samples is None else num_samples
        in_batch = self.in_batch.log_expected_count(ids, num_positives)
        other = self.other.log_expected_count(ids, s, num_tries=num_tries).to(in_batch.device)
        return _masked_padding(ids, torch.logaddexp(in_batch, other), 0.0)

    def sample(self, num_samples: Optional[int] = None, *, positives: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None, seed: Optional[int] = None,
               device: Device = None) -> SampleResult:
        """positives [any shape] int64 -> SampleResult(ids [n_total + S], log_q, other's
        num_tries)."""
        positives = _check_positives(positives)
        s = self.num_samples if num_samples is None else _check_int("num_samples", num_samples,
                                                                      minimum=0)
        device = positives.device if device is None else torch.device(device)
        in_batch_ids = self.in_batch._take(positives, device)
        other = self.other.sample(s, generator=generator, seed=seed, device=device)
        ids = torch.cat([in_batch_ids, other.ids])
        n = (in_batch_ids >= 0).sum()
        expected = functools.partial(self.log_expected_count, num_samples=s, num_positives=n,
                                     num_tries=other.num_tries)
        log_q = _masked_padding(ids, expected(ids), math.inf)
        return SampleResult(ids, log_q, other.num_tries, expected)

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}"


# ----------------------------------------------------------------------------------------------
# Factory

def make_sampler(name: Union[str, Sampler], num_items: Optional[int] = None, counts=None, *,
                 unique: bool = False, distortion: float = 1.0,
                 num_samples: Optional[int] = None, other: str = "uniform",
                 estimator: Optional[StreamingFrequencyEstimator] = None,
                 num_buckets: Optional[int] = None, alpha: float = 0.01,
                 device: Device = None) -> Sampler:
    """Builds a sampler by name (a ``Sampler`` instance is returned as is).

    Args:
        name: "uniform", "log_uniform", "unigram", "in_batch" or "mixed".
        num_items: N; required for uniform / log-uniform, else taken from ``counts``.
        counts: [N] item counts: required for "unigram"; for "in_batch"/"mixed" they give the
            in-batch probabilities (else a streaming estimator is used).
        unique, distortion: as in the samplers (for "mixed" they apply to ``other``).
        num_samples: required for "mixed" (draws from ``other`` per batch).
        other: the sampler mixed with the batch's positives ("uniform", "log_uniform",
            "unigram").
        estimator: a StreamingFrequencyEstimator for "in_batch"/"mixed" without counts. If
            neither counts nor estimator is given, one is made with ``num_buckets`` hashed
            buckets, or, when only ``num_items`` is known, num_items exact (unhashed) buckets.
        alpha: the estimator's moving-average rate.
    """
    if isinstance(name, Sampler):
        return name
    if not isinstance(name, str):
        raise TypeError(f"sampler must be a name or a Sampler, got {type(name).__name__}")
    if name not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLER_NAMES}")
    if counts is not None:
        c = _check_counts(counts)
        if num_items is not None and _check_int("num_items", num_items, minimum=1) != c.numel():
            raise ValueError(f"num_items={num_items} but counts has {c.numel()} entries")
        num_items = c.numel()
    if name in ("uniform", "log_uniform"):
        if num_items is None:
            raise ValueError(f"num_items is required for the {name!r} sampler")
        cls = UniformSampler if name == "uniform" else LogUniformSampler
        return cls(num_items, unique=unique, device=device)
    if name == "unigram":
        if counts is None:
            raise ValueError("counts is required for the 'unigram' sampler")
        return UnigramSampler(counts, distortion, unique=unique, device=device)

    if name == "in_batch" and counts is not None and estimator is not None:
        raise ValueError("pass either estimator or counts for the 'in_batch' sampler, not both")
    if counts is not None and estimator is None:
        in_batch = InBatchSampler(counts=counts)
    else:
        if estimator is None:
            if num_buckets is None and num_items is None:
                raise ValueError("in-batch sampling needs counts, an estimator, num_buckets or "
                                 "num_items")
            hashed = num_buckets is not None
            estimator = StreamingFrequencyEstimator(num_buckets if hashed else num_items, alpha,
                                                    hash_ids=hashed, device=device)
        in_batch = InBatchSampler(estimator)
    if device is not None:
        in_batch = in_batch.to(device)
    if name == "in_batch":
        return in_batch
    if num_samples is None:
        raise ValueError("num_samples is required for the 'mixed' sampler")
    if other not in ("uniform", "log_uniform", "unigram"):
        raise ValueError(f"other must be 'uniform', 'log_uniform' or 'unigram', got {other!r}")
    mixed_with = make_sampler(other, num_items, counts, unique=unique, distortion=distortion,
                              device=device)
    return MixedSampler(in_batch, mixed_with, num_samples)
