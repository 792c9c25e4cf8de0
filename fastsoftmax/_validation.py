"""Argument checks for the public functions: every message names the argument and the problem.

Checks of tensor *values* (ranges, signs, NaN) need the data, so they run in eager mode only;
under torch.compile the native kernels still refuse out-of-range indices themselves.
"""
import math
from typing import Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = ("mean", "sum", "none")


def eager() -> bool:
    """True outside torch.compile tracing: value checks are safe to run."""
    return not torch.compiler.is_compiling()


def check_tensor(name: str, value, *, dims: Sequence[int], dtypes=None,
                 device: Optional[torch.device] = None) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() not in dims:
        shapes = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{name} must be {shapes}, got shape {tuple(value.shape)}")
    if dtypes is not None and value.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {value.dtype}")
    if device is not None and value.device != device:
        raise ValueError(f"{name} is on {value.device} but query is on {device}")


def check_shape(name: str, value: torch.Tensor, expected: Sequence[int]) -> None:
    if tuple(value.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(value.shape)}")


def check_ids_range(name: str, ids: torch.Tensor, upper: Optional[int], *,
                    allow_padding: bool = True) -> None:
    """ids must lie in [0, upper) (or be -1, padding, when allowed); upper=None: no upper bound."""
    if not eager() or ids.numel() == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    low_limit = -1 if allow_padding else 0
    if lo < low_limit:
        pad = " (-1 marks padding)" if allow_padding else ""
        raise ValueError(f"{name} has an entry {lo} below {low_limit}{pad}")
    if upper is not None and hi >= upper:
        raise ValueError(f"{name} has an entry {hi} out of range for {upper} items")


def check_nonnegative_finite(name: str, value: torch.Tensor) -> None:
    if not eager() or value.numel() == 0:
        return
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    if bool((value < 0).any()):
        raise ValueError(f"{name} must be non-negative")


def check_no_nan(name: str, value: torch.Tensor) -> None:
    if eager() and value.numel() and bool(torch.isnan(value).any()):
        raise ValueError(f"{name} contains NaN")


def check_temperature(temperature) -> float:
    if isinstance(temperature, torch.Tensor):
        raise TypeError("temperature must be a Python number, not a tensor")
    temperature = float(temperature)
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return temperature


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
