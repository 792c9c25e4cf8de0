"""CPU <-> CUDA parity of the softmax cross-entropy ops.

Every case runs the same torch.ops.fastsoftmax op on CPU tensors and on CUDA tensors and compares
the outputs: forward (loss, lse) and every gradient of the backward, in float32/float16/bfloat16/
float64, shared and per-row candidates, accidental hits, -1 padding, log Q, temperature, full
softmax with and without bias, degenerate rows. The CPU kernels define the semantics.

Skipped when no CUDA device is visible.
"""
import pytest
import torch

import fastsoftmax  # noqa: F401  (registers torch.ops.fastsoftmax and the fake kernels)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# Parity tolerances by output dtype (rtol, atol). Both sides accumulate in fp32 (fp64 for
# float64) from identical inputs, so fp32 outputs agree far below the fp16/bf16 input precision;
# low-precision gradients may differ by one rounding step of their dtype.
TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (5e-2, 1e-2),
}


# The device enters only through these two helpers (a CPU emulation of the kernels can replace
# them to run these cases without a GPU).
def _device_op(name):
    return getattr(torch.ops.fastsoftmax, name)


def _to_device(x):
    return x.to("cuda") if isinstance(x, torch.Tensor) else x


def _to_cpu(out):
    return tuple(t.cpu() for t in out)


def _run_both(name, args):
    cpu = getattr(torch.ops.fastsoftmax, name)(*args)
    dev = _to_cpu(_device_op(name)(*[_to_device(a) for a in args]))
    return cpu, dev


def _assert_parity(dev, cpu, what):
    assert dev.dtype == cpu.dtype, f"{what}: dtype {dev.dtype} != {cpu.dtype}"
    assert dev.shape == cpu.shape, f"{what}: shape {tuple(dev.shape)} != {tuple(cpu.shape)}"
    rtol, atol = TOL[cpu.dtype]
    # Entries that are sums with cancellation carry the rounding error of the largest terms, so
    # the absolute tolerance scales with the tensor's magnitude.
    scale = max(1.0, cpu.abs().max().item()) if cpu.numel() else 1.0
    torch.testing.assert_close(dev, cpu, rtol=rtol, atol=atol * scale,
                               msg=lambda m: f"{what}: {m}")


def _assert_low_precision(dev, cpu, ref64, what):
    # flash-attention's rule: max|ours - ref64| <= 2 * max|ref_in_low_precision - ref64|.
    err_dev = (dev.double() - ref64).abs().max().item() if ref64.numel() else 0.0
    err_cpu = (cpu.double() - ref64).abs().max().item() if ref64.numel() else 0.0
    floor = 1e-6 * (1.0 + (ref64.abs().max().item() if ref64.numel() else 0.0))
    assert err_dev <= 2 * err_cpu + floor, (
        f"{what}: |cuda - ref64| = {err_dev:.3g} > 2 x |cpu - ref64| = 2 x {err_cpu:.3g}")


def _upcast(args):
    return [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in args]


# ---------------------------------------------------------------------------------------------
# Inputs.


def sampled_inputs(B, T, d, C, dtype, *, H=None, ids=True, log_q=True, padding=True,
                   id_range=40, temperature=0.7, remove_hits=True, seed=0):
    """Arguments of sampled_softmax_ce in schema order (CPU tensors)."""
    g = torch.Generator().manual_seed(seed)
    scale = 1.0 / d ** 0.25
    query = (torch.randn(B, d, generator=g) * scale).to(dtype)
    positives = (torch.randn(B, T, d, generator=g) * scale).to(dtype)
    candidates = (torch.randn(C, d, generator=g) * scale).to(dtype)
    positive_ids = candidate_ids = None
    if ids:
        # A small id range makes accidental hits frequent.
        positive_ids = torch.randint(0, id_range, (B, T), generator=g)
        candidate_ids = torch.randint(0, id_range, (C,), generator=g)
        if padding:
            positive_ids[torch.rand(B, T, generator=g) < 0.25] = -1
            if B > 1:
                positive_ids[1] = -1  # a row without positives: loss 0, zero gradients
    weights = torch.rand(B, T, generator=g) + 0.1
    positive_log_q = candidate_log_q = candidate_index = None
    if log_q:
        positive_log_q = torch.rand(B, T, generator=g) * -4
    if H is not None:
        candidate_index = torch.randint(-1, C, (B, H), generator=g)  # -1 padding, duplicates
        if log_q:
            candidate_log_q = torch.rand(B, H, generator=g) * -4
    elif log_q:
        candidate_log_q = torch.rand(C, generator=g) * -4
    return [query, positives, candidates, positive_ids, candidate_ids, weights, positive_log_q,
            candidate_log_q, candidate_index, temperature, remove_hits]


