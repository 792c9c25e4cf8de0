"""sampled_softmax_cross_entropy against the float64 reference, plus op-level checks."""
import pytest
import torch

import fastsoftmax
from fastsoftmax.reference import (
    in_batch_softmax_cross_entropy_reference,
    sampled_softmax_cross_entropy_reference,
)

from conftest import ATOL, RTOL, assert_close_to_reference

DIFF_ARGS = ("query", "positives", "candidates")


def make_problem(B=7, T=3, C=29, d=16, H=None, dtype=torch.float64, ids=True, num_items=40,
                 log_q=False, weights=False, pad=False, scale=1.0):
    g = torch.Generator().manual_seed(1234)
    kw = dict(
        query=(torch.randn(B, d, generator=g) * scale).to(dtype),
        positives=torch.randn(B, T, d, generator=g).to(dtype),
        candidates=torch.randn(C, d, generator=g).to(dtype),
    )
    if ids:
        kw["positive_ids"] = torch.randint(0, num_items, (B, T), generator=g)
        kw["candidate_ids"] = torch.randint(0, num_items, (C,), generator=g)
        if pad and T > 1:
            kw["positive_ids"][::2, -1] = -1
    if weights:
        w = torch.rand(B, T, generator=g, dtype=torch.float64)
        kw["positive_weights"] = (w / w.sum(1, keepdim=True)).to(dtype)
    if log_q:
        kw["positive_log_q"] = -torch.rand(B, T, generator=g, dtype=torch.float64).to(dtype) * 3
    if H is not None:
        index = (torch.randint(0, C, (B, H), generator=g) if C else
                 torch.full((B, H), -1, dtype=torch.int64))
        if pad:
            index[1::3, :2] = -1
        kw["candidate_index"] = index
        if log_q:
            kw["candidate_log_q"] = -torch.rand(B, H, generator=g, dtype=torch.float64).to(dtype) * 3
    elif log_q:
        kw["candidate_log_q"] = -torch.rand(C, generator=g, dtype=torch.float64).to(dtype) * 3
    return kw


def run_both(kw, **options):
    """Loss and gradients (w.r.t. query, positives, candidates) from ours and the reference."""
    ours_in = {k: (v.detach().clone().requires_grad_(True) if k in DIFF_ARGS else v)
               for k, v in kw.items()}
    ref_in = {k: (v.detach().clone().requires_grad_(True) if k in DIFF_ARGS else v)
              for k, v in kw.items()}
    ours = fastsoftmax.sampled_softmax_cross_entropy(**ours_in, **options)
    ref = sampled_softmax_cross_entropy_reference(**ref_in, **options)
    upstream = torch.randn_like(ref)
    (ours * upstream.to(ours.dtype)).sum().backward()
    (ref * upstream).sum().backward()
    grads = {k: (ours_in[k].grad, ref_in[k].grad) for k in DIFF_ARGS}
    return ours, ref, grads


def check(kw, dtype=torch.float64, **options):
    ours, ref, grads = run_both(kw, **options)
    assert_close_to_reference(ours, ref, dtype)
    for name, (g_ours, g_ref) in grads.items():
        assert g_ours is not None, name
        assert g_ours.dtype == kw[name].dtype
        assert_close_to_reference(g_ours, g_ref, dtype)
    return ours, ref


@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("log_q", [False, True])
@pytest.mark.parametrize("weights", [False, True])
def test_shared_candidates_match_reference(T, log_q, weights):
    kw = make_problem(T=T, log_q=log_q, weights=weights, pad=True)
    check(kw)


@pytest.mark.parametrize("log_q", [False, True])
def test_per_row_candidates_match_reference(log_q):
    kw = make_problem(H=11, log_q=log_q, pad=True)
    check(kw)


def test_per_row_candidates_accept_shared_log_q():
    kw = make_problem(H=5, num_items=1000)
    kw["candidate_log_q"] = -torch.rand(kw["candidates"].shape[0], dtype=torch.float64)
    check(kw)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_sample_weights", [False, True])
