"""pytest-benchmark cases of one SampledSoftmaxLoss training step (forward + backward + SGD) next
to the eager PyTorch baseline of the same estimator, and unigram sampling next to
torch.multinomial, at loss_cases.py's --quick shapes.
Run: pytest benchmarks/bench_loss.py --benchmark-only"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import loss_cases  # noqa: E402

CASES = {
    "hard": lambda: loss_cases.train_step_case(**loss_cases.QUICK, H=64, P=1024),
    "shared": lambda: loss_cases.train_step_case(**loss_cases.QUICK, H=0),
}


@pytest.mark.parametrize("impl", ["fastsoftmax", "eager"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_sampled_loss_train_step(benchmark, name, impl):
    case = CASES[name]()
    if case.skipped:
        pytest.skip(f"{case.name}: {case.skipped}")
    case.check()
    benchmark.group = f"loss {case.name}"
    benchmark.extra_info["threads"] = __import__("torch").get_num_threads()
    benchmark.pedantic(case.impls[impl], rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("impl", ["fastsoftmax", "torch.multinomial"])
def test_unigram_sampling(benchmark, impl):
    case = loss_cases.unigram_sampling_case(N=100_000, n=100_000)
    case.check()
    benchmark.group = f"loss {case.name}"
    benchmark.extra_info["threads"] = __import__("torch").get_num_threads()
    benchmark.pedantic(case.impls[impl], rounds=5, warmup_rounds=1)
