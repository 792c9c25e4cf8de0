"""Tests of fastsoftmax.sampling: distributions (chi-square), log_q closed forms, unique sampling,
the streaming frequency estimate, mixed negative sampling, determinism and argument errors."""
import math

import pytest
import torch

from fastsoftmax.sampling import (
    InBatchSampler,
    LogUniformSampler,
    MixedSampler,
    Sampler,
    SampleResult,
    StreamingFrequencyEstimator,
    UniformSampler,
    UnigramSampler,
    build_alias_table,
    hash_bucket,
    make_sampler,
)

P_VALUE_MIN = 1e-3   # chi-square goodness of fit at a fixed seed
NUM_DRAWS = 400_000  # draws per chi-square test
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# ----------------------------------------------------------------------------------------------
# Helpers

def chi2_sf(stat: float, df: int) -> float:
    """P(X >= stat) for X ~ chi-square(df): the regularised upper incomplete gamma Q(df/2, x/2)."""
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def chi2_pvalue(observed: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> float:
    """Pearson goodness-of-fit p-value of counts ``observed`` against ``probs``.

    Items with zero probability must never be observed (asserted). Bins whose expected count is
    below ``min_expected`` are pooled into one so the chi-square approximation holds.
    """
    observed, probs = observed.double().cpu(), probs.double().cpu()
    assert observed[probs == 0].sum() == 0, "an item with zero probability was drawn"
    keep = probs > 0
    observed, expected = observed[keep], probs[keep] / probs[keep].sum() * observed.sum()
    small = expected < min_expected
    if small.any():
        observed = torch.cat([observed[~small], observed[small].sum().view(1)])
        expected = torch.cat([expected[~small], expected[small].sum().view(1)])
    stat = float(((observed - expected) ** 2 / expected).sum())
    return chi2_sf(stat, observed.numel() - 1)


def skewed_counts(n: int, seed: int = 0, zeros: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    counts = torch.rand(n, generator=g, dtype=torch.float64) ** 4 * 1000
    if zeros:
        counts[torch.rand(n, generator=g) < 0.2] = 0
    counts[0] = 5000.0
    return counts


def samplers(unique: bool = False, num_items: int = 64):
    """(name, sampler, independent closed-form probabilities [N] float64)."""
    k = torch.arange(num_items, dtype=torch.float64)
    counts = skewed_counts(num_items)
    return [
        ("uniform", UniformSampler(num_items, unique=unique),
         torch.full((num_items,), 1.0 / num_items, dtype=torch.float64)),
        ("log_uniform", LogUniformSampler(num_items, unique=unique),
         (torch.log(k + 2) - torch.log(k + 1)) / math.log(num_items + 1)),
        ("unigram", UnigramSampler(counts, unique=unique), counts / counts.sum()),
        ("unigram_distorted", UnigramSampler(counts, 0.75, unique=unique),
         counts ** 0.75 / (counts ** 0.75).sum()),
    ]


def implied_probabilities(prob: torch.Tensor, alias: torch.Tensor) -> torch.Tensor:
    """The distribution an alias table draws: (prob_i + sum_{k: alias_k = i} (1 - prob_k)) / N."""
    q = prob.double().clone()
    q.scatter_add_(0, alias, 1.0 - prob.double())
    return q / prob.numel()


# ----------------------------------------------------------------------------------------------
# The chi-square machinery itself

def test_chi2_sf_matches_reference_quantiles():
    # 95% and 99.9% quantiles from standard chi-square tables.
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-8)
    assert chi2_sf(18.307038053275146, 10) == pytest.approx(0.05, rel=1e-8)
    assert chi2_sf(124.34211340400407, 100) == pytest.approx(0.05, rel=1e-8)
    assert chi2_sf(29.58829844507442, 10) == pytest.approx(0.001, rel=1e-7)
    assert chi2_sf(2.0, 2) == pytest.approx(math.exp(-1.0), rel=1e-12)  # df=2: exp(-x/2)


def test_chi2_detects_a_wrong_distribution():
    """The test has power: 400k draws tell a 20% change of one item's mass apart."""
    _, sampler, p = samplers()[2]
    ids, _ = sampler.sample(NUM_DRAWS, seed=0)
    observed = torch.bincount(ids, minlength=p.numel())
    assert chi2_pvalue(observed, p) > P_VALUE_MIN
    wrong = p.clone()
    item = int((p - 0.02).abs().argmin())  # p ~ 2%: 8000 expected, +1600 is ~16 std devs
    wrong[item] *= 1.2
    assert chi2_pvalue(observed, wrong) < 1e-10
    log_uniform_ids, _ = samplers()[1][1].sample(NUM_DRAWS, seed=0)
    assert chi2_pvalue(torch.bincount(log_uniform_ids, minlength=64), torch.ones(64)) < 1e-12


# ----------------------------------------------------------------------------------------------
# Alias table

@pytest.mark.parametrize("kind", ["random", "skewed_with_zeros", "uniform", "one_hot", "two_items",
                                  "single_item", "tiny_masses", "large"])
def test_alias_table_reproduces_the_distribution(kind):
    g = torch.Generator().manual_seed(1)
    n = {"large": 200_000, "two_items": 2, "single_item": 1}.get(kind, 1000)
    if kind == "random":
        w = torch.rand(n, generator=g, dtype=torch.float64)
    elif kind == "skewed_with_zeros":
        w = skewed_counts(n)
    elif kind == "uniform":
        w = torch.ones(n, dtype=torch.float64)
    elif kind == "one_hot":
        w = torch.zeros(n, dtype=torch.float64)
        w[n // 3] = 1.0
    elif kind == "tiny_masses":
        w = torch.full((n,), 1e-12, dtype=torch.float64)
        w[:3] = 1.0
    else:
        w = torch.rand(n, generator=g, dtype=torch.float64) ** 8
    p = w / w.sum()
    prob, alias = build_alias_table(p)
    assert prob.dtype == torch.float64 and alias.dtype == torch.int64
    assert bool(((prob >= 0) & (prob <= 1)).all())
    assert bool(((alias >= 0) & (alias < n)).all())
    assert bool((p[alias[prob < 1]] > 0).all()), "an alias points at a zero-probability item"
    # float64 cumulative sums over N entries: absolute error ~1e-8 of a bucket (1/N) at most,
    # far below what a float32 coin resolves (6e-8).
    torch.testing.assert_close(implied_probabilities(prob, alias), p, rtol=1e-10, atol=1e-8 / n)


# ----------------------------------------------------------------------------------------------
# Distributions and log_q, with replacement

@pytest.mark.parametrize("index", range(4), ids=[s[0] for s in samplers()])
def test_empirical_distribution_matches(index):
    name, sampler, p = samplers()[index]
    torch.testing.assert_close(sampler.probabilities(), p, rtol=1e-12, atol=0)
    ids, _ = sampler.sample(NUM_DRAWS, seed=123)
    assert ids.dtype == torch.int64 and ids.shape == (NUM_DRAWS,)
    assert int(ids.min()) >= 0 and int(ids.max()) < p.numel()
    assert chi2_pvalue(torch.bincount(ids, minlength=p.numel()), p) > P_VALUE_MIN


def test_log_uniform_large_table_distribution():
    """Tail resolution: 1M items, checked over log-spaced id ranges."""
    n = 1_000_000
    ids, _ = LogUniformSampler(n).sample(NUM_DRAWS, seed=5)
    edges = torch.unique(torch.logspace(0, math.log10(n), 25).long().clamp(max=n))
    edges = torch.cat([torch.zeros(1, dtype=torch.long), edges])
    # P(k < m) = log(m + 1) / log(N + 1)
    cdf = torch.log(edges.double() + 1) / math.log(n + 1)
    counts = torch.bucketize(ids, edges[1:], right=True).bincount(minlength=edges.numel() - 1)
    assert int(counts.sum()) == NUM_DRAWS
    assert chi2_pvalue(counts, cdf[1:] - cdf[:-1]) > P_VALUE_MIN


@pytest.mark.parametrize("index", range(4), ids=[s[0] for s in samplers()])
def test_log_q_is_log_expected_count_with_replacement(index):
    name, sampler, p = samplers()[index]
    num_samples = 1000
    result = sampler.sample(num_samples, seed=0)
    ids, log_q = result
    assert isinstance(result, SampleResult) and result.num_tries == num_samples
    assert log_q.dtype == torch.float32 and log_q.shape == ids.shape
    torch.testing.assert_close(log_q, torch.log(num_samples * p[ids]).float())
    # Arbitrary ids of any shape, padding (-1) -> 0.
    positives = torch.tensor([[0, 5, -1], [63, 2, 2]])
    expected = torch.log(num_samples * p[positives.clamp_min(0)]).float().masked_fill(
        positives < 0, 0.0)
    torch.testing.assert_close(sampler.log_expected_count(positives, num_samples), expected)
    torch.testing.assert_close(result.log_expected_count(positives), expected)


def test_unigram_never_draws_zero_count_items():
    counts = skewed_counts(500)
    ids, log_q = UnigramSampler(counts).sample(100_000, seed=3)
    assert bool((counts[ids] > 0).all())
    assert bool(torch.isfinite(log_q).all())


def test_unigram_distortion_zero_is_uniform_over_support():
    counts = torch.tensor([0.0, 1.0, 100.0, 0.0, 7.0])
    p = UnigramSampler(counts, distortion=0.0).probabilities()
    torch.testing.assert_close(p, torch.tensor([0, 1 / 3, 1 / 3, 0, 1 / 3], dtype=torch.float64))


def test_unigram_accepts_integer_counts_and_lists():
    a = UnigramSampler(torch.tensor([1, 2, 3, 0]))
    b = UnigramSampler([1.0, 2.0, 3.0, 0.0])
    torch.testing.assert_close(a.probabilities(), b.probabilities())
    torch.testing.assert_close(a.sample(50, seed=1).ids, b.sample(50, seed=1).ids)


# ----------------------------------------------------------------------------------------------
# Sampling without replacement (unique=True)

@pytest.mark.parametrize("index", range(4), ids=[s[0] for s in samplers()])
def test_unique_log_q_formula(index):
    name, sampler, p = samplers(unique=True)[index]
    num_samples = 20
    result = sampler.sample(num_samples, seed=7)
    ids, log_q = result
    assert ids.numel() == num_samples and torch.unique(ids).numel() == num_samples
    assert result.num_tries >= num_samples
    if name == "uniform":  # a uniformly random subset: inclusion probability exactly S/N
        expected = torch.full((num_samples,), math.log(num_samples / p.numel()))
    else:
        expected = torch.log(-torch.expm1(result.num_tries * torch.log1p(-p[ids])))
    torch.testing.assert_close(log_q, expected.float())
    torch.testing.assert_close(result.log_expected_count(torch.arange(p.numel())),
                               sampler.log_expected_count(torch.arange(p.numel()), num_samples,
                                                          num_tries=result.num_tries))


def test_unique_can_take_the_whole_support():
    counts = torch.tensor([5.0, 0.0, 1.0, 1e-3, 2.0])
    ids, log_q = UnigramSampler(counts, unique=True).sample(4, seed=0)
    assert sorted(ids.tolist()) == [0, 2, 3, 4]
    ids, _ = UniformSampler(7, unique=True).sample(7, seed=0)
    assert sorted(ids.tolist()) == list(range(7))
    ids, _ = LogUniformSampler(30, unique=True).sample(30, seed=0)
    assert sorted(ids.tolist()) == list(range(30))


def test_unique_inclusion_frequency_matches():
    """Empirical inclusion frequency vs the expected count log_q claims (averaged over draws).

    Uniform: exact (S/N), so only sampling noise is allowed (5 standard errors). Log-uniform
    and unigram use TF's approximation 1 - (1 - p)^num_tries, which is not exact: with S = 5
    of N = 20 it is off by up to ~10% on a skewed unigram (measured with 20k draws; it
    underestimates mid-probability items), so those get 15% relative + 5 standard errors.
    """
    n, num_samples, trials = 20, 5, 2000
    everything = torch.arange(n)
    for name, sampler, _ in samplers(unique=True, num_items=n):
        g = torch.Generator().manual_seed(11)
        included = torch.zeros(n, dtype=torch.float64)
        claimed = torch.zeros(n, dtype=torch.float64)
        for _ in range(trials):
            result = sampler.sample(num_samples, generator=g)
            included[result.ids] += 1
            claimed += result.log_expected_count(everything).double().exp()
        included /= trials
        claimed /= trials
        # The expected set size is S; TF's approximation undershoots it (4.65 of 5 on unigram).
        total = pytest.approx(num_samples, rel=1e-6 if name == "uniform" else 0.1)
        assert claimed.sum().item() == total, name
        stderr = (included * (1 - included) / trials).sqrt().clamp_min(1e-3)
        relative = 0.0 if name == "uniform" else 0.15
        assert bool(((claimed - included).abs() <= relative * included + 5 * stderr).all()), (
            name, included, claimed)


# ----------------------------------------------------------------------------------------------
# Streaming frequency estimator

def test_hash_is_fixed_and_matches_integer_reference():
    def reference(i: int, m: int) -> int:
        prime = 2**31 - 1
        lo, hi = i & 0x7FFFFFFF, i >> 31
        return ((lo * 1_540_483_477 + (hi % prime) * 668_265_261) % prime) % m

    ids = [0, 1, 2, 12345, 2**31 - 2, 2**31, 2**40 + 17, 2**62 + 3, -5]
    got = hash_bucket(torch.tensor(ids), 1000)
    assert got.tolist() == [reference(i, 1000) for i in ids]
    assert bool(((got >= 0) & (got < 1000)).all())
    # A bijection below 2^31 - 1: no two of 100k dense ids share a hash before the fold.
    dense = hash_bucket(torch.arange(100_000), 2**31 - 1)
    assert torch.unique(dense).numel() == 100_000


def test_estimator_converges_to_expected_count_per_batch():
    """Positives drawn i.i.d. from a Zipf-like p, n per batch: E[count of i in a batch] = n p_i.

    The estimate is a moving average over ~1/alpha occurrences, so a snapshot fluctuates:
    with alpha = 0.003 after 2000 batches it was within 11% for frequent items (seeds 0-4);
    alpha = 0.01 gives up to ~30% snapshot error although its time average is within 7%.
    """
    n_items, batch, steps = 50, 128, 2000
    p = 1.0 / torch.arange(1, n_items + 1, dtype=torch.float64)
    p /= p.sum()
    g = torch.Generator().manual_seed(0)
    stream = torch.multinomial(p, batch * steps, replacement=True, generator=g).view(steps, batch)
    expected = batch * p
    estimator = StreamingFrequencyEstimator(2**16, alpha=0.003)
    assert torch.unique(estimator.bucket(torch.arange(n_items))).numel() == n_items  # no collision
    for positives in stream:
        estimator.update(positives)
    estimate = estimator.log_q(torch.arange(n_items)).double().exp()
    relative = (estimate - expected).abs() / expected
    frequent = expected >= 1.0  # items in (almost) every batch
    occasional = (expected >= 0.3) & ~frequent
    assert int(frequent.sum()) >= 10 and int(occasional.sum()) >= 10
    assert relative[frequent].max() < 0.15, relative[frequent]
    assert relative[occasional].max() < 0.20, relative[occasional]


def test_estimator_unhashed_equals_hashed_without_collisions():
    g = torch.Generator().manual_seed(1)
    stream = torch.randint(0, 40, (50, 32), generator=g)
    hashed = StreamingFrequencyEstimator(2**16, alpha=0.05)
    exact = StreamingFrequencyEstimator(40, alpha=0.05, hash_ids=False)
    assert torch.equal(exact.bucket(torch.arange(40)), torch.arange(40))
    for positives in stream:
        hashed.update(positives)
        exact.update(positives)
    assert torch.equal(hashed.log_q(torch.arange(40)), exact.log_q(torch.arange(40)))


def test_estimator_update_rule_exact_cases():
    estimator = StreamingFrequencyEstimator(64, alpha=0.1, hash_ids=False)
    for t in range(1, 301):
        batch = [0, 0, 0, 0, 1]
        if t % 5 == 0:
            batch.append(2)  # item 2 every 5th step: gap 5
        estimator.update(torch.tensor(batch))
    q = estimator.log_q(torch.tensor([0, 1, 2])).double().exp()
    torch.testing.assert_close(q, torch.tensor([4.0, 1.0, 0.2], dtype=torch.float64), rtol=1e-4,
                               atol=0)
    # Paper's rule for a single hit: B <- (1 - a) B + a (t - A), A <- t.
    e = StreamingFrequencyEstimator(8, alpha=0.5, hash_ids=False)
    e.update(torch.tensor([3]))                                  # t=1: first hit, B = 1
    e.update(torch.tensor([-1]))                                 # t=2: padding only
    e.update(torch.tensor([-1]))                                 # t=3
    e.update(torch.tensor([3]))                                  # t=4: B = 0.5*1 + 0.5*3 = 2
    assert e.mean_gap[3].item() == 2.0 and e.last_step[3].item() == 4 and e.step.item() == 4
    # A bucket never hit: expected count <= 1 per `step` steps.
    assert e.log_q(torch.tensor([5])).item() == pytest.approx(-math.log(4))
    assert e.log_q(torch.tensor([-1])).item() == 0.0  # padding


def test_estimator_state_dict_round_trip():
    g = torch.Generator().manual_seed(2)
    stream = torch.randint(0, 1000, (40, 64), generator=g)
    a = StreamingFrequencyEstimator(4096, alpha=0.05)
    for positives in stream[:20]:
        a.update(positives)
    state = a.state_dict()
    assert set(state) == {"last_step", "mean_gap", "step"}
    b = StreamingFrequencyEstimator(4096, alpha=0.05)
    b.load_state_dict(state)
    for positives in stream[20:]:
        a.update(positives)
        b.update(positives)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    ids = torch.arange(1000)
    assert torch.equal(a.log_q(ids), b.log_q(ids))
    # Carried in the state_dict of whatever holds the sampler.
    holder = torch.nn.ModuleDict({"sampler": InBatchSampler(a)})
    assert "sampler.estimator.mean_gap" in holder.state_dict()


# ----------------------------------------------------------------------------------------------
# In-batch and mixed sampling

def test_in_batch_with_counts():
    counts = torch.tensor([10.0, 5.0, 3.0, 2.0])
    sampler = InBatchSampler(counts=counts)
    positives = torch.tensor([[0, 1], [2, -1], [0, 3]])
    result = sampler.sample(positives=positives)
    ids, log_q = result
    assert torch.equal(ids, positives.reshape(-1))  # aligned with the flattened positives
    p = counts.double() / counts.sum()
    n = 5  # valid positives
    expected = torch.log(n * p[ids.clamp_min(0)]).float()
    valid = ids >= 0
    torch.testing.assert_close(log_q[valid], expected[valid])
    assert log_q[~valid].tolist() == [math.inf]      # padding candidate: dropped by the loss
    pos_log_q = result.log_expected_count(positives)
    assert pos_log_q.shape == positives.shape and pos_log_q[1, 1].item() == 0.0


def test_in_batch_with_estimator_updates_only_in_training():
    estimator = StreamingFrequencyEstimator(128, alpha=0.1, hash_ids=False)
    sampler = InBatchSampler(estimator)
    positives = torch.tensor([1, 1, 2, -1])
    ids, log_q = sampler.sample(positives=positives)
    assert estimator.step.item() == 1
    torch.testing.assert_close(log_q[:3], estimator.log_q(ids[:3]))
    assert log_q[3].item() == math.inf
    sampler.eval()
    sampler.sample(positives=positives)
    assert estimator.step.item() == 1
    no_correction = InBatchSampler().sample(positives=positives).log_q
    assert no_correction[:3].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("unique", [False, True])
def test_mixed_expected_counts_match_monte_carlo(unique):
    """E[occurrences of item i among the candidates] = n p_i + E_other[i]."""
    n_items, n_pos, num_samples, trials = 30, 16, 10, 3000
    counts = skewed_counts(n_items, seed=4, zeros=False)
    p = counts / counts.sum()
    mixed = MixedSampler(InBatchSampler(counts=counts),
                         LogUniformSampler(n_items, unique=unique), num_samples)
    g = torch.Generator().manual_seed(9)
    occurrences = torch.zeros(trials, n_items, dtype=torch.float64)
    claimed = torch.zeros(n_items, dtype=torch.float64)
    everything = torch.arange(n_items)
    for t in range(trials):
        positives = torch.multinomial(p, n_pos, replacement=True, generator=g)
        result = mixed.sample(positives=positives, generator=g)
        assert result.ids.shape == (n_pos + num_samples,)
        assert torch.equal(result.ids[:n_pos], positives)
        # Each candidate's log_q is the combined expected count of its id.
        all_ids = result.log_expected_count(everything)
        torch.testing.assert_close(result.log_q, all_ids[result.ids])
        occurrences[t] = torch.bincount(result.ids, minlength=n_items).double()
        claimed += all_ids.double().exp()
    claimed /= trials
    mean, stderr = occurrences.mean(0), occurrences.std(0) / math.sqrt(trials)
    if not unique:  # exact: n p_i + S q_i, constant across draws
        q = LogUniformSampler(n_items).probabilities()
        torch.testing.assert_close(claimed, n_pos * p + num_samples * q, rtol=1e-6, atol=0)
        assert bool(((claimed - mean).abs() <= 5 * stderr).all())
    else:  # the other part uses TF's approximation (see test_unique_inclusion_frequency_matches)
        assert bool(((claimed - mean).abs() <= 0.1 * mean + 5 * stderr).all())


def test_mixed_with_estimator():
    estimator = StreamingFrequencyEstimator(256, alpha=0.1)
    mixed = MixedSampler(InBatchSampler(estimator), UniformSampler(100), 8)
    positives = torch.tensor([3, 4, 4, 50])
    ids, log_q = mixed.sample(positives=positives, seed=0)
    other = math.log(8 / 100)
    expected = torch.logaddexp(estimator.log_q(ids), torch.full((12,), other))
    torch.testing.assert_close(log_q, expected)


# ----------------------------------------------------------------------------------------------
# Determinism, devices, factory

def all_samplers():
    counts = skewed_counts(200)
    return {
        "uniform": UniformSampler(200),
        "log_uniform": LogUniformSampler(200),
        "unigram": UnigramSampler(counts),
        "uniform_unique": UniformSampler(200, unique=True),
        "log_uniform_unique": LogUniformSampler(200, unique=True),
        "unigram_unique": UnigramSampler(counts, unique=True),
        "mixed": MixedSampler(InBatchSampler(counts=counts), UnigramSampler(counts, 0.75), 50),
    }


@pytest.mark.parametrize("name", list(all_samplers()))
def test_determinism(name):
    sampler = all_samplers()[name]
    kwargs = {"positives": torch.tensor([1, 2, 3])} if sampler.needs_positives else {}
    a = sampler.sample(50, seed=42, **kwargs)
    b = sampler.sample(50, seed=42, **kwargs)
    c = sampler.sample(50, generator=torch.Generator().manual_seed(42), **kwargs)
    d = sampler.sample(50, seed=43, **kwargs)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.ids, c.ids)
    assert torch.equal(a.log_q, b.log_q) and a.num_tries == c.num_tries
    assert not torch.equal(a.ids, d.ids)
    torch.manual_seed(5)
    e = sampler.sample(50, **kwargs)
    torch.manual_seed(5)
    assert torch.equal(e.ids, sampler.sample(50, **kwargs).ids)


@needs_cuda
@pytest.mark.parametrize("name", list(all_samplers()))
def test_cuda_matches_cpu(name):
    sampler = all_samplers()[name]
    kwargs = {"positives": torch.tensor([1, 2, 3])} if sampler.needs_positives else {}
    cpu = sampler.sample(100, seed=3, **kwargs)
    cuda_kwargs = {k: v.cuda() for k, v in kwargs.items()}
    on_cuda = sampler.sample(100, seed=3, device="cuda", **cuda_kwargs)
    moved = sampler.to("cuda").sample(100, seed=3, **cuda_kwargs)  # tables on the GPU
    for result in (on_cuda, moved):
        assert result.ids.is_cuda and result.log_q.is_cuda
        assert torch.equal(result.ids.cpu(), cpu.ids)
        torch.testing.assert_close(result.log_q.cpu(), cpu.log_q)


@needs_cuda
def test_cuda_estimator_and_unigram_from_cuda_counts():
    counts = skewed_counts(300).cuda()
    sampler = UnigramSampler(counts)
    assert sampler.alias.is_cuda and sampler.device.type == "cuda"
    ref = UnigramSampler(counts.cpu())
    assert torch.equal(sampler.sample(5000, seed=1).ids.cpu(), ref.sample(5000, seed=1).ids)
    stream = torch.randint(0, 10_000, (30, 256), generator=torch.Generator().manual_seed(0))
    a, b = StreamingFrequencyEstimator(1 << 12), StreamingFrequencyEstimator(1 << 12).cuda()
    for positives in stream:
        a.update(positives)
        b.update(positives.cuda())
    torch.testing.assert_close(b.log_q(stream[0].cuda()).cpu(), a.log_q(stream[0]))


def test_device_argument_and_module_device():
    sampler = UnigramSampler(skewed_counts(50), device="cpu")
    assert sampler.device == torch.device("cpu") and sampler.alias.device.type == "cpu"
    ids, log_q = sampler.sample(10, seed=0, device=torch.device("cpu"))
    assert ids.device.type == "cpu" and log_q.device.type == "cpu"
    assert sampler(10, seed=0).ids.tolist() == ids.tolist()  # calling the module samples


def test_make_sampler():
    counts = skewed_counts(100)
    assert isinstance(make_sampler("uniform", 100), UniformSampler)
    assert isinstance(make_sampler("log_uniform", 100, unique=True), LogUniformSampler)
    unigram = make_sampler("unigram", counts=counts, distortion=0.75)
    assert isinstance(unigram, UnigramSampler) and unigram.num_items == 100
    in_batch = make_sampler("in_batch", 100)
    assert isinstance(in_batch, InBatchSampler) and in_batch.estimator.num_buckets == 100
    assert not in_batch.estimator.hash_ids
    hashed = make_sampler("in_batch", num_buckets=1 << 10)
    assert hashed.estimator.hash_ids
    assert make_sampler("in_batch", 100, counts).probs is not None
    mixed = make_sampler("mixed", 100, num_samples=20)
    assert isinstance(mixed, MixedSampler) and isinstance(mixed.other, UniformSampler)
    mixed_unigram = make_sampler("mixed", counts=counts, num_samples=5, other="unigram")
    assert isinstance(mixed_unigram.other, UnigramSampler)
    existing = UniformSampler(3)
    assert make_sampler(existing) is existing
    assert isinstance(existing, Sampler)


# ----------------------------------------------------------------------------------------------
# Argument errors

@pytest.mark.parametrize("build, error, match", [
    (lambda: UniformSampler(0), ValueError, "num_items"),
    (lambda: LogUniformSampler(-3), ValueError, "num_items"),
    (lambda: UniformSampler(2.5), TypeError, "num_items"),
    (lambda: UniformSampler(True), TypeError, "num_items"),
    (lambda: UnigramSampler(torch.tensor([1.0, -1.0])), ValueError, "counts.*non-negative"),
    (lambda: UnigramSampler(torch.zeros(5)), ValueError, "counts.*zero"),
    (lambda: UnigramSampler(torch.tensor([1.0, float("nan")])), ValueError, "counts.*finite"),
    (lambda: UnigramSampler(torch.tensor([True, False])), TypeError, "counts"),
    (lambda: UnigramSampler(torch.ones(2, 2)), ValueError, "counts.*1-D"),
    (lambda: UnigramSampler(torch.empty(0)), ValueError, "counts"),
    (lambda: UnigramSampler(torch.ones(3), distortion=-1.0), ValueError, "distortion"),
    (lambda: UniformSampler(5, unique=True).sample(6, seed=0), ValueError, "num_samples"),
    (lambda: UnigramSampler(torch.tensor([1.0, 0, 0, 1]), unique=True).sample(3, seed=0),
     ValueError, "num_samples"),
    (lambda: UniformSampler(5).sample(-1), ValueError, "num_samples"),
    (lambda: UniformSampler(5).sample(2.0), TypeError, "num_samples"),
    (lambda: UniformSampler(5).sample(), TypeError, "num_samples"),
    (lambda: UniformSampler(5).sample(2, seed=1, generator=torch.Generator()), ValueError,
     "generator or seed"),
    (lambda: UniformSampler(5).sample(2, seed=1.5), TypeError, "seed"),
    (lambda: UniformSampler(5).sample(2, generator=3), TypeError, "generator"),
    (lambda: UniformSampler(5).log_expected_count(torch.tensor([1.0]), 3), TypeError, "ids"),
    (lambda: LogUniformSampler(5, unique=True).log_expected_count(torch.tensor([1]), 3),
     ValueError, "num_tries"),
    (lambda: InBatchSampler(counts=torch.ones(3)).sample(), ValueError, "positives"),
    (lambda: InBatchSampler().sample(positives=torch.tensor([0.5])), TypeError, "positives"),
    (lambda: InBatchSampler(StreamingFrequencyEstimator(4), torch.ones(3)), ValueError,
     "estimator or counts"),
    (lambda: MixedSampler(InBatchSampler(), UniformSampler(3), 2), ValueError, "in_batch"),
    (lambda: MixedSampler(InBatchSampler(counts=torch.ones(3)), InBatchSampler(), 2), TypeError,
     "other"),
    (lambda: StreamingFrequencyEstimator(0), ValueError, "num_buckets"),
    (lambda: StreamingFrequencyEstimator(10, alpha=0.0), ValueError, "alpha"),
    (lambda: StreamingFrequencyEstimator(10, alpha=1.5), ValueError, "alpha"),
    (lambda: StreamingFrequencyEstimator(10).update(torch.tensor([1.0])), TypeError, "ids"),
    (lambda: make_sampler("popular", 10), ValueError, "unknown sampler"),
    (lambda: make_sampler("unigram", 10), ValueError, "counts"),
    (lambda: make_sampler("uniform"), ValueError, "num_items"),
    (lambda: make_sampler("mixed", 10), ValueError, "num_samples"),
    (lambda: make_sampler("unigram", 4, torch.ones(5)), ValueError, "num_items"),
])
def test_bad_arguments_raise(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_unique_gives_up_instead_of_looping_forever():
    from fastsoftmax.sampling import _draw_unique

    sampler = UnigramSampler(torch.tensor([1.0, 1e-12]))  # the second id needs ~1e12 draws
    with pytest.raises(RuntimeError, match="fewer than num_samples"):
        _draw_unique(sampler._draw, 2, torch.Generator().manual_seed(0), max_tries=10_000)


# ----------------------------------------------------------------------------------------------
# The fused alias-table kernel (fastsoftmax::alias_sample)

def _alias_table(n: int = 1000):
    sampler = UnigramSampler(skewed_counts(n))
    return sampler.alias_prob, sampler.alias, sampler.log_probs


def _alias_ids(prob, alias, num, seed, offset):
    ids, log_q = torch.ops.fastsoftmax.alias_sample(prob, alias, num, seed, offset)
    assert log_q.shape == (0,)  # no log_weight: no log_q
    return ids


@pytest.mark.parametrize("seed, offset", [(0, 0), (7, 3), (2**62 + 5, 2**40 + 1)])
def test_alias_sample_op_matches_reference(seed, offset):
    from fastsoftmax.reference import alias_sample_reference

    prob, alias, log_p = _alias_table()
    ids = _alias_ids(prob, alias, 20_000, seed, offset)
    assert ids.dtype == torch.int64 and ids.shape == (20_000,)
    assert torch.equal(ids, alias_sample_reference(prob, alias, 20_000, seed, offset))
    # With log_weight, the same ids and log_weight[id] + log_shift beside them.
    ids2, log_q = torch.ops.fastsoftmax.alias_sample(prob, alias, 20_000, seed, offset, log_p,
                                                     math.log(20_000))
    assert torch.equal(ids2, ids)
    assert log_q.dtype == torch.float32
    torch.testing.assert_close(log_q, log_p[ids] + math.log(20_000))


def test_alias_sample_op_is_independent_of_the_thread_count():
    prob, alias, _ = _alias_table()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _alias_ids(prob, alias, 100_000, 11, 0)
        torch.set_num_threads(max(2, threads))
        many = _alias_ids(prob, alias, 100_000, 11, 0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)
    # A prefix of a longer draw is the shorter draw; another offset is another stream.
    assert torch.equal(_alias_ids(prob, alias, 100, 11, 0), one[:100])
    assert not torch.equal(_alias_ids(prob, alias, 100, 11, 1), one[:100])


def test_alias_sample_op_edge_cases_and_opcheck():
    prob, alias, log_p = _alias_table(5)
    assert _alias_ids(prob, alias, 0, 1, 0).shape == (0,)
    single = _alias_ids(torch.ones(1), torch.zeros(1, dtype=torch.long), 1000, 3, 0)
    assert torch.equal(single, torch.zeros(1000, dtype=torch.long))
    op = torch.ops.fastsoftmax.alias_sample.default
    torch.library.opcheck(op, (prob, alias, 64, 5, 2))
    torch.library.opcheck(op, (prob, alias, 64, 5, 2, log_p, 1.5))


@pytest.mark.parametrize("args, match", [
    ((torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.long), 4), "alias_prob"),
    ((torch.ones(3), torch.zeros(3, dtype=torch.int32), 4), "alias must"),
    ((torch.ones(3), torch.zeros(4, dtype=torch.long), 4), "entries"),
    ((torch.ones(0), torch.zeros(0, dtype=torch.long), 4), "empty"),
    ((torch.ones(3), torch.zeros(3, dtype=torch.long), -1), "num"),
])
def test_alias_sample_op_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        torch.ops.fastsoftmax.alias_sample(*args, 0, 0)


def test_alias_sample_op_bad_log_weight():
    prob, alias, _ = _alias_table(5)
    for bad in (torch.zeros(4), torch.zeros(5, dtype=torch.float64)):
        with pytest.raises(ValueError, match="log_weight"):
            torch.ops.fastsoftmax.alias_sample(prob, alias, 3, 0, 0, bad, 0.0)


@needs_cuda
def test_alias_sample_op_cuda_matches_cpu():
    prob, alias, log_p = _alias_table()
    cpu_ids, cpu_lq = torch.ops.fastsoftmax.alias_sample(prob, alias, 50_000, 9, 4, log_p, 2.0)
    ids, lq = torch.ops.fastsoftmax.alias_sample(prob.cuda(), alias.cuda(), 50_000, 9, 4,
                                                 log_p.cuda(), 2.0)
    assert ids.is_cuda and torch.equal(ids.cpu(), cpu_ids)
    torch.testing.assert_close(lq.cpu(), cpu_lq)
