"""The query-side input every model takes: one row per user (or per training example).

A :class:`QueryBatch` holds what a query tower reads for B rows:

    users:            [B] int64 user index (MF reads only this; -1 for a user it has never seen)
    history:          [nnz] int64 item ids of all rows' history bags, concatenated
    history_offsets:  [B] int64 start of each row's bag in ``history`` (``nn.EmbeddingBag``
                      convention; an empty bag is allowed)
    dense:            [B, n_dense] float32 dense features (already standardised), or [B, 0]
    categorical:      [B, F] int64 codes of the F categorical side features, or [B, 0]

Everything is built on the CPU by :func:`fastsoftmax.training.examples` and moved with
:meth:`QueryBatch.to`; the models never look at where a batch came from.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class QueryBatch:
    users: Tensor
    history: Tensor
    history_offsets: Tensor
    dense: Tensor
    categorical: Tensor

    def __post_init__(self):
        batch = self.users.shape[0]
        if self.users.dim() != 1:
            raise ValueError(f"users must be [B], got shape {tuple(self.users.shape)}")
        if self.history.dim() != 1 or self.history_offsets.shape != (batch,):
            raise ValueError(f"history must be [nnz] and history_offsets [B={batch}]; got "
                             f"{tuple(self.history.shape)} and {tuple(self.history_offsets.shape)}")
        for name in ("dense", "categorical"):
            value = getattr(self, name)
            if value.dim() != 2 or value.shape[0] != batch:
                raise ValueError(f"{name} must be [B={batch}, n], got {tuple(value.shape)}")

    def __len__(self) -> int:
        return self.users.shape[0]

    @property
    def device(self) -> torch.device:
        return self.users.device

    def history_lengths(self) -> Tensor:
        """[B] int64 number of items in each row's bag."""
        ends = torch.cat([self.history_offsets[1:],
                          self.history_offsets.new_tensor([self.history.numel()])])
        return ends - self.history_offsets

    def to(self, device) -> "QueryBatch":
        return QueryBatch(*(getattr(self, f).to(device, non_blocking=True) for f in
                            ("users", "history", "history_offsets", "dense", "categorical")))
