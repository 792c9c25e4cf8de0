"""full_softmax_cross_entropy and FullSoftmaxLoss against the float64 reference."""
import pytest
import torch
import torch.nn.functional as F

import fastsoftmax
from fastsoftmax.reference import full_softmax_cross_entropy_reference

from conftest import assert_close_to_reference


def make_problem(B=9, N=37, d=12, T=None, dtype=torch.float64, bias=True, weights=False,
                 pad=False):
    g = torch.Generator().manual_seed(99)
    kw = dict(query=torch.randn(B, d, generator=g).to(dtype),
              weight=torch.randn(N, d, generator=g).to(dtype))
    shape = (B,) if T is None else (B, T)
    kw["targets"] = torch.randint(0, N, shape, generator=g)
    if pad:
        kw["targets"].view(B, -1)[::3, -1] = -1
    if bias:
        kw["bias"] = torch.randn(N, generator=g).to(dtype)
    if weights and T is not None:
        w = torch.rand(B, T, generator=g, dtype=torch.float64)
        kw["target_weights"] = (w / w.sum(1, keepdim=True)).to(dtype)
    return kw


DIFF = ("query", "weight", "bias")


def run_both(kw, **options):
    ours_in = {k: (v.detach().clone().requires_grad_(True) if k in DIFF else v)
               for k, v in kw.items()}
    ref_in = {k: (v.detach().clone().requires_grad_(True) if k in DIFF else v)
              for k, v in kw.items()}
    ours = fastsoftmax.full_softmax_cross_entropy(**ours_in, **options)
    ref = full_softmax_cross_entropy_reference(**ref_in, **options)
    upstream = torch.randn_like(ref)
    (ours * upstream.to(ours.dtype)).sum().backward()
    (ref * upstream).sum().backward()
    return ours, ref, {k: (ours_in[k].grad, ref_in[k].grad) for k in DIFF if k in kw}


def check(kw, dtype=torch.float64, **options):
    ours, ref, grads = run_both(kw, **options)
    assert_close_to_reference(ours, ref, dtype)
    for name, (g_ours, g_ref) in grads.items():
        assert g_ours is not None and g_ours.dtype == kw[name].dtype, name
        assert_close_to_reference(g_ours, g_ref, dtype)
    return ours, ref


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("T", [None, 1, 4])
def test_matches_reference(bias, T):
    check(make_problem(T=T, bias=bias, pad=T is not None, weights=T is not None))


def test_equals_torch_cross_entropy():
    kw = make_problem(dtype=torch.float32)
    ours = fastsoftmax.full_softmax_cross_entropy(**kw)
    expected = F.cross_entropy(kw["query"] @ kw["weight"].T + kw["bias"], kw["targets"])
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_multi_hot_targets_equal_soft_label_cross_entropy():
    kw = make_problem(T=3, bias=False, weights=True)
    logits = kw["query"] @ kw["weight"].T
    soft = torch.zeros_like(logits).scatter_add_(1, kw["targets"], kw["target_weights"])
    expected = F.cross_entropy(logits, soft)
    torch.testing.assert_close(fastsoftmax.full_softmax_cross_entropy(**kw), expected)


@pytest.mark.parametrize("B,N", [(300, 1100), (700, 600)])
def test_many_tiles(B, N):
    check(make_problem(B=B, N=N, d=20, T=2, pad=True))


