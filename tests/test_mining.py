"""Tests of fastsoftmax.mine_hard_negatives: top-k against a float64 sort, sampling against the
float64 inverse CDF with the same Philox uniforms, chi-square of pick frequencies, the
Horvitz-Thompson log_q, exclusions, determinism, edge cases, dtypes, opcheck, torch.compile,
bad input, and CPU <-> CUDA parity."""
import math

import pytest
import torch

import fastsoftmax
from fastsoftmax.reference import (
    mine_hard_negatives_reference,
    philox4x32_10,
    philox_uniforms,
)
from fastsoftmax.sampling import UnigramSampler

from conftest import assert_close_to_reference, requires_cuda
from test_sampling import P_VALUE_MIN, chi2_pvalue

mine = fastsoftmax.mine_hard_negatives


def make_problem(B=23, P=150, d=12, T=3, num_ids=60, dtype=torch.float32, integer=False,
                 seed=0, device="cpu"):
    """Query, pool, pool ids with repeats, exclusions with -1 padding, pool log Q."""
    g = torch.Generator().manual_seed(seed)
    if integer:  # small integers: exact scores in fp32 and many exact ties
        q = torch.randint(-2, 3, (B, d), generator=g).to(dtype)
        pool = torch.randint(-2, 3, (P, d), generator=g).to(dtype)
    else:
        q = torch.randn(B, d, generator=g, dtype=torch.float64).to(dtype)
        pool = torch.randn(P, d, generator=g, dtype=torch.float64).to(dtype)
    pool_ids = torch.randint(0, num_ids, (P,), generator=g)
    exclude = torch.randint(0, num_ids, (B, T), generator=g)
    exclude[torch.rand(B, T, generator=g) < 0.3] = -1
    log_q = torch.randn(P, generator=g, dtype=torch.float64).float()
    return [t.to(device) for t in (q, pool, pool_ids, exclude, log_q)]


def excluded_mask(pool_ids, exclude):
    """[B, P] bool: pool row i is excluded for row b."""
    ex = exclude.reshape(exclude.shape[0], -1)
    return ((pool_ids.view(1, -1, 1) == ex.unsqueeze(1)) & (ex >= 0).unsqueeze(1)).any(2)


def assert_unique_per_row(index):
    for row in index:
        valid = row[row >= 0]
        assert valid.unique().numel() == valid.numel(), f"duplicate index in {row.tolist()}"


def assert_inverse_cdf(index, scores64, u, tol):
    """Every pick i of draw u satisfies cdf(i - 1) - tol <= u < cdf(i) + tol under the float64
    distribution softmax(scores64) (rows with no eligible item must have index -1)."""
    log_p = scores64 - torch.logsumexp(scores64, 1, keepdim=True)
    cdf = torch.cumsum(log_p.exp(), 1)
    for b in range(index.shape[0]):
        if not bool(torch.isfinite(scores64[b]).any()):
            assert bool((index[b] == -1).all())
            continue
        i = index[b]
        assert bool((i >= 0).all())
        assert bool(torch.isfinite(scores64[b, i]).all()), "an excluded pool row was picked"
        upper = cdf[b, i]
        lower = torch.where(i > 0, cdf[b, (i - 1).clamp_min(0)], torch.zeros_like(upper))
        assert bool((u[b] >= lower - tol).all() and (u[b] < upper + tol).all())


# ---------------------------------------------------------------------------------- topk mode


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("num", [1, 7, 64])
def test_topk_equals_sorted_reference_with_ties(dtype, num):
    # Integer inputs: fp32 scores are exact, ties are everywhere, so the lower-index rule and the
    # exclusions are checked exactly against a stable float64 sort.
    q, pool, pool_ids, exclude, log_q = make_problem(P=150, integer=True, dtype=dtype)
    index, lq = mine(q, pool, num, pool_ids=pool_ids, exclude_ids=exclude, pool_log_q=log_q,
                     mode="topk")
    ref_index, ref_lq, scores = mine_hard_negatives_reference(
        q, pool, num, pool_ids=pool_ids, exclude_ids=exclude, pool_log_q=log_q, mode="topk")
    assert index.dtype == torch.int64 and index.shape == (q.shape[0], num)
    assert lq.dtype == fastsoftmax.ops.acc_dtype(dtype)
    torch.testing.assert_close(index, ref_index, rtol=0, atol=0)
    torch.testing.assert_close(lq.double(), ref_lq, rtol=0, atol=1e-7)
    assert_unique_per_row(index)