def full_inputs(B, T, d, N, dtype, *, bias=True, temperature=0.8, seed=0):
    """Arguments of full_softmax_ce in schema order (CPU tensors)."""
    g = torch.Generator().manual_seed(seed)
    scale = 1.0 / d ** 0.25
    query = (torch.randn(B, d, generator=g) * scale).to(dtype)
    weight = (torch.randn(N, d, generator=g) * scale).to(dtype)
    b = (torch.randn(N, generator=g) * 0.5).to(dtype) if bias else None
    targets = torch.randint(0, N, (B, T), generator=g)
    targets[torch.rand(B, T, generator=g) < 0.25] = -1
    if B > 1:
        targets[1] = -1  # a row without targets
    if B > 2 and T > 1:
        targets[2, 1] = targets[2, 0]  # a repeated target
    target_weights = torch.rand(B, T, generator=g) + 0.1
    return [query, weight, b, targets, target_weights, temperature]


def _grad_loss(B, seed):
    grad_loss = torch.randn(B, generator=torch.Generator().manual_seed(seed))
    grad_loss[::4] = 0  # rows without gradient are skipped by the kernels
    return grad_loss


def check_sampled(args, seed=1):
    """Forward and backward parity of sampled_softmax_ce for one argument list."""
    dtype = args[0].dtype
    (loss_c, lse_c), (loss_d, lse_d) = _run_both("sampled_softmax_ce", args)
    _assert_parity(loss_d, loss_c, "loss")
    _assert_parity(lse_d, lse_c, "lse")
    grad_loss = _grad_loss(args[0].shape[0], seed)
    # The same lse on both sides, so that the backward is compared on its own.
    bwd_args = [grad_loss] + args[:9] + [lse_c] + args[9:]
    cpu, dev = _run_both("sampled_softmax_ce_backward", bwd_args)
    for name, d_, c_ in zip(("grad_query", "grad_positives", "grad_candidates"), dev, cpu):
        _assert_parity(d_, c_, name)
    if dtype in (torch.float16, torch.bfloat16):
        ref_fwd = torch.ops.fastsoftmax.sampled_softmax_ce(*_upcast(args))
        for name, d_, c_, r in zip(("loss", "lse"), (loss_d, lse_d), (loss_c, lse_c), ref_fwd):
            _assert_low_precision(d_, c_, r, name)
        ref_bwd = torch.ops.fastsoftmax.sampled_softmax_ce_backward(*_upcast(bwd_args))
        for name, d_, c_, r in zip(("grad_query", "grad_positives", "grad_candidates"), dev, cpu,
                                   ref_bwd):
            _assert_low_precision(d_, c_, r, name)
    return (loss_d, lse_d), dev


def check_full(args, seed=1):
    """Forward and backward parity of full_softmax_ce for one argument list."""
    dtype = args[0].dtype
    (loss_c, lse_c), (loss_d, lse_d) = _run_both("full_softmax_ce", args)
    _assert_parity(loss_d, loss_c, "loss")
    _assert_parity(lse_d, lse_c, "lse")
    grad_loss = _grad_loss(args[0].shape[0], seed)
    bwd_args = [grad_loss] + args[:5] + [lse_c, args[5]]
    cpu, dev = _run_both("full_softmax_ce_backward", bwd_args)
    for name, d_, c_ in zip(("grad_query", "grad_weight", "grad_bias"), dev, cpu):
        _assert_parity(d_, c_, name)
    if dtype in (torch.float16, torch.bfloat16):
        ref_fwd = torch.ops.fastsoftmax.full_softmax_ce(*_upcast(args))
        for name, d_, c_, r in zip(("loss", "lse"), (loss_d, lse_d), (loss_c, lse_c), ref_fwd):
            _assert_low_precision(d_, c_, r, name)
        ref_bwd = torch.ops.fastsoftmax.full_softmax_ce_backward(*_upcast(bwd_args))
        for name, d_, c_, r in zip(("grad_query", "grad_weight", "grad_bias"), dev, cpu,
                                   ref_bwd):
            _assert_low_precision(d_, c_, r, name)
    return (loss_d, lse_d), dev