@pytest.mark.parametrize("temperature", [0.1, 2.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_temperature_reduction_sample_weights(temperature, reduction):
    kw = make_problem(T=2, pad=True)
    kw["sample_weights"] = torch.rand(kw["query"].shape[0], dtype=torch.float64)
    check(kw, temperature=temperature, reduction=reduction)


def test_large_logits_finite():
    kw = make_problem(bias=False)
    kw["query"] = kw["query"] * 2500
    out, _ = check(kw, reduction="none")
    assert torch.isfinite(out).all()


def test_empty_batch_and_all_padding():
    check(make_problem(B=0))
    kw = make_problem(T=2)
    kw["targets"][:] = -1
    out, _ = check(kw)
    assert out.item() == 0.0


def test_non_contiguous():
    kw = make_problem(B=6, N=10, d=8)
    kw["query"] = torch.randn(8, 6, dtype=torch.float64).T
    kw["weight"] = torch.randn(10, 16, dtype=torch.float64)[:, ::2]
    kw["bias"] = torch.randn(20, dtype=torch.float64)[::2]
    check(kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision(dtype):
    kw64 = make_problem(B=33, N=700, d=32, T=2, pad=True)
    kw = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in kw64.items()}
    ours, ref, grads = run_both(kw)
    lowp = full_softmax_cross_entropy_reference(**kw, dtype=None)
    assert ours.dtype == torch.float32
    assert_close_to_reference(ours, ref, dtype, None if dtype == torch.float32 else lowp)
    for name, (g_ours, g_ref) in grads.items():
        assert g_ours.dtype == dtype
        assert_close_to_reference(g_ours, g_ref, dtype)


def test_gradcheck():
    kw = make_problem(B=3, N=5, d=4, T=2, pad=True)
    targets = kw["targets"]

    def fn(q, w, b):
        return fastsoftmax.full_softmax_cross_entropy(q, w, targets, bias=b, temperature=0.6,
                                                      reduction="none")

    inputs = tuple(kw[k].clone().requires_grad_(True) for k in DIFF)
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("bias", [False, True])
def test_opcheck(bias):
    kw = make_problem(B=4, N=7, d=5, T=2, bias=bias)
    weights = torch.full((4, 2), 0.5, dtype=torch.float64)
    q = kw["query"].clone().requires_grad_(True)
    w = kw["weight"].clone().requires_grad_(True)
    b = kw["bias"].clone().requires_grad_(True) if bias else None
    args = (q, w, b, kw["targets"], weights, 0.9)
    torch.library.opcheck(torch.ops.fastsoftmax.full_softmax_ce.default, args)
    loss, lse = torch.ops.fastsoftmax.full_softmax_ce(
        q.detach(), w.detach(), None if b is None else b.detach(), kw["targets"], weights, 0.9)
    torch.library.opcheck(torch.ops.fastsoftmax.full_softmax_ce_backward.default,
                          (torch.randn_like(loss), q.detach(), w.detach(),
                           None if b is None else b.detach(), kw["targets"], weights, lse, 0.9))


def test_module_drop_in_and_compile():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tower = torch.nn.Linear(6, 8)
            self.items = torch.nn.Embedding(30, 8)
            self.bias = torch.nn.Parameter(torch.zeros(30))
            self.loss = fastsoftmax.FullSoftmaxLoss(temperature=0.5)

        def forward(self, x, y):
            return self.loss(self.tower(x), self.items.weight, y, bias=self.bias)

    model = Model()
    x, y = torch.randn(5, 6), torch.randint(0, 30, (5,))
    eager = model(x, y)
    eager.backward()
    grad = model.items.weight.grad.clone()
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x, y)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(model.items.weight.grad, grad)
    expected = F.cross_entropy((model.tower(x) @ model.items.weight.T + model.bias) / 0.5, y)
    torch.testing.assert_close(eager, expected, atol=1e-5, rtol=1e-5)
    assert "temperature=0.5" in repr(model.loss)


@pytest.mark.parametrize("changes,match", [
    (dict(targets=torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 37])), "targets has an entry 37 out of range"),
    (dict(targets=torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, -2])), "targets has an entry -2"),
    (dict(targets=torch.zeros(9, dtype=torch.int32)), "targets must have dtype"),
    (dict(targets=torch.zeros(8, dtype=torch.int64)), "targets must be"),
    (dict(weight=torch.randn(37, 11, dtype=torch.float64)), "weight must be"),
    (dict(bias=torch.randn(36, dtype=torch.float64)), "bias must have shape"),
    (dict(weight=torch.randn(37, 12, dtype=torch.float32)), "weight must have dtype"),
    (dict(target_weights=-torch.ones(9, dtype=torch.float64)), "target_weights must be non-negative"),
])
def test_bad_input(changes, match):
    kw = make_problem()
    kw.update(changes)
    with pytest.raises((ValueError, TypeError), match=match):
        fastsoftmax.full_softmax_cross_entropy(**kw)


def test_native_op_rejects_out_of_range_targets():
    kw = make_problem(B=2, N=3, T=1, bias=False)
    with pytest.raises(RuntimeError, match="targets has an entry 5 out of range"):
        torch.ops.fastsoftmax.full_softmax_ce(kw["query"], kw["weight"], None,
                                              torch.tensor([[0], [5]]),
                                              torch.ones(2, 1, dtype=torch.float64), 1.0)