def test_topk_values_equal_reference_random_inputs():
    # Real-valued fp32: indices may differ from the float64 sort only between values that fp32
    # cannot tell apart; the values at our indices must match the sorted reference values.
    q, pool, pool_ids, exclude, log_q = make_problem(B=70, P=1300, d=32)
    index, _ = mine(q, pool, 40, pool_ids=pool_ids, exclude_ids=exclude, mode="topk")
    _, _, scores = mine_hard_negatives_reference(q, pool, 40, pool_ids=pool_ids,
                                                 exclude_ids=exclude, mode="topk")
    ours = scores.gather(1, index)
    expected = scores.sort(1, descending=True).values[:, :40]
    assert_close_to_reference(ours, expected, torch.float32)
    assert not bool(excluded_mask(pool_ids, exclude).gather(1, index).any())
    assert_unique_per_row(index)


def test_topk_pads_rows_with_too_few_eligible_items():
    q, pool, _, _, _ = make_problem(B=3, P=5, integer=True)
    exclude = torch.tensor([[0, 1, 2], [0, 1, 2], [-1, -1, -1]])
    exclude[1] = torch.tensor([0, 1, 4])
    index, lq = mine(q, pool, 4, exclude_ids=exclude, mode="topk")
    assert (index[0, 2:] == -1).all() and (index[0, :2] >= 3).all()
    assert (index[2] >= 0).all()
    assert torch.isinf(lq[0, 2:]).all() and (lq[0, :2] == 0).all()
    ref_index, _, _ = mine_hard_negatives_reference(q, pool, 4, exclude_ids=exclude, mode="topk")
    torch.testing.assert_close(index, ref_index)


def test_topk_log_q_is_the_pool_correction_only():
    q, pool, pool_ids, exclude, log_q = make_problem()
    index, lq = mine(q, pool, 10, pool_log_q=log_q, mode="topk", temperature=0.3)
    torch.testing.assert_close(lq, log_q[index])
    index2, lq2 = mine(q, pool, 10, mode="topk")
    torch.testing.assert_close(index2, index)   # the temperature does not change a top-k
    assert (lq2 == 0).all()


# -------------------------------------------------------------------------------- sample mode


