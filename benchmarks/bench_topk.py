"""pytest-benchmark cases for top-k inner-product retrieval (the table lives in topk_cases.py).

    python -m pytest benchmarks/bench_topk.py --benchmark-only
"""
import os
import sys

import pytest
import torch

import fastsoftmax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topk_cases import torch_topk_chunked  # noqa: E402

SHAPES = [(256, 64, 100_000, 10), (256, 64, 100_000, 1000), (256, 128, 100_000, 100)]


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: "B{}-d{}-N{}-k{}".format(*s))
def problem(request):
    B, d, N, k = request.param
    gen = torch.Generator().manual_seed(0)
    return torch.randn(B, d, generator=gen), torch.randn(N, d, generator=gen), k


def test_matmul_floor(benchmark, problem):
    q, w, _ = problem
    out = torch.empty(q.shape[0], w.shape[0])
    benchmark(lambda: torch.mm(q, w.T, out=out))


def test_fastsoftmax(benchmark, problem):
    q, w, k = problem
    benchmark(lambda: fastsoftmax.topk_inner_product(q, w, k))


def test_fastsoftmax_exclusions(benchmark, problem):
    q, w, k = problem
    excl = [torch.randint(0, w.shape[0], (100,)) for _ in range(q.shape[0])]
    csr = fastsoftmax.retrieval.exclusions_to_csr(excl, q.shape[0], w.shape[0], q.device)
    benchmark(lambda: fastsoftmax.topk_inner_product(q, w, k, exclude=csr))


def test_torch_topk_chunked(benchmark, problem):
    q, w, k = problem
    benchmark(lambda: torch_topk_chunked(q, w, k))


def test_torch_topk_full(benchmark, problem):
    q, w, k = problem
    benchmark(lambda: torch.topk(q @ w.T, k, dim=1))