def test_reductions_and_sample_weights(reduction, with_sample_weights):
    kw = make_problem(B=9)
    if with_sample_weights:
        kw["sample_weights"] = torch.rand(9, dtype=torch.float64)
    out, _ = check(kw, reduction=reduction)
    assert out.shape == ((9,) if reduction == "none" else ())


@pytest.mark.parametrize("temperature", [0.05, 0.7, 3.0])
def test_temperature(temperature):
    check(make_problem(log_q=True), temperature=temperature)


@pytest.mark.parametrize("B,C", [(300, 700), (600, 520), (513, 1030)])
def test_many_tiles_both_partitions(B, C):
    # Crosses the 256-row / 512-column tiles and exercises both thread partitions.
    kw = make_problem(B=B, T=2, C=C, d=24, num_items=900, log_q=True, pad=True)
    check(kw)


def test_accidental_hits_are_removed_including_duplicate_candidate_ids():
    kw = make_problem(B=4, T=2, C=6, num_items=1000)
    kw["positive_ids"] = torch.tensor([[1, 2], [3, -1], [5, 6], [7, 8]])
    kw["candidate_ids"] = torch.tensor([1, 1, 3, 9, 2, 10])  # id 1 twice
    with_removal, ref = check(kw, reduction="none")
    without, _ = check(kw, reduction="none", remove_accidental_hits=False)
    # Rows 0 and 1 have hits; removing them can only lower the loss there.
    assert (with_removal[:2] < without[:2]).all()
    assert torch.allclose(with_removal[2:], without[2:])


def test_hits_removed_equals_dropping_those_candidates():
    kw = make_problem(B=1, T=1, C=5, num_items=1000)
    kw["positive_ids"] = torch.tensor([[4]])
    kw["candidate_ids"] = torch.tensor([4, 0, 4, 2, 3])
    masked = fastsoftmax.sampled_softmax_cross_entropy(**kw)
    keep = torch.tensor([1, 3, 4])
    dropped = fastsoftmax.sampled_softmax_cross_entropy(
        kw["query"], kw["positives"], kw["candidates"][keep])
    torch.testing.assert_close(masked, dropped)


def test_padding_positive_id_does_not_mask_candidate_with_id_minus_one():
    kw = make_problem(B=2, T=2, C=3)
    kw["positive_ids"] = torch.tensor([[0, -1], [1, -1]])
    kw["candidate_ids"] = torch.tensor([-1, 5, 6])
    check(kw)


def test_in_batch_negatives_equal_in_batch_softmax():
    B, d = 12, 8
    q, p = torch.randn(B, d, dtype=torch.float64), torch.randn(B, d, dtype=torch.float64)
    ids = torch.randperm(100)[:B]
    ours = fastsoftmax.sampled_softmax_cross_entropy(q, p, p, positive_ids=ids, candidate_ids=ids,
                                                     temperature=0.5)
    ref = in_batch_softmax_cross_entropy_reference(q, p, temperature=0.5)
    torch.testing.assert_close(ours, ref)


def test_large_logits_do_not_overflow():
    kw = make_problem(scale=1e4 / 4, log_q=True)  # |q.c| up to ~1e4
    out, ref = check(kw, reduction="none")
    assert torch.isfinite(out).all()
    assert_close_to_reference(out, ref, torch.float64)


def test_large_logits_float32():
    kw = make_problem(scale=2500.0, dtype=torch.float32)
    out = fastsoftmax.sampled_softmax_cross_entropy(**kw, reduction="none")
    ref = sampled_softmax_cross_entropy_reference(**kw, reduction="none")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, atol=1e-1, rtol=1e-4)


def test_row_with_all_candidates_masked():
    kw = make_problem(B=2, T=1, C=3)
    kw["positive_ids"] = torch.tensor([[7], [8]])
    kw["candidate_ids"] = torch.tensor([7, 7, 7])
    out, _ = check(kw, reduction="none")
    assert out[0].item() == pytest.approx(0.0, abs=1e-12)  # only the positive is left


def test_row_without_positives_contributes_nothing():
    kw = make_problem(B=3, T=2)
    kw["positive_ids"][1] = -1
    out, _ = check(kw, reduction="none")
    assert out[1].item() == 0.0
    mean = fastsoftmax.sampled_softmax_cross_entropy(**kw)
    torch.testing.assert_close(mean, out.sum() / 2)