# ---------------------------------------------------------------------------------------------
# sampled_softmax_ce


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("remove_hits", [True, False])
@pytest.mark.parametrize("log_q", [True, False])
def test_sampled_shared_candidates(dtype, remove_hits, log_q):
    # B, C, d not multiples of any tile size; 3 column tiles.
    check_sampled(sampled_inputs(37, 3, 40, 150, dtype, log_q=log_q, remove_hits=remove_hits))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(130, 2, 72, 700), (3, 1, 16, 2000), (300, 4, 33, 70)],
                         ids=lambda s: "x".join(map(str, s)))
def test_sampled_shared_candidates_tiling(dtype, shape):
    # Several row and column tiles; splits of the candidate axis (short B) and of the row axis
    # (short C).
    B, T, d, C = shape
    check_sampled(sampled_inputs(B, T, d, C, dtype, seed=3))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("remove_hits", [True, False])
@pytest.mark.parametrize("log_q", [True, False])
def test_sampled_indexed_candidates(dtype, remove_hits, log_q):
    check_sampled(sampled_inputs(37, 3, 40, 90, dtype, H=17, log_q=log_q,
                                 remove_hits=remove_hits))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("H", [None, 5], ids=["shared", "indexed"])
def test_sampled_without_ids(dtype, H):
    # No ids: no padding and no hit masking; every positive counts.
    check_sampled(sampled_inputs(20, 2, 24, 50, dtype, H=H, ids=False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("H", [None, 6], ids=["shared", "indexed"])
def test_sampled_degenerate_rows(dtype, H):
    args = sampled_inputs(9, 3, 20, 40, dtype, H=H, padding=False)
    positive_ids, candidate_ids = args[3], args[4]
    candidate_ids.fill_(7)
    positive_ids[0, 0] = 7  # row 0: every candidate is an accidental hit
    positive_ids[1] = -1  # row 1: no positives -> loss 0, zero gradients
    positive_ids[2:, :] = positive_ids[2:, :] % 7  # others never hit
    if H is not None:
        args[8][3] = -1  # row 3: every candidate slot is padding
    (loss, lse), (gq, ge, gc) = check_sampled(args)
    assert torch.isfinite(loss).all() and torch.isfinite(lse).all()
    assert loss[1] == 0
    assert (gq[1] == 0).all() and (ge[1] == 0).all()
    assert torch.isfinite(gq).all() and torch.isfinite(ge).all() and torch.isfinite(gc).all()


def test_sampled_temperature():
    args = sampled_inputs(40, 3, 32, 100, torch.float32, temperature=0.05)
    check_sampled(args)
    args_idx = sampled_inputs(40, 3, 32, 100, torch.float32, H=9, temperature=3.0)
    check_sampled(args_idx)


def test_sampled_noncontiguous():
    B, T, d, C = 33, 3, 24, 80
    args = sampled_inputs(B, T, d, C, torch.float32)
    args[0] = args[0].t().contiguous().t()  # column-major query
    args[2] = torch.cat([args[2], args[2]], dim=1)[:, ::2]  # strided candidates
    args[5] = args[5].t().contiguous().t()
    check_sampled(args)


# ---------------------------------------------------------------------------------------------
# full_softmax_ce


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_full_softmax(dtype, bias):
    check_full(full_inputs(37, 3, 40, 300, dtype, bias=bias))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(100, 2, 64, 2000), (2, 1, 8, 5000), (260, 3, 20, 65)],
                         ids=lambda s: "x".join(map(str, s)))