def test_philox_matches_known_answers():
    # Known-answer vectors of Philox4x32-10 (Random123, Salmon et al. 2011).
    cases = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
             ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6,
                                                    0x6D5451FD)),
             ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
              (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for counter, key, expected in cases:
        assert tuple(int(w) for w in philox4x32_10(counter, key)) == expected


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sample_equals_float64_reference_exactly(temperature):
    # In float64 the kernel's CDF and the reference's agree to ~1e-15, so with the same Philox
    # uniforms every pick is the same (this also pins the stream layout of philox.h).
    q, pool, pool_ids, exclude, log_q = make_problem(B=70, P=1100, d=8, dtype=torch.float64)
    kw = dict(pool_ids=pool_ids, exclude_ids=exclude, pool_log_q=log_q, temperature=temperature)
    index, lq = mine(q, pool, 50, generator=1234, **kw)
    ref_index, ref_lq, _ = mine_hard_negatives_reference(q, pool, 50, seed=1234, **kw)
    torch.testing.assert_close(index, ref_index, rtol=0, atol=0)
    torch.testing.assert_close(lq, ref_lq, rtol=1e-12, atol=1e-12)


def test_sample_fp32_is_the_inverse_cdf_and_log_q_formula():
    q, pool, pool_ids, exclude, log_q = make_problem(B=40, P=700, d=16)
    num, seed = 33, 99
    index, lq = mine(q, pool, num, pool_ids=pool_ids, exclude_ids=exclude, pool_log_q=log_q,
                     temperature=0.8, generator=seed)
    _, _, scores = mine_hard_negatives_reference(q, pool, num, pool_ids=pool_ids,
                                                 exclude_ids=exclude, temperature=0.8)
    assert_inverse_cdf(index, scores, philox_uniforms(seed, 0, 40, num), tol=1e-5)
    # log_q = log Q_pool + log H + log pi_b(i), pi_b over the eligible pool.
    log_pi = (scores - torch.logsumexp(scores, 1, keepdim=True)).gather(1, index)
    expected = log_q.double()[index] + math.log(num) + log_pi
    torch.testing.assert_close(lq.double(), expected, rtol=0, atol=1e-5)


def test_pick_frequencies_match_softmax_chi_square():
    q, pool, pool_ids, exclude, _ = make_problem(B=4, P=40, d=4, num_ids=25, T=4)
    num = 50_000
    index, _ = mine(q, pool, num, pool_ids=pool_ids, exclude_ids=exclude, temperature=0.7,
                    generator=2024)
    scores = (q.double() @ pool.double().T / 0.7).masked_fill(excluded_mask(pool_ids, exclude),
                                                              float("-inf"))
    probs = torch.softmax(scores, 1)
    for b in range(4):
        counts = torch.bincount(index[b], minlength=40)
        assert chi2_pvalue(counts, probs[b]) > P_VALUE_MIN
    # The test has power: the same counts against the untempered softmax are rejected.
    wrong = torch.softmax(scores * 0.7, 1)
    assert chi2_pvalue(torch.bincount(index[0], minlength=40), wrong[0]) < 1e-6


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_log_q_gives_unbiased_partition_estimate(temperature):
    # The pool is drawn from a known sampler (S draws with replacement, log Q = log S p_j); the
    # mean over many seeds of sum_h exp(s_bh - log_q_bh) must approach the corpus sum
    # sum_j exp(s_bj) over non-excluded items. The estimator uses f = exp(q.e) (temperature 1)
    # while mining samples at `temperature`, so it is not a constant and the test has power.
    g = torch.Generator().manual_seed(5)
    N, d, B, S, H, reps = 40, 6, 3, 25, 8, 800
    table = torch.randn(N, d, generator=g, dtype=torch.float64) * 0.7
    q = torch.randn(B, d, generator=g, dtype=torch.float64) * 0.7
    counts = torch.rand(N, generator=g, dtype=torch.float64) + 0.2
    sampler = UnigramSampler(counts)
    exclude = torch.tensor([[3], [7], [-1]])
    f = torch.exp(q @ table.T)                                          # [B, N]
    exact = f.masked_fill(excluded_mask(torch.arange(N), exclude), 0).sum(1)
    estimates = torch.empty(reps, B, dtype=torch.float64)
    for r in range(reps):
        ids, pool_log_q = sampler.sample(S, generator=g)
        index, lq = mine(q, table[ids], H, pool_ids=ids, exclude_ids=exclude,
                         pool_log_q=pool_log_q, temperature=temperature, generator=r)
        assert (index >= 0).all()
        picked = ids[index]
        estimates[r] = torch.exp(torch.log(f.gather(1, picked)) - lq).sum(1)
    mean, stderr = estimates.mean(0), estimates.std(0) / math.sqrt(reps)
    assert bool(((mean - exact).abs() < 4 * stderr + 1e-3 * exact).all()), (mean, exact, stderr)
    # Dropping log(H) from log_q would be off by a factor H: far outside these bounds.
    assert bool(((mean * H - exact).abs() > 10 * stderr * H).all())


def test_exclusions_are_never_picked():
    q, pool, pool_ids, exclude, _ = make_problem(B=30, P=60, num_ids=20, T=5)
    # Make the excluded rows the highest-scoring ones so that mining would love them.
    mask = excluded_mask(pool_ids, exclude)
    for mode in ("sample", "topk"):
        index, _ = mine(q * 5, pool, 20, pool_ids=pool_ids, exclude_ids=exclude, mode=mode,
                        generator=3)
        valid = index >= 0
        assert not bool(mask.gather(1, index.clamp_min(0))[valid].any())
    # exclude_ids [B] and without pool_ids (ids are pool rows).
    row_ids = torch.arange(30) % 60
    index, _ = mine(q, pool, 100, exclude_ids=row_ids, generator=4)
    assert not bool((index == row_ids[:, None]).any())


def test_determinism_seeds_offsets_generators_threads():
    q, pool, pool_ids, exclude, log_q = make_problem(B=150, P=700)
    kw = dict(pool_ids=pool_ids, exclude_ids=exclude, pool_log_q=log_q)
    a = mine(q, pool, 16, generator=11, **kw)
    b = mine(q, pool, 16, generator=11, **kw)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a[0], mine(q, pool, 16, generator=12, **kw)[0])
    assert not torch.equal(a[0], mine(q, pool, 16, generator=11, offset=1, **kw)[0])
    # A torch.Generator seeds the op by one draw: same state, same picks; it advances.
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    first = mine(q, pool, 16, generator=g1, **kw)[0]
    torch.testing.assert_close(first, mine(q, pool, 16, generator=g2, **kw)[0])
    assert not torch.equal(first, mine(q, pool, 16, generator=g1, **kw)[0])
    # Results do not depend on the number of threads.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = mine(q, pool, 16, generator=11, **kw)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(single, a, rtol=0, atol=0)
    # Negative and > 2^63 seeds are reduced mod 2^64 like any int.
    torch.testing.assert_close(mine(q, pool, 4, generator=-1)[0],
                               mine(q, pool, 4, generator=2**64 - 1)[0])