@pytest.mark.parametrize("H", [None, 4])
def test_empty_batch(H):
    kw = make_problem(B=0, H=H)
    for reduction in ("mean", "sum", "none"):
        out, _ = check(kw, reduction=reduction)
        assert out.numel() == (0 if reduction == "none" else 1)
        if reduction != "none":
            assert out.item() == 0.0


def test_no_candidates():
    kw = make_problem(C=0)
    check(kw)
    check(make_problem(C=0, H=0))
    check(make_problem(C=0, H=3))  # every per-row candidate is padding


def test_two_dimensional_positives():
    kw = make_problem(T=1)
    kw["positives"] = kw["positives"][:, 0]
    kw["positive_ids"] = kw["positive_ids"][:, 0]
    kw["positive_log_q"] = -torch.rand(kw["query"].shape[0], dtype=torch.float64)
    ours, ref, grads = run_both(kw)
    assert grads["positives"][0].shape == kw["positives"].shape
    check(kw)


def test_non_contiguous_inputs():
    kw = make_problem(B=8, T=2, C=10, d=12)
    kw["query"] = torch.randn(12, 8, dtype=torch.float64).T           # [8, 12] transposed
    kw["candidates"] = torch.randn(10, 24, dtype=torch.float64)[:, ::2]  # strided
    kw["positives"] = torch.randn(2, 8, 12, dtype=torch.float64).transpose(0, 1)
    kw["positive_ids"] = torch.randint(0, 40, (2, 8)).T
    assert not kw["query"].is_contiguous() and not kw["positive_ids"].is_contiguous()
    check(kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("H", [None, 9])
def test_low_precision(dtype, H):
    kw64 = make_problem(B=40, T=2, C=300, d=32, H=H, log_q=True, pad=True)
    kw = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in kw64.items()}
    ours, _, grads = run_both(kw)
    ref = sampled_softmax_cross_entropy_reference(**kw)                 # float64 on rounded inputs
    lowp = sampled_softmax_cross_entropy_reference(**kw, dtype=None)    # same math in dtype
    assert ours.dtype == torch.float32
    assert_close_to_reference(ours, ref, dtype, None if dtype == torch.float32 else lowp)
    for name in DIFF_ARGS:
        g_ours, g_ref = grads[name]
        assert g_ours.dtype == dtype
        assert_close_to_reference(g_ours, g_ref, dtype)


def test_gradcheck_shared_and_indexed():
    for H in (None, 3):
        kw = make_problem(B=3, T=2, C=5, d=4, H=H, log_q=True, pad=True)
        args = {k: v for k, v in kw.items() if k not in DIFF_ARGS}

        def fn(q, p, c):
            return fastsoftmax.sampled_softmax_cross_entropy(q, p, c, **args, temperature=0.7,
                                                             reduction="none")

        inputs = tuple(kw[k].clone().requires_grad_(True) for k in DIFF_ARGS)
        assert torch.autograd.gradcheck(fn, inputs)


def _op_args(kw, temperature=0.8, hits=True):
    B, T = kw["positives"].shape[:2]
    weights = kw.get("positive_weights", torch.full((B, T), 1.0 / T, dtype=torch.float64))
    return (kw["query"], kw["positives"], kw["candidates"], kw.get("positive_ids"),
            kw.get("candidate_ids"), weights, kw.get("positive_log_q"), kw.get("candidate_log_q"),
            kw.get("candidate_index"), temperature, hits)


@pytest.mark.parametrize("H", [None, 4])
def test_opcheck(H):
    kw = make_problem(B=4, T=2, C=6, d=5, H=H, log_q=True)
    args = list(_op_args(kw))
    for i in range(3):
        args[i] = args[i].clone().requires_grad_(True)
    torch.library.opcheck(torch.ops.fastsoftmax.sampled_softmax_ce.default, tuple(args))
    fwd_loss, lse = torch.ops.fastsoftmax.sampled_softmax_ce(*[
        a.detach() if isinstance(a, torch.Tensor) else a for a in args])
    bwd_args = (torch.randn_like(fwd_loss),) + tuple(
        a.detach() if isinstance(a, torch.Tensor) else a for a in args[:9]) + (lse,) + tuple(args[9:])
    torch.library.opcheck(torch.ops.fastsoftmax.sampled_softmax_ce_backward.default, bwd_args)


