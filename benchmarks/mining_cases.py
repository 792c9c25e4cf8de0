"""Benchmark cases of hard-negative mining (fastsoftmax.mine_hard_negatives), fp32.

Each case measures, side by side in one process: fastsoftmax, the eager PyTorch equivalent
(``q @ pool.T``, the exclusions masked with -inf, then ``topk`` or
``torch.multinomial(softmax, H, replacement=True)`` with the same log_q), and the matmul floor
(the B x P x d products into a preallocated buffer, the one thing both must do).
"""
import math
from typing import Callable, List, Tuple

import torch

import fastsoftmax

from common import Row, measure
from softmax_cases import Case, evaluate_targets


def _problem(B: int, d: int, P: int, num_items: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    # Scores with a standard deviation of about 1: a softmax that is neither flat nor one-hot.
    q = torch.randn(B, d, generator=g) * (1.0 / d) ** 0.25
    pool = torch.randn(P, d, generator=g) * (1.0 / d) ** 0.25
    pool_ids = torch.randint(0, num_items, (P,), generator=g)
    # Each row excludes its positive, an item that is in the pool (a false negative otherwise).
    exclude = pool_ids[torch.randint(0, P, (B,), generator=g)]
    pool_log_q = torch.log(torch.rand(P, generator=g) * 0.9 + 0.1)
    return q, pool, pool_ids, exclude, pool_log_q


def _masked_scores(q, pool, pool_ids, exclude, temperature):
    scores = q @ pool.T
    if temperature != 1.0:
        scores.div_(temperature)
    return scores.masked_fill_(pool_ids.unsqueeze(0) == exclude.unsqueeze(1), float("-inf"))


def mining_case(mode: str, B=4096, d=128, P=8192, H=64, num_items=1_000_000,
                temperature=1.0) -> Case:
    q, pool, pool_ids, exclude, pool_log_q = _problem(B, d, P, num_items, seed=3)
    generator = torch.Generator().manual_seed(0)

    def ours():
        return fastsoftmax.mine_hard_negatives(
            q, pool, H, pool_ids=pool_ids, exclude_ids=exclude, pool_log_q=pool_log_q,
            mode=mode, temperature=temperature, generator=1234)

    if mode == "topk":
        def eager():
            index = _masked_scores(q, pool, pool_ids, exclude, temperature).topk(H, dim=1).indices
            return index, pool_log_q[index]
    else:
        def eager():
            scores = _masked_scores(q, pool, pool_ids, exclude, temperature)
            log_p = torch.log_softmax(scores, dim=1)
            index = torch.multinomial(log_p.exp(), H, replacement=True, generator=generator)
            return index, pool_log_q[index] + math.log(H) + log_p.gather(1, index)

    floor_out = torch.empty(B, P)

    def floor():
        torch.mm(q, pool.T, out=floor_out)

    def check():
        index, log_q = ours()
        scores = _masked_scores(q, pool, pool_ids, exclude, temperature)
        picked = scores.gather(1, index)
        if not bool(torch.isfinite(picked).all()):
            raise AssertionError(f"{mode}: an excluded pool row was picked")
        if mode == "topk":
            expected = scores.topk(H, dim=1).values
            if not torch.allclose(picked, expected, rtol=1e-5, atol=1e-5):
                raise AssertionError("topk: values differ from eager topk")
            if not torch.equal(log_q, pool_log_q[index]):
                raise AssertionError("topk: log_q differs from pool_log_q[index]")
        else:
            log_p = torch.log_softmax(scores, dim=1).gather(1, index)
            expected = pool_log_q[index] + math.log(H) + log_p
            if not torch.allclose(log_q, expected, rtol=1e-4, atol=1e-4):
                raise AssertionError("sample: log_q differs from the eager log-softmax")
            # Mean score of the picks: the same expectation as eager's multinomial draws.
            eager_index = eager()[0]
            ours_mean = picked.mean().item()
            eager_mean = scores.gather(1, eager_index).mean().item()
            if abs(ours_mean - eager_mean) > 0.02 * max(1.0, abs(eager_mean)):
                raise AssertionError(f"sample: mean picked score {ours_mean:.4f} vs eager "
                                     f"{eager_mean:.4f}")

    return Case(f"{mode} B={B} d={d} P={P} H={H}",
                {"fastsoftmax": ours, "eager": eager, "matmul floor (1 mm)": floor}, check,
                [("eager", "speed", 3.0), ("eager", "memory", 8.0)])


def cases(quick: bool) -> List[Callable[[], Case]]:
    if quick:
        return [lambda: mining_case("topk", B=1024, P=2048),
                lambda: mining_case("sample", B=1024, P=2048)]
    return [lambda: mining_case("topk"), lambda: mining_case("sample")]


def run(quick: bool, repeats: int) -> Tuple[List[Row], List[str]]:
    rows, verdicts = [], []
    for make in cases(quick):
        case = make()
        case.check()
        case_rows = []
        for impl, fn in case.impls.items():
            case_rows.append(measure("mining", case.name, impl, fn, repeats))
            print(f"  {case.name:32s} {impl:22s} {case_rows[-1].median_ms:10.1f} ms", flush=True)
        rows += case_rows
        verdicts += evaluate_targets(case, case_rows)
        del case
    return rows, verdicts