def test_draw_columns_are_independent_draws():
    # Column h is draw h: the first k columns of an H-draw call are the k-draw call.
    q, pool, _, _, _ = make_problem()
    full, _ = mine(q, pool, 40, generator=8)
    part, _ = mine(q, pool, 15, generator=8)
    torch.testing.assert_close(full[:, :15], part)


def test_large_pool_recomputes_tiles():
    # P beyond the per-thread score cache (64 x 32768 scores): pass 2 recomputes its tiles.
    q, pool, pool_ids, exclude, log_q = make_problem(B=5, P=40_000, d=4, num_ids=30_000,
                                                     dtype=torch.float64)
    kw = dict(pool_ids=pool_ids, exclude_ids=exclude, pool_log_q=log_q)
    for mode in ("sample", "topk"):
        index, lq = mine(q, pool, 30, mode=mode, generator=6, **kw)
        ref_index, ref_lq, _ = mine_hard_negatives_reference(q, pool, 30, mode=mode, seed=6,
                                                             **kw)
        torch.testing.assert_close(index, ref_index, rtol=0, atol=0)
        torch.testing.assert_close(lq, ref_lq, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------- edge cases


def test_empty_batch_single_item_pool_and_all_excluded_rows():
    q, pool, _, _, _ = make_problem(B=4, P=1)
    for mode in ("sample", "topk"):
        index, lq = mine(q[:0], pool, 1, mode=mode)
        assert index.shape == (0, 1) and lq.shape == (0, 1)
    index, lq = mine(q, pool, 5, pool_log_q=torch.tensor([-2.0]), generator=0)
    assert (index == 0).all()
    torch.testing.assert_close(lq, torch.full((4, 5), -2.0 + math.log(5)))
    index, lq = mine(q, pool, 1, mode="topk")
    assert (index == 0).all() and (lq == 0).all()
    # Row 1 excludes the only item: -1 and +inf, in both modes.
    exclude = torch.tensor([-1, 0, -1, -1])
    for mode, num in (("sample", 3), ("topk", 1)):
        index, lq = mine(q, pool, num, exclude_ids=exclude, mode=mode, generator=0)
        assert (index[1] == -1).all() and torch.isinf(lq[1]).all() and (lq[1] > 0).all()
        assert (index[[0, 2, 3]] == 0).all()
    # An empty pool in sample mode: nothing to draw.
    index, lq = mine(q, pool[:0], 2, generator=0)
    assert (index == -1).all() and torch.isinf(lq).all()


def test_outputs_feed_sampled_softmax_including_padding_rows():
    q, pool, pool_ids, exclude, log_q = make_problem(B=6, P=8, num_ids=4, T=4)
    q.requires_grad_()
    exclude[0] = torch.arange(4)   # row 0: every pool row excluded -> all -1
    index, lq = mine(q, pool, 5, pool_ids=pool_ids, exclude_ids=exclude, pool_log_q=log_q,
                     generator=1)
    assert not index.requires_grad and not lq.requires_grad
    assert (index[0] == -1).all()
    pos = torch.randn(6, q.shape[1])
    loss = fastsoftmax.sampled_softmax_cross_entropy(
        q, pos, pool, candidate_index=index, candidate_log_q=lq, reduction="none")
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(q.grad).all()


def test_non_contiguous_inputs():
    q, pool, pool_ids, exclude, log_q = make_problem(B=20, P=90)
    q_nc = torch.stack([q, q], 2)[..., 0]
    pool_nc = pool.T.contiguous().T
    ids_nc = torch.stack([pool_ids, pool_ids], 1)[:, 0]
    ex_nc = exclude.T.contiguous().T
    lq_nc = torch.stack([log_q, log_q], 1)[:, 1]
    assert not (q_nc.is_contiguous() or pool_nc.is_contiguous() or ids_nc.is_contiguous()
                or ex_nc.is_contiguous() or lq_nc.is_contiguous())
    for mode in ("sample", "topk"):
        expected = mine(q, pool, 9, pool_ids=pool_ids, exclude_ids=exclude, pool_log_q=log_q,
                        mode=mode, generator=5)
        got = mine(q_nc, pool_nc, 9, pool_ids=ids_nc, exclude_ids=ex_nc, pool_log_q=lq_nc,
                   mode=mode, generator=5)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_accumulate_in_fp32(dtype):
    q, pool, pool_ids, exclude, log_q = make_problem(B=30, P=300, d=24, dtype=dtype)
    kw = dict(pool_ids=pool_ids, exclude_ids=exclude, pool_log_q=log_q)
    for mode in ("sample", "topk"):
        index, lq = mine(q, pool, 12, mode=mode, generator=9, **kw)
        assert lq.dtype == torch.float32
        # The kernel widens fp16/bf16 to fp32 before the products: the same as fp32 inputs.
        index32, lq32 = mine(q.float(), pool.float(), 12, mode=mode, generator=9, **kw)
        torch.testing.assert_close(index, index32, rtol=0, atol=0)
        torch.testing.assert_close(lq, lq32, rtol=0, atol=0)
    # And the top-k values are right for the low-precision inputs (flash-attention rule).
    index, _ = mine(q, pool, 12, mode="topk", **kw)
    _, _, s64 = mine_hard_negatives_reference(q, pool, 12, mode="topk", **kw)
    _, _, s_low = mine_hard_negatives_reference(q, pool, 12, mode="topk", dtype=dtype, **kw)
    expected = s64.sort(1, descending=True).values[:, :12]
    lowp = s_low.double().sort(1, descending=True).values[:, :12]
    assert_close_to_reference(s64.gather(1, index), expected, dtype, lowp_reference=lowp)


# ------------------------------------------------------------------------ opcheck and compile


@pytest.mark.parametrize("mode", ["sample", "topk"])
def test_opcheck(mode):
    q, pool, pool_ids, exclude, log_q = make_problem(B=9, P=40)
    args = (q, pool, pool_ids, exclude, log_q, 5, mode, 0.9, 17, 3)
    torch.library.opcheck(torch.ops.fastsoftmax.mine_hard_negatives.default, args)
    args = (q, pool, None, None, None, 5, mode, 1.0, 0, 0)
    torch.library.opcheck(torch.ops.fastsoftmax.mine_hard_negatives.default, args)


def test_torch_compile_fullgraph_matches_eager():
    q, pool, pool_ids, exclude, log_q = make_problem(B=16, P=64)
    pos = torch.randn(16, q.shape[1])

    def step(q, pos, pool, seed):
        index, lq = fastsoftmax.mine_hard_negatives(q, pool, 8, pool_ids=pool_ids,
                                                    exclude_ids=exclude, pool_log_q=log_q,
                                                    generator=seed)
        top, _ = fastsoftmax.mine_hard_negatives(q, pool, 4, mode="topk")
        loss = fastsoftmax.sampled_softmax_cross_entropy(q, pos, pool, candidate_index=index,
                                                         candidate_log_q=lq)
        return loss, index, top

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(q, pos, pool, 21), step(q, pos, pool, 21)):
        torch.testing.assert_close(got, want)


