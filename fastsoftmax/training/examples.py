"""Training examples and evaluation queries as :class:`QueryBatch` rows.

Training (query-tower models): for each user, every epoch, a random share ``history_keep`` of
the training items is the history bag and the remaining ones are the multi-hot target (the
denoising recipe: the model learns to predict held-back items from the rest instead of
memorising the bag). At least one item of each user is a target. ``history_keep=None`` keeps the
full history as input and makes every training item a target (MF, which ignores the bag).

Evaluation: the full training history is the bag (for cold-start users: their given items).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..data import UserItemCSR
from ..models import QueryBatch
from .data import EvalTask, PreparedData


def padded_rows(csr: UserItemCSR, max_width: Optional[int] = None,
                generator: Optional[torch.Generator] = None) -> Tensor:
    """[R, T] int64 rows of a CSR padded with -1. With ``max_width``, rows longer than it keep
    a uniformly random subset of ``max_width`` items."""
    lengths = csr.row_lengths()
    values, offsets = csr.indices, csr.offsets[:-1]
    rows = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    cols = torch.arange(values.numel()) - offsets[rows]
    width = int(lengths.max()) if lengths.numel() else 0
    if max_width is not None and width > max_width:
        # Random rank within the row; keep the first max_width of each row.
        keys = torch.rand(values.numel(), generator=generator) + rows.double()
        order = torch.argsort(keys)
        cols = torch.empty_like(cols)
        cols[order] = torch.arange(values.numel()) - offsets[rows[order]]
        keep = cols < max_width
        rows, cols, values = rows[keep], cols[keep], values[keep]
        width = max_width
    out = torch.full((lengths.numel(), max(width, 1)), -1, dtype=torch.int64)
    out[rows, cols] = values
    return out


def query_batch(users: Tensor, history: UserItemCSR, dense: Tensor, categorical: Tensor,
                known_users: bool = True) -> QueryBatch:
    """Queries for ``users`` [B] with their full ``history`` rows as bags."""
    rows = history.take_rows(users)
    return QueryBatch(users=users if known_users else torch.full_like(users, -1),
                      history=rows.indices, history_offsets=rows.offsets[:-1],
                      dense=dense[users], categorical=categorical[users])


def eval_query_batch(data: PreparedData, task: EvalTask, users: Tensor) -> QueryBatch:
    """Queries for ``users`` of an evaluation task (MF sees user -1 for unknown users)."""
    return query_batch(users, task.history, task.dense, data.categorical, task.known_users)


def training_batch(data: PreparedData, users: Tensor, history_keep: Optional[float],
                   generator: torch.Generator, max_targets: Optional[int] = None,
                   targets_include_history: bool = False) -> tuple[QueryBatch, Tensor]:
    """One training batch: (QueryBatch [B], targets [B, T] int64 padded with -1).

    ``targets_include_history``: every training item is a target, the bag included (the
    denoising-autoencoder variant); by default only the held-back items are."""
    rows = data.train_csr.take_rows(users)
    if history_keep is None:
        batch = query_batch(users, data.train_csr, data.dense, data.categorical)
        return batch, padded_rows(rows, max_targets, generator)
    if not 0.0 <= history_keep < 1.0:
        raise ValueError(f"history_keep must be in [0, 1), got {history_keep}")
    lengths = rows.row_lengths()
    row_of = torch.repeat_interleave(torch.arange(users.numel()), lengths)
    draw = torch.rand(rows.indices.numel(), generator=generator)
    in_history = draw < history_keep
    # Each row needs a target: where all items fell into the history, the one with the
    # largest draw becomes the target.
    n_targets = torch.zeros(users.numel(), dtype=torch.int64).index_add_(
        0, row_of, (~in_history).long())
    needs = (n_targets == 0) & (lengths > 0)
    if bool(needs.any()):
        row_max = torch.full((users.numel(),), -1.0, dtype=draw.dtype).scatter_reduce(
            0, row_of, draw, reduce="amax")
        in_history &= ~(needs[row_of] & (draw == row_max[row_of]))
    hist_counts = torch.zeros(users.numel(), dtype=torch.int64).index_add_(
        0, row_of, in_history.long())
    hist_offsets = torch.cumsum(hist_counts, 0) - hist_counts
    batch = QueryBatch(users=users, history=rows.indices[in_history],
                       history_offsets=hist_offsets, dense=data.dense[users],
                       categorical=data.categorical[users])
    if targets_include_history:
        return batch, padded_rows(rows, max_targets, generator)
    target_counts = lengths - hist_counts
    target_offsets = torch.zeros(users.numel() + 1, dtype=torch.int64)
    torch.cumsum(target_counts, 0, out=target_offsets[1:])
    targets = UserItemCSR(target_offsets, rows.indices[~in_history])
    return batch, padded_rows(targets, max_targets, generator)
