"""pytest-benchmark cases for the fused softmax losses (forward + backward, fp32), each next to
its eager PyTorch baseline at the same shape. Run: pytest benchmarks/ --benchmark-only"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import softmax_cases  # noqa: E402

CASES = {
    "shared": lambda: softmax_cases.shared_case(B=1024, C=2048, compile_baseline=False),
    "per_row": lambda: softmax_cases.per_row_case(B=1024, C=2048),
    "full": lambda: softmax_cases.full_case(B=256, N=100_000, compile_baseline=False),
}


@pytest.mark.parametrize("impl", ["fastsoftmax", "eager"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_softmax_fwd_bwd(benchmark, name, impl):
    case = CASES[name]()
    case.check()
    benchmark.group = f"softmax {case.name}"
    benchmark.pedantic(case.impls[impl], rounds=5, warmup_rounds=1)
