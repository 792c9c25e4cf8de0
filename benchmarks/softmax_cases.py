"""Benchmark cases of the fused softmax cross-entropy ops (forward + backward, fp32).

Each case measures, side by side in one process: fastsoftmax, the same math in eager PyTorch
(fastsoftmax.reference in the inputs' dtype), that reference under torch.compile, and the matmul
floor (the B x C x d products the op must do, torch.mm into preallocated buffers).
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

import fastsoftmax
from fastsoftmax.reference import sampled_softmax_cross_entropy_reference

from common import Row, measure


@dataclass
class Case:
    name: str
    impls: Dict[str, Callable[[], object]]   # impl name -> one forward + backward
    check: Callable[[], None]                # raises if fastsoftmax disagrees with eager
    targets: List[Tuple[str, str, float]]    # (impl, "speed" | "memory" | "floor", bound)


def _fwd_bwd(loss_fn: Callable[[], torch.Tensor], params: List[torch.Tensor]):
    def run():
        for p in params:
            p.grad = None
        loss_fn().backward()
    return run


def _check_close(ours_fn, eager_fn, params, what):
    for p in params:
        p.grad = None
    ours = ours_fn()
    ours.backward()
    ours_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    eager = eager_fn()
    eager.backward()
    if not torch.allclose(ours.float(), eager.float(), rtol=1e-4, atol=1e-4):
        raise AssertionError(f"{what}: loss {ours.item()} != eager {eager.item()}")
    for mine, theirs in zip(ours_grads, (p.grad for p in params)):
        scale = theirs.abs().max().clamp_min(1e-12)
        if ((mine - theirs).abs().max() / scale).item() > 1e-3:
            raise AssertionError(f"{what}: gradients differ from eager")
    for p in params:
        p.grad = None


def shared_case(B=4096, d=128, C=8192, num_items=1_000_000, compile_baseline=True) -> Case:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, d, generator=g).mul_(0.1).requires_grad_()
    pos = torch.randn(B, d, generator=g).mul_(0.1).requires_grad_()
    cand = torch.randn(C, d, generator=g).mul_(0.1).requires_grad_()
    pos_ids = torch.randint(0, num_items, (B,), generator=g)
    cand_ids = torch.randint(0, num_items, (C,), generator=g)
    cand_log_q = -torch.rand(C, generator=g) * 5
    kw = dict(positive_ids=pos_ids, candidate_ids=cand_ids, candidate_log_q=cand_log_q)
    params = [q, pos, cand]

    def ours():
        return fastsoftmax.sampled_softmax_cross_entropy(q, pos, cand, **kw)

    def eager():
        return sampled_softmax_cross_entropy_reference(q, pos, cand, **kw, dtype=None)

    scores = torch.empty(B, C)
    grad_q, grad_c = torch.empty(B, d), torch.empty(C, d)

    def floor():
        torch.mm(q.detach(), cand.detach().T, out=scores)
        torch.mm(scores, cand.detach(), out=grad_q)
        torch.mm(scores.T, q.detach(), out=grad_c)

    impls = {"fastsoftmax": _fwd_bwd(ours, params), "eager": _fwd_bwd(eager, params)}
    if compile_baseline:
        compiled = torch.compile(lambda: sampled_softmax_cross_entropy_reference(
            q, pos, cand, **kw, dtype=None))
        impls["torch.compile"] = _fwd_bwd(compiled, params)
    impls["matmul floor (3 mm)"] = floor
    return Case(
        f"shared B={B} d={d} C={C}", impls, lambda: _check_close(ours, eager, params, "shared"),
        [("eager", "speed", 2.5), ("torch.compile", "speed", 2.0),
         ("matmul floor (3 mm)", "floor", 1.5), ("eager", "memory", 8.0)])


def per_row_case(B=4096, d=128, C=8192, H=64, num_items=1_000_000) -> Case:
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, d, generator=g).mul_(0.1).requires_grad_()
    pos = torch.randn(B, d, generator=g).mul_(0.1).requires_grad_()
    cand = torch.randn(C, d, generator=g).mul_(0.1).requires_grad_()
    kw = dict(positive_ids=torch.randint(0, num_items, (B,), generator=g),
              candidate_ids=torch.randint(0, num_items, (C,), generator=g),
              candidate_index=torch.randint(0, C, (B, H), generator=g),
              candidate_log_q=-torch.rand(B, H, generator=g) * 5)
    params = [q, pos, cand]

    def ours():
        return fastsoftmax.sampled_softmax_cross_entropy(q, pos, cand, **kw)

    def eager():
        return sampled_softmax_cross_entropy_reference(q, pos, cand, **kw, dtype=None)

    return Case(f"per-row B={B} d={d} C={C} H={H}",
                {"fastsoftmax": _fwd_bwd(ours, params), "eager": _fwd_bwd(eager, params)},
                lambda: _check_close(ours, eager, params, "per-row"), [("eager", "speed", 3.0)])


def full_case(B=1024, d=64, N=1_000_000, compile_baseline=True) -> Case:
    g = torch.Generator().manual_seed(2)
    q = torch.randn(B, d, generator=g).mul_(0.1).requires_grad_()
    table = torch.randn(N, d, generator=g).mul_(0.1).requires_grad_()
    y = torch.randint(0, N, (B,), generator=g)
    params = [q, table]

    def ours():
        return fastsoftmax.full_softmax_cross_entropy(q, table, y)

    def eager():
        return F.cross_entropy(q @ table.T, y)

    logits = torch.empty(B, N)
    grad_q, grad_w = torch.empty(B, d), torch.empty(N, d)

    def floor():
        torch.mm(q.detach(), table.detach().T, out=logits)
        torch.mm(logits, table.detach(), out=grad_q)
        torch.mm(logits.T, q.detach(), out=grad_w)

    impls = {"fastsoftmax": _fwd_bwd(ours, params), "eager": _fwd_bwd(eager, params)}
    if compile_baseline:
        impls["torch.compile"] = _fwd_bwd(torch.compile(eager), params)
    impls["matmul floor (3 mm)"] = floor
    return Case(f"full B={B} d={d} N={N}", impls,
                lambda: _check_close(ours, eager, params, "full"),
                [("eager", "speed", 3.0), ("matmul floor (3 mm)", "floor", 1.5),
                 ("fastsoftmax", "absolute_mib", 256.0)])


def cases(quick: bool, compile_baseline: bool) -> List[Callable[[], Case]]:
    if quick:
        return [lambda: shared_case(B=1024, C=2048, compile_baseline=compile_baseline),
                lambda: per_row_case(B=1024, C=2048),
                lambda: full_case(B=256, N=100_000, compile_baseline=compile_baseline)]
    return [lambda: shared_case(compile_baseline=compile_baseline), per_row_case,
            lambda: full_case(compile_baseline=compile_baseline)]


def evaluate_targets(case: Case, rows: List[Row]) -> List[str]:
    """One line per target: measured ratio, bound, met or not."""
    by_impl = {r.impl: r for r in rows if r.case == case.name}
    ours = by_impl["fastsoftmax"]
    lines = []
    for impl, kind, bound in case.targets:
        if impl not in by_impl:
            continue
        other = by_impl[impl]
        if kind == "speed":
            value, ok = other.median_ms / ours.median_ms, other.median_ms / ours.median_ms >= bound
            text = f"{value:.2f}x faster than {impl} (target >= {bound}x)"
        elif kind == "floor":
            value = ours.median_ms / other.median_ms
            ok = value <= bound
            text = f"{value:.2f}x the {impl} (target <= {bound}x)"
        elif kind == "memory":
            if ours.extra_peak_mib is None or other.extra_peak_mib is None:
                lines.append(f"- {case.name}: memory vs {impl}: not measurable here")
                continue
            value = other.extra_peak_mib / max(ours.extra_peak_mib, 1e-9)
            ok = value >= bound
            text = (f"extra peak {ours.extra_peak_mib:.0f} MiB vs {impl} "
                    f"{other.extra_peak_mib:.0f} MiB = 1/{value:.1f} (target <= 1/{bound:.0f})")
        else:  # absolute_mib
            if ours.extra_peak_mib is None:
                continue
            ok = ours.extra_peak_mib <= bound
            text = f"extra peak {ours.extra_peak_mib:.0f} MiB (target <= {bound:.0f} MiB)"
        lines.append(f"- {case.name}: {text}: {'met' if ok else 'NOT met'}")
    return lines


def run(quick: bool, repeats: int, compile_baseline: bool = True) -> Tuple[List[Row], List[str]]:
    rows, verdicts = [], []
    for make in cases(quick, compile_baseline):
        case = make()
        case.check()
        case_rows = []
        for impl, fn in case.impls.items():
            # The compiled baseline compiles during its warm-up call.
            warmup = 2 if impl == "torch.compile" else 1
            case_rows.append(measure("softmax", case.name, impl, fn, repeats, warmup=warmup))
            print(f"  {case.name:32s} {impl:22s} {case_rows[-1].median_ms:10.1f} ms", flush=True)
        rows += case_rows
        verdicts += evaluate_targets(case, case_rows)
        del case
    return rows, verdicts