def test_torch_compile_fullgraph_matches_eager():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tower = torch.nn.Linear(8, 16)
            self.items = torch.nn.Embedding(50, 16)

        def forward(self, x, pos_ids, neg_ids, neg_log_q):
            q = torch.relu(self.tower(x))
            return fastsoftmax.sampled_softmax_cross_entropy(
                q, self.items(pos_ids), self.items(neg_ids), positive_ids=pos_ids,
                candidate_ids=neg_ids, candidate_log_q=neg_log_q, temperature=0.5)

    model = Model()
    x = torch.randn(6, 8)
    pos = torch.randint(0, 50, (6, 2))
    neg = torch.randint(0, 50, (20,))
    lq = -torch.rand(20)
    eager = model(x, pos, neg, lq)
    eager.backward()
    eager_grad = model.tower.weight.grad.clone()
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x, pos, neg, lq)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(model.tower.weight.grad, eager_grad)


# ------------------------------------------------------------------------------ bad input


def _bad(**changes):
    kw = make_problem(B=4, T=2, C=6, d=5)
    kw.update(changes)
    return kw


@pytest.mark.parametrize("changes,match", [
    (dict(query=torch.randn(4, 6, dtype=torch.float64)), "positives"),
    (dict(candidates=torch.randn(6, 4, dtype=torch.float64)), "candidates"),
    (dict(positives=torch.randn(3, 2, 5, dtype=torch.float64)), "positives"),
    (dict(query=torch.randn(4, 0, dtype=torch.float64)), "empty embedding"),
    (dict(positive_ids=torch.zeros(4, 2, dtype=torch.int32)), "positive_ids must have dtype"),
    (dict(candidate_ids=torch.zeros(5, dtype=torch.int64)), "candidate_ids must have shape"),
    (dict(positive_ids=torch.full((4, 2), -2)), "positive_ids has an entry -2"),
    (dict(candidate_index=torch.full((4, 3), 6)), "candidate_index has an entry 6 out of range"),
    (dict(candidate_index=torch.full((4, 3), -3)), "candidate_index has an entry -3"),
    (dict(candidate_index=torch.zeros(4, 3)), "candidate_index must have dtype"),
    (dict(positive_weights=-torch.ones(4, 2, dtype=torch.float64)), "positive_weights must be non-negative"),
    (dict(positive_weights=torch.full((4, 2), float("nan"), dtype=torch.float64)), "positive_weights must be finite"),
    (dict(candidate_log_q=torch.zeros(5, dtype=torch.float64)), "candidate_log_q must have shape"),
    (dict(candidates=torch.randn(6, 5, dtype=torch.float32)), "candidates must have dtype"),
    (dict(query=torch.randint(0, 3, (4, 5))), "query must have dtype"),
])
def test_bad_input_raises_naming_the_argument(changes, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fastsoftmax.sampled_softmax_cross_entropy(**_bad(**changes))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        fastsoftmax.sampled_softmax_cross_entropy(**_bad(), temperature=temperature)


def test_bad_reduction_and_sample_weights():
    with pytest.raises(ValueError, match="reduction"):
        fastsoftmax.sampled_softmax_cross_entropy(**_bad(), reduction="avg")
    with pytest.raises(ValueError, match="sample_weights must be non-negative"):
        fastsoftmax.sampled_softmax_cross_entropy(
            **_bad(), sample_weights=-torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="sample_weights must have shape"):
        fastsoftmax.sampled_softmax_cross_entropy(
            **_bad(), sample_weights=torch.ones(3, dtype=torch.float64))


def test_device_mismatch_raises():
    meta = torch.randn(6, 5, dtype=torch.float64, device="meta")
    with pytest.raises(ValueError, match="candidates is on meta but query is on cpu"):
        fastsoftmax.sampled_softmax_cross_entropy(**_bad(candidates=meta))


def test_native_op_rejects_out_of_range_index_directly():
    kw = make_problem(B=2, T=1, C=3, d=4)
    args = list(_op_args(kw))
    args[8] = torch.tensor([[0, 3], [1, 2]])
    with pytest.raises(RuntimeError, match="candidate_index has an entry 3 out of range"):
        torch.ops.fastsoftmax.sampled_softmax_ce(*args)


def test_tolerance_table_is_consistent():
    assert set(ATOL) == set(RTOL)


# ------------------------------------------------------------- fused forward + backward path


def test_reduced_losses_take_the_fused_path_and_match_reference():
    # reduction mean/sum with inputs that need gradients runs sampled_softmax_ce_fused.
    kw = make_problem(B=300, T=2, C=700, d=16, log_q=True, pad=True, weights=True)
    kw["sample_weights"] = torch.rand(300, dtype=torch.float64)
    for reduction in ("mean", "sum"):
        check(kw, reduction=reduction, temperature=0.6)


def test_fused_path_falls_back_for_very_wide_candidate_sets():
    # float64 panel rows x C must fit 32 MiB with >= 32 rows: C = 140k does not.
    kw = make_problem(B=3, T=1, C=140_000, d=4, num_items=10**6, log_q=True)
    check(kw, reduction="sum")


def test_gradcheck_fused():
    for H in (None, 3):
        kw = make_problem(B=3, T=2, C=5, d=4, H=H, log_q=True, pad=True)
        args = {k: v for k, v in kw.items() if k not in DIFF_ARGS}
        sw = torch.rand(3, dtype=torch.float64)

        def fn(q, p, c):
            return fastsoftmax.sampled_softmax_cross_entropy(q, p, c, **args, temperature=0.7,
                                                             sample_weights=sw)

        inputs = tuple(kw[k].clone().requires_grad_(True) for k in DIFF_ARGS)
        assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("H", [None, 4])
def test_opcheck_fused(H):
    kw = make_problem(B=4, T=2, C=6, d=5, H=H, log_q=True)
    args = list(_op_args(kw))
    for i in range(3):
        args[i] = args[i].clone().requires_grad_(True)
    row_coef = torch.rand(4, dtype=torch.float64)
    torch.library.opcheck(torch.ops.fastsoftmax.sampled_softmax_ce_fused.default,
                          tuple(args[:9]) + (row_coef,) + tuple(args[9:]))


def test_no_grad_and_eval_use_the_forward_only_op():
    kw = make_problem(B=5)
    with torch.no_grad():
        loss = fastsoftmax.sampled_softmax_cross_entropy(**kw)
    ref = sampled_softmax_cross_entropy_reference(**kw)
    torch.testing.assert_close(loss, ref)


def test_fused_training_path_scales_and_accumulates_gradients():
    # The fused op returns its input gradients directly when the seed gradient is 1: check that
    # a second backward still accumulates, and that other seeds scale.
    g = torch.Generator().manual_seed(0)
    query = torch.randn(5, 8, generator=g, requires_grad=True)
    positives = torch.randn(5, 2, 8, generator=g, requires_grad=True)
    candidates = torch.randn(7, 8, generator=g, requires_grad=True)
    ids = torch.tensor([[0, 1], [2, -1], [3, 4], [5, 6], [7, 8]])
    cand_ids = torch.arange(3, 10)
    kwargs = dict(positive_ids=ids, candidate_ids=cand_ids)
    ref = sampled_softmax_cross_entropy_reference(query.double(), positives.double(),
                                                  candidates.double(), **kwargs)
    expected = torch.autograd.grad(ref, (query, positives, candidates))

    loss = fastsoftmax.sampled_softmax_cross_entropy(query, positives, candidates, **kwargs)
    loss.backward(retain_graph=True)
    loss.backward()
    for param, want in zip((query, positives, candidates), expected):
        torch.testing.assert_close(param.grad, 2 * want.float(), rtol=1e-4, atol=1e-5)
        param.grad = None
    (3.0 * fastsoftmax.sampled_softmax_cross_entropy(query, positives, candidates,
                                                     **kwargs)).backward()
    for param, want in zip((query, positives, candidates), expected):
        torch.testing.assert_close(param.grad, 3 * want.float(), rtol=1e-4, atol=1e-5)
