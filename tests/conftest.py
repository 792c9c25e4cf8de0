import pytest
import torch

# Tolerances against a float64 reference, in one place (STYLE.md).
ATOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 1e-2}
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 5e-2}

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a visible CUDA device")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_close_to_reference(actual, expected, dtype, lowp_reference=None):
    """fp32/fp64: fixed tolerances. fp16/bf16: the flash-attention rule
    max|ours - ref64| <= 2 * max|ref_lowp - ref64| (or within the fixed tolerance)."""
    actual = actual.double()
    expected = expected.double()
    err = (actual - expected).abs().max().item() if actual.numel() else 0.0
    bound = ATOL[dtype] + RTOL[dtype] * (expected.abs().max().item() if expected.numel() else 0.0)
    if lowp_reference is not None and lowp_reference.numel():
        bound = max(bound, 2 * (lowp_reference.double() - expected).abs().max().item())
    assert err <= bound, f"max error {err:.3g} > bound {bound:.3g} ({dtype})"


def pytest_report_header(config):
    import fastsoftmax
    return f"fastsoftmax {fastsoftmax.__file__} build {fastsoftmax.build_info()}"
