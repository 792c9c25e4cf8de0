"""pytest-benchmark cases for hard-negative mining (fp32), each next to its eager PyTorch
baseline at the same shape. Run: pytest benchmarks/ --benchmark-only"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mining_cases  # noqa: E402


@pytest.mark.parametrize("impl", ["fastsoftmax", "eager"])
@pytest.mark.parametrize("mode", ["topk", "sample"])
def test_mining(benchmark, mode, impl):
    case = mining_cases.mining_case(mode, B=1024, P=2048)
    case.check()
    benchmark.group = f"mining {case.name}"
    benchmark.pedantic(case.impls[impl], rounds=5, warmup_rounds=1)