# -------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("changes, error, match", [
    (dict(num=0), ValueError, "num must be > 0"),
    (dict(num=2.0), TypeError, "num must be an int"),
    (dict(num=31, mode="topk"), ValueError, "num must be <= the pool size"),
    (dict(mode="gumbel"), ValueError, "mode must be one of"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(query=torch.randn(4)), ValueError, "query must be 2-D"),
    (dict(query=torch.ones(4, 6, dtype=torch.int64)), TypeError, "query must have dtype"),
    (dict(pool=torch.randn(30, 5)), ValueError, "pool must be"),
    (dict(pool=torch.randn(30, 6, dtype=torch.float64)), TypeError, "pool must have dtype"),
    (dict(pool_ids=torch.arange(30, dtype=torch.int32)), TypeError, "pool_ids must have dtype"),
    (dict(pool_ids=torch.arange(29)), ValueError, "pool_ids must have shape"),
    (dict(exclude_ids=torch.zeros(4, 2, dtype=torch.int32)), TypeError, "exclude_ids must have"),
    (dict(exclude_ids=torch.zeros(3, 2, dtype=torch.int64)), ValueError, "exclude_ids must be"),
    (dict(exclude_ids=torch.full((4,), -2)), ValueError, "exclude_ids has an entry -2"),
    (dict(pool_log_q=torch.zeros(29)), ValueError, "pool_log_q must have shape"),
    (dict(pool_log_q=torch.full((30,), float("nan"))), ValueError, "pool_log_q contains NaN"),
    (dict(generator="seed"), TypeError, "generator must be"),
    (dict(offset=1.5), TypeError, "offset must be an int"),
])
def test_bad_input_raises_naming_the_argument(changes, error, match):
    kw = dict(query=torch.randn(4, 6), pool=torch.randn(30, 6), num=3, generator=0)
    kw.update(changes)
    with pytest.raises(error, match=match):
        mine(kw.pop("query"), kw.pop("pool"), kw.pop("num"), **kw)