def test_full_softmax_tiling(dtype, shape):
    B, T, d, N = shape
    check_full(full_inputs(B, T, d, N, dtype, seed=5))


def test_full_softmax_degenerate_rows():
    args = full_inputs(10, 4, 16, 50, torch.float64)
    args[3][0] = 3  # every target of row 0 is the same item
    (loss, _), (gq, gw, gb) = check_full(args)
    assert loss[1] == 0 and (gq[1] == 0).all()


# ---------------------------------------------------------------------------------------------
# Edge cases and op properties.


@pytest.mark.parametrize("H", [None, 4], ids=["shared", "indexed"])
def test_empty_batch(H):
    check_sampled(sampled_inputs(0, 2, 8, 10, torch.float32, H=H))
    check_full(full_inputs(0, 2, 8, 10, torch.float32))


def test_no_candidates():
    check_sampled(sampled_inputs(5, 2, 8, 0, torch.float32))
    check_sampled(sampled_inputs(5, 2, 8, 0, torch.float32, H=3))  # every slot is padding


def test_out_of_range_indices_raise():
    args = sampled_inputs(6, 2, 8, 10, torch.float32, H=3)
    args[8][2, 1] = 10
    with pytest.raises(RuntimeError, match="candidate_index has an entry 10 out of range"):
        _device_op("sampled_softmax_ce")(*[_to_device(a) for a in args])
    args[8][2, 1] = -2
    with pytest.raises(RuntimeError, match="candidate_index has an entry below -1"):
        _device_op("sampled_softmax_ce")(*[_to_device(a) for a in args])
    fargs = full_inputs(6, 2, 8, 10, torch.float32)
    fargs[3][0, 0] = 10
    with pytest.raises(RuntimeError, match="targets has an entry 10 out of range"):
        _device_op("full_softmax_ce")(*[_to_device(a) for a in fargs])


def test_dense_backward_is_deterministic():
    args = sampled_inputs(70, 2, 40, 900, torch.float32)
    grad_loss = torch.randn(70)
    dev_args = [_to_device(a) for a in args]
    _, lse = _device_op("sampled_softmax_ce")(*dev_args)
    bwd = [_to_device(grad_loss)] + dev_args[:9] + [lse] + dev_args[9:]
    first = _device_op("sampled_softmax_ce_backward")(*bwd)
    second = _device_op("sampled_softmax_ce_backward")(*bwd)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    fargs = [_to_device(a) for a in full_inputs(70, 2, 40, 900, torch.float32)]
    _, flse = _device_op("full_softmax_ce")(*fargs)
    fbwd = [_to_device(grad_loss)] + fargs[:5] + [flse, fargs[5]]
    first = _device_op("full_softmax_ce_backward")(*fbwd)
    second = _device_op("full_softmax_ce_backward")(*fbwd)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("H", [None, 5], ids=["shared", "indexed"])
def test_opcheck_sampled(H):
    args = [_to_device(a) for a in sampled_inputs(12, 2, 16, 30, torch.float32, H=H)]
    torch.library.opcheck(torch.ops.fastsoftmax.sampled_softmax_ce.default, args,
                          test_utils=OPCHECK_UTILS)
    _, lse = torch.ops.fastsoftmax.sampled_softmax_ce(*args)
    bwd = [torch.randn(12, device="cuda")] + args[:9] + [lse] + args[9:]
    torch.library.opcheck(torch.ops.fastsoftmax.sampled_softmax_ce_backward.default, bwd,
                          test_utils=OPCHECK_UTILS)


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck_full(bias):
    args = [_to_device(a) for a in full_inputs(12, 2, 16, 30, torch.float32, bias=bias)]
    torch.library.opcheck(torch.ops.fastsoftmax.full_softmax_ce.default, args,
                          test_utils=OPCHECK_UTILS)
    _, lse = torch.ops.fastsoftmax.full_softmax_ce(*args)
    bwd = [torch.randn(12, device="cuda")] + args[:5] + [lse, args[5]]
    torch.library.opcheck(torch.ops.fastsoftmax.full_softmax_ce_backward.default, bwd,
                          test_utils=OPCHECK_UTILS)


OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor",
                 "test_aot_dispatch_dynamic")
