"""Compressed sparse rows for "user -> items" sets.

A :class:`UserItemCSR` is a ``(offsets, indices)`` named tuple, so it can be passed unchanged
wherever the kernels take an exclusion list (``exclude=(offsets, indices)``) and wherever the
metrics take ground truth. Row ``u`` holds the items ``indices[offsets[u]:offsets[u + 1]]``,
sorted ascending and without duplicates.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import numpy as np
import torch


def _as_int64_tensor(values) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.to(torch.int64)
    return torch.as_tensor(np.asarray(values, dtype=np.int64))


class UserItemCSR(NamedTuple):
    """Per-row item sets in CSR form.

    offsets: [n_rows + 1] int64, non-decreasing, ``offsets[0] == 0``.
    indices: [nnz] int64 item indices; sorted ascending and unique within each row.
    """

    offsets: torch.Tensor
    indices: torch.Tensor

    # ----------------------------------------------------------------------------- builders
    @classmethod
    def from_pairs(cls, rows, items, n_rows: int) -> "UserItemCSR":
        """Build from parallel arrays of (row, item) pairs; duplicates are dropped.

        rows, items: [N] integer arrays or tensors; rows in [0, n_rows).
        """
        rows_t = _as_int64_tensor(rows).reshape(-1).cpu()
        items_t = _as_int64_tensor(items).reshape(-1).cpu()
        if rows_t.numel() != items_t.numel():
            raise ValueError(f"rows ({rows_t.numel()}) and items ({items_t.numel()}) differ in length")
        if rows_t.numel() and (int(rows_t.min()) < 0 or int(rows_t.max()) >= n_rows):
            raise ValueError(f"row index out of range [0, {n_rows})")
        if items_t.numel() and int(items_t.min()) < 0:
            raise ValueError("item indices must be non-negative")
        # One sort over a combined key gives rows in order and items sorted within each row;
        # unique() on the same key drops repeated (row, item) pairs.
        stride = int(items_t.max()) + 1 if items_t.numel() else 1
        keys = torch.unique(rows_t * stride + items_t)  # sorted
        sorted_rows = torch.div(keys, stride, rounding_mode="floor")
        counts = torch.bincount(sorted_rows, minlength=n_rows)
        offsets = torch.zeros(n_rows + 1, dtype=torch.int64)
        torch.cumsum(counts, 0, out=offsets[1:])
        return cls(offsets, keys - sorted_rows * stride)

    @classmethod
    def from_sets(cls, item_sets: Sequence[Iterable[int]]) -> "UserItemCSR":
        """Build from one iterable of item indices per row (a list of sets, lists, ...)."""
        lengths = [0] * len(item_sets)
        flat: list[int] = []
        for row, items in enumerate(item_sets):
            before = len(flat)
            flat.extend(int(i) for i in items)
            lengths[row] = len(flat) - before
        rows = np.repeat(np.arange(len(item_sets), dtype=np.int64), lengths)
        return cls.from_pairs(rows, np.asarray(flat, dtype=np.int64), len(item_sets))

    @classmethod
    def empty(cls, n_rows: int) -> "UserItemCSR":
        return cls(torch.zeros(n_rows + 1, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))

    # ----------------------------------------------------------------------------- queries
    @property
    def n_rows(self) -> int:
        return self.offsets.numel() - 1

    @property
    def nnz(self) -> int:
        return self.indices.numel()

    def row_lengths(self) -> torch.Tensor:
        """[n_rows] int64: number of items in each row."""
        return self.offsets[1:] - self.offsets[:-1]

    def row(self, r: int) -> torch.Tensor:
        """[len] int64: the items of row ``r``."""
        return self.indices[int(self.offsets[r]) : int(self.offsets[r + 1])]

    def to_sets(self) -> list[set[int]]:
        """One Python set per row (for tests and small inspections)."""
        offsets = self.offsets.tolist()
        indices = self.indices.tolist()
        return [set(indices[offsets[r] : offsets[r + 1]]) for r in range(self.n_rows)]

    def row_ids(self) -> torch.Tensor:
        """[nnz] int64: the row of every entry of ``indices``."""
        return torch.repeat_interleave(
            torch.arange(self.n_rows, device=self.offsets.device), self.row_lengths()
        )

    # ----------------------------------------------------------------------------- transforms
    def take_rows(self, rows) -> "UserItemCSR":
        """A CSR whose row i is row ``rows[i]`` of this one.

        rows: [R] int64 indices (any order, repeats allowed). Result has R rows.
        """
        rows_t = _as_int64_tensor(rows).reshape(-1).to(self.offsets.device)
        starts = self.offsets[rows_t]
        lengths = self.offsets[rows_t + 1] - starts
        offsets = torch.zeros(rows_t.numel() + 1, dtype=torch.int64, device=self.offsets.device)
        torch.cumsum(lengths, 0, out=offsets[1:])
        # Position j of the output row i reads indices[starts[i] + j]; build all positions at
        # once: each output entry's start, plus its rank within its row.
        total = int(offsets[-1])
        out_rows = torch.repeat_interleave(torch.arange(rows_t.numel(), device=rows_t.device), lengths)
        within = torch.arange(total, device=rows_t.device) - offsets[:-1][out_rows]
        return UserItemCSR(offsets, self.indices[starts[out_rows] + within])

    def union(self, other: "UserItemCSR") -> "UserItemCSR":
        """Row-wise union of two CSRs with the same number of rows."""
        if other.n_rows != self.n_rows:
            raise ValueError(f"row counts differ: {self.n_rows} vs {other.n_rows}")
        rows = torch.cat([self.row_ids(), other.row_ids()]).cpu()
        items = torch.cat([self.indices, other.indices]).cpu()
        return UserItemCSR.from_pairs(rows, items, self.n_rows)

    def to(self, device) -> "UserItemCSR":
        return UserItemCSR(self.offsets.to(device), self.indices.to(device))


def as_user_item_csr(value, n_rows: int | None = None, *, name: str = "argument") -> UserItemCSR:
    """Accept a UserItemCSR, an ``(offsets, indices)`` pair, or a sequence of item sets.

    If ``n_rows`` is given, the result must have exactly that many rows.
    """
    if isinstance(value, UserItemCSR):
        csr = value
    elif isinstance(value, tuple) and len(value) == 2 and all(
        isinstance(v, (torch.Tensor, np.ndarray)) for v in value
    ):
        csr = UserItemCSR(_as_int64_tensor(value[0]).reshape(-1), _as_int64_tensor(value[1]).reshape(-1))
    elif isinstance(value, Sequence):
        csr = UserItemCSR.from_sets(value)
    else:
        raise TypeError(
            f"{name} must be a UserItemCSR, an (offsets, indices) tuple of tensors, or a sequence "
            f"of item sets; got {type(value).__name__}"
        )
    if csr.offsets.numel() == 0:
        raise ValueError(f"{name}: offsets must have n_rows + 1 entries, got 0")
    if n_rows is not None and csr.n_rows != n_rows:
        raise ValueError(f"{name} has {csr.n_rows} rows, expected {n_rows}")
    if int(csr.offsets[-1]) != csr.indices.numel():
        raise ValueError(
            f"{name}: offsets[-1] ({int(csr.offsets[-1])}) != len(indices) ({csr.indices.numel()})"
        )
    return csr