@requires_cuda
def test_device_mismatch_raises():
    with pytest.raises(ValueError, match="pool is on"):
        mine(torch.randn(4, 6), torch.randn(30, 6, device="cuda"), 3)


def test_native_op_checks_arguments_directly():
    op = torch.ops.fastsoftmax.mine_hard_negatives
    q, pool = torch.randn(4, 6), torch.randn(30, 6)
    with pytest.raises(RuntimeError, match="mode must be 'sample' or 'topk'"):
        op(q, pool, None, None, None, 3, "best", 1.0, 0, 0)
    with pytest.raises(RuntimeError, match="num must be <= the pool size"):
        op(q, pool, None, None, None, 31, "topk", 1.0, 0, 0)
    with pytest.raises(RuntimeError, match="exclude_ids must be int64"):
        op(q, pool, None, torch.zeros(4, 1, dtype=torch.int32), None, 3, "sample", 1.0, 0, 0)
    with pytest.raises(RuntimeError, match="temperature must be"):
        op(q, pool, None, None, None, 3, "sample", 0.0, 0, 0)


# ------------------------------------------------------------------------ CPU <-> CUDA parity


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_cuda_matches_cpu(dtype):
    # Integer-valued inputs below float64: the scores are exact on both devices, so the top-k
    # (ties included) must agree exactly.
    cpu = make_problem(B=300, P=2500, d=32, dtype=dtype, integer=dtype != torch.float64)
    cuda = [t.cuda() for t in cpu]
    kw = lambda t: dict(pool_ids=t[2], exclude_ids=t[3], pool_log_q=t[4])  # noqa: E731
    i_cpu, l_cpu = mine(cpu[0], cpu[1], 64, mode="topk", **kw(cpu))
    i_gpu, l_gpu = mine(cuda[0], cuda[1], 64, mode="topk", **kw(cuda))
    torch.testing.assert_close(i_gpu.cpu(), i_cpu, rtol=0, atol=0)
    torch.testing.assert_close(l_gpu.cpu(), l_cpu, rtol=0, atol=0)
    # Sampling: the same Philox uniforms on both devices. In float64 the CDFs agree to ~1e-15, so
    # every pick is the same; below it the log-sum-exp is summed in a different order, which moves
    # a pick only when a uniform lies within ~1e-6 of a CDF step.
    i_cpu, l_cpu = mine(cpu[0], cpu[1], 64, generator=77, temperature=3.0, **kw(cpu))
    i_gpu, l_gpu = mine(cuda[0], cuda[1], 64, generator=77, temperature=3.0, **kw(cuda))
    i_gpu, l_gpu = i_gpu.cpu(), l_gpu.cpu()
    if dtype == torch.float64:
        torch.testing.assert_close(i_gpu, i_cpu, rtol=0, atol=0)
        torch.testing.assert_close(l_gpu, l_cpu, rtol=1e-10, atol=1e-10)
    else:
        same = i_cpu == i_gpu
        assert same.float().mean() > 0.999
        torch.testing.assert_close(l_gpu[same], l_cpu[same], rtol=1e-5, atol=1e-5)


