"""Exact top-k inner-product retrieval (serving, evaluation, hard-negative pools).

``topk_inner_product`` scores every query against every item by inner product (plus an optional
per-item bias), skips per-row exclusions, and returns the k best per row without ever holding the
[B x N] score matrix: the native kernels (csrc/cpu/topk_cpu.cpp, csrc/cuda/topk_*.cu) scan the
items tile by tile and keep a running top-k per row.

This module also registers the op's fake kernel (for torch.compile) and marks its outputs
non-differentiable.
"""
from typing import Optional, Sequence, Tuple, Union

import torch

from . import _C  # noqa: F401  (loads the shared library, which registers the ops)

__all__ = ["topk_inner_product", "topk_inner_product_bf16", "exclusions_to_csr"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# An exclusion argument: a CSR pair (offsets [B + 1], indices [E]) given as a tuple, or a list of
# B sequences (each a list of ints or a 1-D integer tensor).
Exclusions = Union[Tuple[torch.Tensor, torch.Tensor], Sequence[Union[Sequence[int], torch.Tensor]]]


def score_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the returned scores: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _eager() -> bool:
    # Checks that read tensor values run in eager mode only; under torch.compile the native
    # kernel still refuses bad exclusion lists (RuntimeError).
    return not torch.compiler.is_compiling()


def _check_tensor(name: str, value, dims: int, dtypes=None) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D, got shape {tuple(value.shape)}")
    if dtypes is not None and value.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {value.dtype}")


def exclusions_to_csr(exclude: Exclusions, batch: int, num_items: int,
                      device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normalises ``exclude`` to a validated CSR pair (offsets [B + 1] int64, indices [E] int64).

    ``exclude`` is either a tuple ``(offsets, indices)`` (row b excludes
    ``indices[offsets[b]:offsets[b + 1]]``) or a list of ``batch`` sequences of item indices.
    Raises TypeError / ValueError naming the problem.
    """
    if isinstance(exclude, tuple):
        if len(exclude) != 2:
            raise ValueError("exclude given as a tuple must be the CSR pair (offsets, indices), "
                             f"got a tuple of {len(exclude)} elements")
        offsets, indices = exclude
        _check_tensor("exclude offsets", offsets, 1, (torch.int64,))
        _check_tensor("exclude indices", indices, 1, (torch.int64,))
        if offsets.shape[0] != batch + 1:
            raise ValueError(f"exclude offsets must have B + 1 = {batch + 1} entries, "
                             f"got {offsets.shape[0]}")
        for name, t in (("exclude offsets", offsets), ("exclude indices", indices)):
            if t.device != device:
                raise ValueError(f"{name} is on {t.device} but query is on {device}")
    elif isinstance(exclude, (str, bytes, torch.Tensor)) or not hasattr(exclude, "__len__"):
        raise TypeError("exclude must be a CSR pair (offsets, indices) given as a tuple, or a "
                        f"list of B sequences of item indices; got {type(exclude).__name__}")
    else:
        if len(exclude) != batch:
            raise ValueError(f"exclude must have one sequence per query row (B = {batch}), "
                             f"got {len(exclude)}")
        rows = []
        for b, row in enumerate(exclude):
            if isinstance(row, torch.Tensor):
                if row.dim() != 1 or row.dtype.is_floating_point or row.dtype.is_complex \
                        or row.dtype == torch.bool:
                    raise TypeError(f"exclude[{b}] must be a 1-D integer tensor, got "
                                    f"{row.dtype} of shape {tuple(row.shape)}")
                rows.append(row.to(device="cpu", dtype=torch.int64))
            else:
                try:
                    values = list(row)
                except TypeError:
                    raise TypeError(f"exclude[{b}] must be a sequence of item indices, "
                                    f"got {type(row).__name__}") from None
                for v in values:
                    if isinstance(v, bool) or not isinstance(v, int):
                        raise TypeError(f"exclude[{b}] must hold ints, got {type(v).__name__}")
                rows.append(torch.tensor(values, dtype=torch.int64))
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
        offsets = torch.zeros(batch + 1, dtype=torch.int64)
        torch.cumsum(lengths, 0, out=offsets[1:])
        indices = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64)
        offsets, indices = offsets.to(device), indices.to(device)

    if _eager():
        if offsets.numel() and int(offsets[0]) != 0:
            raise ValueError(f"exclude offsets must start at 0, got {int(offsets[0])}")
        if batch > 0 and bool((offsets[1:] < offsets[:-1]).any()):
            raise ValueError("exclude offsets must be non-decreasing")
        if int(offsets[-1]) != indices.shape[0]:
            raise ValueError(f"exclude offsets[-1] = {int(offsets[-1])} must equal the number of "
                             f"exclude indices ({indices.shape[0]})")
        if indices.numel():
            lo, hi = int(indices.min()), int(indices.max())
            if lo < 0 or hi >= num_items:
                bad = lo if lo < 0 else hi
                raise ValueError(f"exclude indices must lie in [0, N = {num_items}), found {bad}")
    return offsets, indices


def topk_inner_product(query: torch.Tensor, items: torch.Tensor, k: int, *,
                       bias: Optional[torch.Tensor] = None,
                       exclude: Optional[Exclusions] = None,
                       sorted: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k items by inner product, per query row, without a [B x N] score matrix.

    score[b, j] = query[b] . items[j] (+ bias[j]), accumulated in float32 (float64 for float64
    inputs).

    Args:
        query: [B, d] float16, bfloat16, float32 or float64.
        items: [N, d], same dtype and device as ``query``. Any strides.
        k: number of results per row, 1 <= k <= N.
        bias: optional [N] floating tensor added to every row's scores.
        exclude: items that row b must not return: a CSR pair ``(offsets [B + 1], indices [E])``
            of int64 tensors given as a *tuple* (row b skips
            ``indices[offsets[b]:offsets[b + 1]]``), or a *list* of B sequences of item indices
            (converted to CSR once). Duplicates are allowed.
        sorted: when True (default) each row is ordered best first; when False the k results of a
            row come in an unspecified order (the same set).

    Returns:
        ``(scores, indices)``: scores [B, k] float32 (float64 for float64 inputs) and indices
        [B, k] int64. Ties are broken by the lower index, so the result is the set a float64
        reference returns (up to the float32 rounding of near-equal scores).

    NaN and -inf: an item whose score is NaN or -inf is never returned (a bias of -inf switches
    an item off). A row with fewer than k eligible items (after exclusions) is padded at the end
    with score -inf and index -1.

    Not differentiable: the outputs never require grad. To train through the retrieved items,
    re-score them, e.g. ``(query[:, None] * items[indices]).sum(-1)``.

    Raises:
        TypeError: an argument of the wrong type or dtype.
        ValueError: k out of [1, N], mismatched shapes or devices, exclusion offsets not starting
            at 0 / not non-decreasing / not ending at E, exclusion indices out of [0, N).
    """
    _check_tensor("query", query, 2, _FLOAT_DTYPES)
    _check_tensor("items", items, 2, _FLOAT_DTYPES)
    if items.dtype != query.dtype:
        raise TypeError(f"items dtype ({items.dtype}) must equal query dtype ({query.dtype})")
    if items.device != query.device:
        raise ValueError(f"items are on {items.device} but query is on {query.device}")
    if items.shape[1] != query.shape[1]:
        raise ValueError(f"items have d = {items.shape[1]} but query has d = {query.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, (int, torch.SymInt)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    num_items = items.shape[0]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > num_items:
        raise ValueError(f"k = {k} exceeds the number of items N = {num_items}")
    if not isinstance(sorted, bool):
        raise TypeError(f"sorted must be a bool, got {type(sorted).__name__}")
    if bias is not None:
        _check_tensor("bias", bias, 1, _FLOAT_DTYPES)
        if bias.shape[0] != num_items:
            raise ValueError(f"bias must have N = {num_items} entries, got {bias.shape[0]}")
        if bias.device != query.device:
            raise ValueError(f"bias is on {bias.device} but query is on {query.device}")
    offsets = indices = None
    if exclude is not None:
        offsets, indices = exclusions_to_csr(exclude, query.shape[0], num_items, query.device)
    return torch.ops.fastsoftmax.topk_inner_product(query, items, k, bias, offsets, indices,
                                                    sorted)


# ------------------------------------------------------------------- registration with torch


@torch.library.register_fake("fastsoftmax::topk_inner_product")
def _topk_inner_product_fake(query, items, k, bias, exclude_offsets, exclude_indices, sorted):
    torch._check(query.dim() == 2, lambda: "query must be [B, d]")
    torch._check(items.dim() == 2, lambda: "items must be [N, d]")
    torch._check(items.dtype == query.dtype, lambda: "items dtype must equal query dtype")
    torch._check(items.shape[1] == query.shape[1], lambda: "items must have d columns")
    torch._check(k >= 1, lambda: "k must be >= 1")
    torch._check(k <= items.shape[0], lambda: "k must be <= N")
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == items.shape[0],
                     lambda: "bias must be [N]")
    torch._check((exclude_offsets is None) == (exclude_indices is None),
                 lambda: "exclude_offsets and exclude_indices must be given together")
    if exclude_offsets is not None:
        torch._check(exclude_offsets.dim() == 1 and exclude_offsets.shape[0] == query.shape[0] + 1,
                     lambda: "exclude_offsets must be [B + 1]")
    batch = query.shape[0]
    return (query.new_empty((batch, k), dtype=score_dtype(query.dtype)),
            query.new_empty((batch, k), dtype=torch.int64))


def _topk_setup_context(ctx, inputs, output):
    # NB: top-k selection is piecewise constant in the indices and the scores are a gather of the
    # inputs; we do not differentiate through it (callers re-score the returned indices).
    ctx.mark_non_differentiable(*output)


def _topk_backward(ctx, grad_scores, grad_indices):
    raise RuntimeError("topk_inner_product is not differentiable; re-score the returned indices "
                       "to get gradients")


torch.library.register_autograd("fastsoftmax::topk_inner_product", _topk_backward,
                                setup_context=_topk_setup_context)


# -------------------------------------------------------------- bf16 scan, exact fp32 result


def topk_inner_product_bf16(query: torch.Tensor, items: torch.Tensor, k: int, *,
                            items_bf16: Optional[torch.Tensor] = None,
                            bias: Optional[torch.Tensor] = None,
                            exclude: Optional[Exclusions] = None,
                            sorted: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """``topk_inner_product`` for float32 inputs, computed with a bfloat16 scan on CPU.

    The scan multiplies bfloat16 copies of query and items (AVX512-BF16 / AMX through oneDNN where
    the CPU has them), over-fetches ``k + max(64, k // 2)`` candidates per row, re-scores them in
    float64 from the float32 inputs and keeps the k best. A per-row error bound certifies that no
    item left out could enter the top-k; rows without the certificate are recomputed by the exact
    float32 scan. The result is the exact float32 top-k (same rules and outputs as
    ``topk_inner_product``; scores are the float64 re-scores rounded to float32).

    Args:
        items_bf16: ``items.bfloat16()``, cached by the caller (``ItemIndex(..., bf16_scan=True)``
            does); computed per call when None.
        Other arguments as in ``topk_inner_product``; query and items must be float32.

    On CUDA this runs the float32 path of ``topk_inner_product`` (cuBLAS float32 is the fast path
    there); ``items_bf16`` is only checked.
    """
    _check_tensor("query", query, 2, (torch.float32,))
    _check_tensor("items", items, 2, (torch.float32,))
    if items.device != query.device:
        raise ValueError(f"items are on {items.device} but query is on {query.device}")
    if items_bf16 is None:
        items_bf16 = items.bfloat16()
    _check_tensor("items_bf16", items_bf16, 2, (torch.bfloat16,))
    if items_bf16.shape != items.shape:
        raise ValueError(f"items_bf16 must have the shape of items {tuple(items.shape)}, got "
                         f"{tuple(items_bf16.shape)}")
    if items.shape[1] != query.shape[1]:
        raise ValueError(f"items have d = {items.shape[1]} but query has d = {query.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, (int, torch.SymInt)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1 or k > items.shape[0]:
        raise ValueError(f"k must lie in [1, N = {items.shape[0]}], got {k}")
    if bias is not None:
        _check_tensor("bias", bias, 1, _FLOAT_DTYPES)
        if bias.shape[0] != items.shape[0]:
            raise ValueError(f"bias must have N = {items.shape[0]} entries, got {bias.shape[0]}")
    offsets = indices = None
    if exclude is not None:
        offsets, indices = exclusions_to_csr(exclude, query.shape[0], items.shape[0],
                                             query.device)
    return torch.ops.fastsoftmax.topk_inner_product_bf16_rescored(
        query, items, items_bf16, k, bias, offsets, indices, sorted)


@torch.library.register_fake("fastsoftmax::topk_inner_product_bf16_rescored")
def _topk_bf16_fake(query, items, items_bf16, k, bias, exclude_offsets, exclude_indices, sorted):
    torch._check(query.dtype == torch.float32 and items.dtype == torch.float32,
                 lambda: "query and items must be float32")
    return _topk_inner_product_fake(query, items, k, bias, exclude_offsets, exclude_indices,
                                    sorted)


torch.library.register_autograd("fastsoftmax::topk_inner_product_bf16_rescored", _topk_backward,
                                setup_context=_topk_setup_context)
