"""SampledSoftmaxLoss (fastsoftmax/sampled_loss.py): the drop-in loss against the float64
reference fed with the very ids it drew (hard negatives from fastsoftmax.mine_hard_negatives
included), embeddings of every kind, determinism, state and argument errors."""
import math

import pytest
import torch
from torch import nn

import fastsoftmax
from fastsoftmax.reference import (
    full_softmax_cross_entropy_reference,
    sampled_softmax_cross_entropy_reference,
)
from fastsoftmax.sampled_loss import SampledSoftmaxLoss
from fastsoftmax.sampling import StreamingFrequencyEstimator, UniformSampler

from conftest import assert_close_to_reference


# ---------------------------------------------------------------------------------------------
# Helpers

N_ITEMS, DIM = 60, 8


def counts_for(n=N_ITEMS):
    return 1.0 / torch.arange(1, n + 1, dtype=torch.float64)


def make_loss(sampler, num_negatives=20, **kw):
    if sampler in ("unigram", "in_batch", "mixed"):
        kw.setdefault("counts", counts_for())
    return SampledSoftmaxLoss(N_ITEMS, num_negatives, sampler=sampler, **kw)


def make_inputs(B=6, T=1, dtype=torch.float64, pad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(N_ITEMS, DIM, generator=g, dtype=dtype)
    query = torch.randn(B, DIM, generator=g, dtype=dtype)
    # Distinct positives within a row (a row never lists one item twice).
    ids = torch.stack([torch.randperm(N_ITEMS, generator=g)[:T] for _ in range(B)])
    if pad and T > 1:
        ids[::2, -1] = -1
        ids[1, 1:] = -1
    return query, table, ids if T > 1 else ids[:, 0]


def reference_from_draw(query, table, positive_ids, draw, loss_fn, **kw):
    """The float64 reference loss on exactly the ids ``draw`` holds, built the other way round:
    raw draws (duplicates kept), and hard negatives as per-row ``candidate_index`` over the
    block [shared; pool] with their log_q (the route the module's docstring compares with)."""
    pos = positive_ids.unsqueeze(1) if positive_ids.dim() == 1 else positive_ids
    common = dict(positive_ids=pos, positive_log_q=draw.positive_log_q,
                  temperature=loss_fn.temperature,
                  remove_accidental_hits=loss_fn.remove_accidental_hits,
                  reduction=loss_fn.reduction, **kw)
    positives = table[pos.clamp_min(0)]
    neg = draw.negative_ids
    if draw.hard_index is None:
        return sampled_softmax_cross_entropy_reference(
            query, positives, table[neg], candidate_ids=neg,
            candidate_log_q=draw.negative_log_q, **common)
    B, M = pos.shape[0], neg.numel()
    block = torch.cat([table[neg], table[draw.pool_ids]])
    block_ids = torch.cat([neg, draw.pool_ids])
    index = torch.cat([torch.arange(M).expand(B, M),
                       torch.where(draw.hard_index >= 0, draw.hard_index + M, -1)], 1)
    log_q = None
    if draw.hard_log_q is not None:
        shared = (draw.negative_log_q if M else torch.zeros(0)).expand(B, M)
        log_q = torch.cat([shared, draw.hard_log_q], 1)
    return sampled_softmax_cross_entropy_reference(
        query, positives, block, candidate_ids=block_ids, candidate_index=index,
        candidate_log_q=log_q, **common)


def check_against_reference(loss_fn, T=1, pad=False, seed=0, dtype=torch.float64, **fwd):
    """Our loss and gradients (query, table) vs the reference on the same draw."""
    query, table, ids = make_inputs(T=T, pad=pad, dtype=dtype)
    q1, t1 = query.clone().requires_grad_(), table.clone().requires_grad_()
    loss, draw = loss_fn(q1, t1, ids, seed=seed, return_draw=True, **fwd)
    q2, t2 = query.double().requires_grad_(), table.double().requires_grad_()
    ref = reference_from_draw(q2, t2, ids, draw, loss_fn, **fwd)
    upstream = torch.rand_like(ref)
    (loss * upstream.to(loss.dtype)).sum().backward()
    (ref * upstream).sum().backward()
    assert_close_to_reference(loss, ref, dtype)
    assert_close_to_reference(q1.grad, q2.grad, dtype)
    assert_close_to_reference(t1.grad, t2.grad, dtype)
    return loss, draw, ids


# ---------------------------------------------------------------------------------------------
# Loss values and gradients against the float64 reference

@pytest.mark.parametrize("sampler", ["uniform", "log_uniform", "unigram", "in_batch", "mixed"])
@pytest.mark.parametrize("T,pad", [(1, False), (3, True)])
@pytest.mark.parametrize("logq_correction", [True, False])
def test_matches_reference_on_the_same_draw(sampler, T, pad, logq_correction):
    loss_fn = make_loss(sampler, logq_correction=logq_correction, temperature=0.7)
    loss, draw, ids = check_against_reference(loss_fn, T=T, pad=pad)
    assert torch.isfinite(loss)
    if sampler == "in_batch":
        # The candidates are the batch's valid positives, in order.
        assert torch.equal(draw.negative_ids, ids.reshape(-1)[ids.reshape(-1) >= 0])
    if logq_correction and sampler in ("in_batch", "mixed"):
        # The positive is one of the draws: it carries its expected count under the draw.
        assert draw.positive_log_q is not None
    else:
        assert draw.positive_log_q is None


def test_duplicates_and_accidental_hits_are_exercised():
    """The reference sees raw duplicate draws and removes hits itself; make sure this problem
    really has both, so that the merge of duplicates and the hit removal are what is tested."""
    loss_fn = make_loss("log_uniform", num_negatives=40)
    _, draw, ids = check_against_reference(loss_fn, T=3, pad=True)
    neg = draw.negative_ids
    assert torch.unique(neg).numel() < neg.numel()
    assert bool((neg.view(1, 1, -1) == ids.unsqueeze(2)).any())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_weights_and_reductions(reduction):
    loss_fn = make_loss("unigram", reduction=reduction)
    g = torch.Generator().manual_seed(5)
    w = torch.rand(6, 3, generator=g, dtype=torch.float64)
    sw = torch.rand(6, generator=g, dtype=torch.float64)
    check_against_reference(loss_fn, T=3, pad=True, positive_weights=w, sample_weights=sw)


def test_float32_matches_float64_reference():
    check_against_reference(make_loss("log_uniform"), T=2, dtype=torch.float32)


@pytest.mark.parametrize("T", [1, 3])
def test_every_item_once_equals_full_softmax(T):
    """Uniform sampling of all N items without replacement: log_q = log(N/N) = 0, every item is
    a candidate once and the positive is uncorrected, so the loss is the full softmax exactly
    (with TensorFlow's positive correction it would be too; the estimator's difference shows
    only for S < N, see tests/test_estimator_consistency.py)."""
    loss_fn = SampledSoftmaxLoss(N_ITEMS, N_ITEMS, sampler=UniformSampler(N_ITEMS, unique=True))
    query, table, ids = make_inputs(T=T)
    q1, q2 = query.clone().requires_grad_(), query.clone().requires_grad_()
    loss = loss_fn(q1, table, ids, seed=3)
    full = full_softmax_cross_entropy_reference(q2, table, ids)
    loss.backward()
    full.backward()
    assert_close_to_reference(loss, full, torch.float64)
    assert_close_to_reference(q1.grad, q2.grad, torch.float64)


def test_rows_without_positives_and_empty_batches():
    loss_fn = make_loss("in_batch")
    query, table, _ = make_inputs(B=4)
    ids = torch.tensor([[3, -1], [-1, -1], [7, 3], [-1, -1]])
    per_row = SampledSoftmaxLoss(N_ITEMS, sampler="in_batch", counts=counts_for(),
                                 reduction="none")(query, table, ids)
    assert per_row[1] == 0 and per_row[3] == 0 and torch.isfinite(per_row).all()
    q = query.clone().requires_grad_()
    loss = loss_fn(q, table, torch.full((4, 2), -1))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(q.grad, torch.zeros_like(q))


# ---------------------------------------------------------------------------------------------
# Hard negatives

@pytest.mark.parametrize("mode", ["sample", "topk"])
@pytest.mark.parametrize("num_negatives", [0, 15])
@pytest.mark.parametrize("sampler", ["uniform", "unigram", "mixed"])
@pytest.mark.parametrize("logq_correction", [True, False])
def test_hard_negatives_match_reference(mode, num_negatives, sampler, logq_correction):
    loss_fn = make_loss(sampler, num_negatives, hard_negatives=5, hard_negative_pool=30,
                        hard_negative_mode=mode, logq_correction=logq_correction,
                        temperature=0.8)
    loss, draw, ids = check_against_reference(loss_fn, T=2, pad=True)
    pos = ids.unsqueeze(2)
    assert draw.hard_index.shape == (6, 5)
    # The miner excluded every row's positives.
    assert not bool(((draw.hard_ids.unsqueeze(1) == pos) & (pos >= 0)).any())
    if num_negatives:
        # Some mined id is also a shared draw: it must not be masked there (the reference
        # keeps both), which is what the sentinel ids in the kernel call ensure.
        assert bool((draw.hard_ids.unsqueeze(2) == draw.negative_ids.view(1, 1, -1)).any())


def test_hard_negative_log_q_and_mixture_weights():
    """Mined log_q = log(P q) + log H + log π_b(k) (recomputed here), plus log((M + H) / H);
    shared draws log(M q) + log((M + H) / M): the size-weighted mixture of the two estimates."""
    M, H, P, tau = 12, 4, 25, 0.9
    loss_fn = make_loss("uniform", M, hard_negatives=H, hard_negative_pool=P,
                        hard_negative_temperature=tau)
    query, table, ids = make_inputs()
    _, draw = loss_fn(query, table, ids, seed=1, return_draw=True)
    expected_shared = math.log(M / N_ITEMS) + math.log((M + H) / M)
    assert torch.allclose(draw.negative_log_q, torch.full((M,), expected_shared), atol=1e-6)
    assert torch.allclose(draw.pool_log_q, torch.full((P,), math.log(P / N_ITEMS)), atol=1e-6)
    scores = query @ table[draw.pool_ids].T / tau
    scores = scores.masked_fill(draw.pool_ids.view(1, -1) == ids.view(-1, 1), -math.inf)
    log_pi = torch.log_softmax(scores, 1).gather(1, draw.hard_index)
    expected = math.log(P / N_ITEMS) + math.log(H) + log_pi + math.log((M + H) / H)
    assert torch.allclose(draw.hard_log_q.double(), expected, atol=1e-5)


def test_hard_negatives_without_the_op_raise(monkeypatch):
    monkeypatch.delattr(fastsoftmax, "mine_hard_negatives", raising=False)
    loss_fn = make_loss("uniform", hard_negatives=2, hard_negative_pool=10)
    query, table, ids = make_inputs()
    with pytest.raises(RuntimeError, match="mine_hard_negatives"):
        loss_fn(query, table, ids)


# ---------------------------------------------------------------------------------------------
# Item embeddings: nn.Embedding (dense, sparse), tensor, item tower

def touched_ids(ids, draw):
    parts = [ids.reshape(-1)[ids.reshape(-1) >= 0], draw.negative_ids]
    if draw.pool_ids is not None:
        parts.append(draw.pool_ids)
    return torch.unique(torch.cat(parts))


@pytest.mark.parametrize("hard", [0, 4])
def test_embedding_kinds_agree_and_sparse_gradient_is_sparse(hard):
    query, table, ids = make_inputs(T=2, pad=True)
    kw = dict(hard_negatives=hard, hard_negative_pool=20)
    dense = nn.Embedding(N_ITEMS, DIM, dtype=torch.float64, _weight=table.clone())
    sparse = nn.Embedding(N_ITEMS, DIM, sparse=True, dtype=torch.float64, _weight=table.clone())
    weight = table.clone().requires_grad_()
    results = []
    for item_embeddings in (dense, sparse, weight):
        loss, draw = make_loss("log_uniform", **kw)(query, item_embeddings, ids, seed=7,
                                                    return_draw=True)
        loss.backward()
        results.append((loss, draw))
    assert results[0][0] == results[1][0] == results[2][0]
    assert torch.equal(results[0][1].negative_ids, results[1][1].negative_ids)

    grad = sparse.weight.grad
    assert grad.is_sparse
    grad = grad.coalesce()
    touched = touched_ids(ids, results[1][1])
    # One embedding call on the unique touched ids: the sparse gradient has exactly those rows.
    assert torch.equal(grad.indices()[0].sort().values, touched)
    nonzero_rows = grad.to_dense().abs().sum(1).nonzero().squeeze(1)
    assert set(nonzero_rows.tolist()) <= set(touched.tolist())
    assert torch.allclose(grad.to_dense(), dense.weight.grad, atol=1e-12)
    assert torch.allclose(weight.grad, dense.weight.grad, atol=1e-12)
    untouched = torch.ones(N_ITEMS, dtype=torch.bool)
    untouched[touched] = False
    assert torch.all(dense.weight.grad[untouched] == 0)


def test_item_tower_is_called_once_on_unique_ids():
    g = torch.Generator().manual_seed(2)
    features = torch.randn(N_ITEMS, 5, generator=g, dtype=torch.float64)
    layer = nn.Linear(5, DIM, dtype=torch.float64)
    calls = []

    def tower(item_ids):
        calls.append(item_ids)
        return torch.tanh(layer(features[item_ids]))

    query, _, ids = make_inputs(T=2, pad=True)
    loss_fn = make_loss("unigram", hard_negatives=3, hard_negative_pool=15)
    loss, draw = loss_fn(query, tower, ids, seed=4, return_draw=True)
    loss.backward()
    assert len(calls) == 1
    assert torch.equal(calls[0], touched_ids(ids, draw))   # sorted, unique
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
    # Same as the tower applied to the whole table, used as a tensor.
    table = torch.tanh(layer(features)).detach().requires_grad_()
    again = loss_fn(query, table, ids, seed=4)
    assert torch.allclose(again, loss, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Determinism and state

@pytest.mark.parametrize("sampler", ["uniform", "log_uniform", "unigram", "mixed"])
def test_same_seed_same_draw_and_loss(sampler):
    query, table, ids = make_inputs(T=2)
    loss_fn = make_loss(sampler, hard_negatives=3, hard_negative_pool=15)
    a_loss, a = loss_fn(query, table, ids, seed=11, return_draw=True)
    b_loss, b = loss_fn(query, table, ids, generator=torch.Generator().manual_seed(11),
                        return_draw=True)
    _, c = loss_fn(query, table, ids, seed=12, return_draw=True)
    assert torch.equal(a_loss, b_loss)
    for name in ("negative_ids", "pool_ids", "hard_index"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.negative_ids, c.negative_ids)
    assert not torch.equal(a.pool_ids, c.pool_ids)


def test_constructor_seed_replays_the_sequence():
    query, table, ids = make_inputs()
    first = make_loss("log_uniform", seed=3)
    second = make_loss("log_uniform", seed=3)
    draws_1 = [first(query, table, ids, return_draw=True)[1].negative_ids for _ in range(2)]
    draws_2 = [second(query, table, ids, return_draw=True)[1].negative_ids for _ in range(2)]
    assert not torch.equal(draws_1[0], draws_1[1])          # the generator advances
    assert all(torch.equal(x, y) for x, y in zip(draws_1, draws_2))


def test_streaming_estimator_state_is_in_the_state_dict():
    loss_fn = SampledSoftmaxLoss(N_ITEMS, sampler="in_batch")
    assert isinstance(loss_fn.sampler.estimator, StreamingFrequencyEstimator)
    query, table, ids = make_inputs(T=2)
    for _ in range(3):
        loss_fn(query, table, ids)
    state = loss_fn.state_dict()
    assert {"sampler.estimator.step", "sampler.estimator.mean_gap",
            "sampler.estimator.last_step"} <= set(state)
    assert int(state["sampler.estimator.step"]) == 3
    restored = SampledSoftmaxLoss(N_ITEMS, sampler="in_batch")
    restored.load_state_dict(state)
    restored.eval()
    loss_fn.eval()   # no estimator update in eval mode: both see the same estimate
    assert torch.equal(restored(query, table, ids), loss_fn(query, table, ids))


def test_sampler_object_and_repr():
    sampler = UniformSampler(N_ITEMS)
    loss_fn = SampledSoftmaxLoss(N_ITEMS, 10, sampler=sampler)
    assert loss_fn.sampler is sampler
    assert "num_negatives=10" in repr(loss_fn)


# ---------------------------------------------------------------------------------------------
# Errors name the argument

@pytest.mark.parametrize("kwargs,error,match", [
    (dict(sampler="zipf"), ValueError, "unknown sampler"),
    (dict(sampler=3), TypeError, "sampler must be"),
    (dict(num_negatives=0), ValueError, "num_negatives"),
    (dict(num_negatives=-1), ValueError, "num_negatives"),
    (dict(num_negatives=2.5), TypeError, "num_negatives"),
    (dict(hard_negatives=8, hard_negative_pool=4), ValueError, "hard_negative_pool"),
    (dict(hard_negatives=-1), ValueError, "hard_negatives"),
    (dict(hard_negative_mode="best"), ValueError, "hard_negative_mode"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(sampler="unigram"), ValueError, "counts"),
    (dict(sampler="in_batch", hard_negatives=2), ValueError, "in_batch"),
    (dict(sampler=UniformSampler(N_ITEMS + 1)), ValueError, "num_items"),
])
def test_bad_configuration(kwargs, error, match):
    kwargs = dict(kwargs)
    with pytest.raises(error, match=match):
        SampledSoftmaxLoss(N_ITEMS, **kwargs)


def test_bad_inputs():
    loss_fn = make_loss("uniform")
    query, table, ids = make_inputs()
    cases = [
        ((query, table, ids + N_ITEMS), ValueError, "positive_ids"),
        ((query, table, ids - 5), ValueError, "positive_ids"),
        ((query, table, ids.int()), TypeError, "positive_ids"),
        ((query, table, ids[:3]), ValueError, "positive_ids"),
        ((query, table, ids.view(2, 3, 1)), ValueError, "positive_ids"),
        ((query[0], table, ids), ValueError, "query"),
        ((query.long(), table, ids), TypeError, "query"),
        ((query, table[:10], ids), ValueError, "item_embeddings"),
        ((query, table[:, :3], ids), ValueError, "item_embeddings"),
        ((query, table.float(), ids), TypeError, "item_embeddings"),
        ((query, nn.Embedding(10, DIM).double(), ids), ValueError, "item_embeddings.weight"),
        ((query, lambda i: table[i, :3], ids), ValueError, "item_embeddings"),
        ((query, "table", ids), TypeError, "item_embeddings"),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            loss_fn(*args)
    with pytest.raises(ValueError, match="generator or seed"):
        loss_fn(query, table, ids, seed=1, generator=torch.Generator())