@requires_cuda
def test_cuda_topk_random_fp32_values_and_sample_inverse_cdf():
    cpu = make_problem(B=200, P=5000, d=64)
    q, pool, pool_ids, exclude, log_q = [t.cuda() for t in cpu]
    index, _ = mine(q, pool, 100, pool_ids=pool_ids, exclude_ids=exclude, mode="topk")
    _, _, scores = mine_hard_negatives_reference(*cpu[:2], 100, pool_ids=cpu[2],
                                                 exclude_ids=cpu[3], mode="topk")
    index = index.cpu()
    assert_unique_per_row(index)
    assert_close_to_reference(scores.gather(1, index),
                              scores.sort(1, descending=True).values[:, :100], torch.float32)
    index, _ = mine(q, pool, 500, pool_ids=pool_ids, exclude_ids=exclude, generator=5)
    assert_inverse_cdf(index.cpu(), scores, philox_uniforms(5, 0, 200, 500), tol=1e-5)


@requires_cuda
def test_cuda_num_limits():
    q, pool = torch.randn(4, 8, device="cuda"), torch.randn(5000, 8, device="cuda")
    with pytest.raises(RuntimeError, match="num must be <= 4096 in sample mode on CUDA"):
        mine(q, pool, 4097, generator=0)
    with pytest.raises(RuntimeError, match="num must be <= 1024 in topk mode on CUDA"):
        mine(q, pool, 1025, mode="topk")
    # The largest allowed sizes work.
    index, _ = mine(q, pool, 4096, generator=0)
    assert (index >= 0).all()
    index, _ = mine(q, pool, 1024, mode="topk")
    assert_unique_per_row(index.cpu())


@requires_cuda
def test_cuda_edge_cases_and_exclusions():
    q, pool, pool_ids, exclude, log_q = make_problem(B=50, P=70, num_ids=20, T=5, device="cuda")
    mask = excluded_mask(pool_ids, exclude)
    for mode in ("sample", "topk"):
        index, lq = mine(q * 5, pool, 20, pool_ids=pool_ids, exclude_ids=exclude, mode=mode,
                         generator=3)
        valid = index >= 0
        assert not bool(mask.gather(1, index.clamp_min(0))[valid].any())
        assert bool(torch.isinf(lq[~valid]).all())
        index, lq = mine(q[:0], pool, 3, mode=mode)
        assert index.shape == (0, 3)
    index, lq = mine(q, pool[:1], 4, exclude_ids=torch.zeros(50, dtype=torch.int64), generator=0)
    assert (index == -1).all()
    index, lq = mine(q, pool[:0], 4, generator=0)
    assert (index == -1).all()


@requires_cuda
def test_cuda_opcheck():
    q, pool, pool_ids, exclude, log_q = make_problem(B=9, P=40, device="cuda")
    for mode in ("sample", "topk"):
        torch.library.opcheck(torch.ops.fastsoftmax.mine_hard_negatives.default,
                              (q, pool, pool_ids, exclude, log_q, 5, mode, 0.9, 17, 3))
