"""The three recommenders. Each maps a :class:`QueryBatch` to query embeddings [B, d] and item
ids to item embeddings [n, d]; the score of item j for query b is their inner product, so
training (any loss) and evaluation (top-k inner product) never need to know which model runs.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batch import QueryBatch
from .config import ModelConfig
from .towers import EMBEDDING_INIT_STD, ItemTower, QueryTower


class Recommender(nn.Module):
    """Common interface.

    query_embeddings(batch) -> [B, d']
    item_embeddings(ids=None) -> [N, d'] for all items, or [n, d'] for ``ids`` [n] int64

    d' = dim, or dim + 1 with ``item_bias``: the query gets a constant 1 appended and each item
    its learned bias β_j, so q'·v'_j = q·v_j + β_j and every loss, sampler and top-k kernel
    sees the bias without knowing about it.
    """

    config: ModelConfig

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.item_bias = nn.Parameter(torch.zeros(config.n_items)) if config.item_bias else None

    @property
    def normalize(self) -> bool:
        return bool(self.config.normalize)

    @property
    def embedding_dim(self) -> int:
        """d', the width of the returned embeddings."""
        return self.config.dim + (1 if self.item_bias is not None else 0)

    def _query_out(self, x: Tensor) -> Tensor:
        x = F.normalize(x, dim=-1) if self.normalize else x
        if self.item_bias is None:
            return x
        return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)

    def _item_out(self, x: Tensor, ids: Optional[Tensor]) -> Tensor:
        x = F.normalize(x, dim=-1) if self.normalize else x
        if self.item_bias is None:
            return x
        bias = self.item_bias if ids is None else self.item_bias[ids]
        return torch.cat([x, bias.unsqueeze(1).to(x.dtype)], dim=1)

    def query_embeddings(self, batch: QueryBatch) -> Tensor:
        """[B, d'] query embeddings of the batch. Abstract: each model defines it."""
        raise NotImplementedError

    def item_embeddings(self, ids: Optional[Tensor] = None) -> Tensor:
        """[N, d'] embeddings of every item, or [n, d'] of ``ids``. Abstract: each model
        defines it."""
        raise NotImplementedError

    def forward(self, batch: QueryBatch) -> Tensor:
        """Scores of every item for every row: [B, N] (small corpora and tests only; training
        and evaluation go through the fused kernels instead)."""
        return self.query_embeddings(batch) @ self.item_embeddings().T

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}"


def _embedding(n: int, d: int) -> nn.Embedding:
    table = nn.Embedding(n, d)
    nn.init.normal_(table.weight, std=EMBEDDING_INIT_STD)
    return table


class MatrixFactorization(Recommender):
    """The baseline: a free embedding per user (the query) and per item (the softmax weights).

    Users it was not trained on (cold start) have no row; :meth:`query_embeddings_from_history`
    gives them one from the items they have interacted with (see its docstring).
    """

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.user_embedding = _embedding(config.n_users, config.dim)
        self.item_embedding = _embedding(config.n_items, config.dim)

    def query_embeddings(self, batch: QueryBatch) -> Tensor:
        users = batch.users
        if users.numel() and int(users.min()) < 0:
            raise ValueError("MatrixFactorization has no embedding for users < 0 (unseen users); "
                             "use query_embeddings_from_history for cold-start users")
        return self._query_out(self.user_embedding(users))

    def item_embeddings(self, ids: Optional[Tensor] = None) -> Tensor:
        weight = self.item_embedding.weight if ids is None else self.item_embedding(ids)
        return self._item_out(weight, ids)

    def query_embeddings_from_history(self, batch: QueryBatch, method: str = "fold_in", *,
                                      steps: int = 50, lr: float = 0.05,
                                      weight_decay: float = 1e-3,
                                      temperature: float = 1.0) -> Tensor:
        """Query embeddings for users MF has never seen, from their history bags.

        method="mean":    the mean of the history items' embeddings. The score of item j is
                          then the average inner product of j with the user's items (item-item
                          similarity in the softmax space).
        method="fold_in": start from the mean and take ``steps`` Adam steps on the full softmax
                          cross-entropy of the history items (multi-hot target) plus
                          ``weight_decay`` * ||q||², item embeddings frozen: the user embedding
                          training would have given, had the user been in the training set.
        Rows with an empty history get a zero query (the ranking then falls back to ties).
        Returns [B, d'] (detached).
        """
        if method not in ("mean", "fold_in"):
            raise ValueError(f"method must be 'mean' or 'fold_in', got {method!r}")
        items = self.item_embedding.weight.detach()
        mean = F.embedding_bag(batch.history, items, batch.history_offsets, mode="mean")
        if method == "mean":
            return self._query_out(mean)
        from ..functional import full_softmax_cross_entropy

        lengths = batch.history_lengths()
        width = int(lengths.max()) if lengths.numel() else 0
        if width == 0:
            return self._query_out(mean)
        targets = _padded_rows(batch.history, batch.history_offsets, lengths, width)
        has_history = lengths > 0
        query = mean.clone().requires_grad_(True)
        table = self.item_embeddings().detach()
        optimizer = torch.optim.Adam([query], lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                optimizer.zero_grad()
                q = self._query_out(query)
                loss = full_softmax_cross_entropy(q[has_history], table, targets[has_history],
                                                  temperature=temperature, reduction="sum")
                loss = loss + weight_decay * query[has_history].pow(2).sum()
                loss.backward()
                optimizer.step()
        return self._query_out(query.detach())


def _padded_rows(values: Tensor, offsets: Tensor, lengths: Tensor, width: int) -> Tensor:
    """Bags (values, offsets [B]) -> [B, width] int64 padded with -1."""
    batch = offsets.shape[0]
    out = torch.full((batch, width), -1, dtype=torch.int64, device=values.device)
    rows = torch.repeat_interleave(torch.arange(batch, device=values.device), lengths)
    cols = torch.arange(values.numel(), device=values.device) - offsets[rows]
    out[rows, cols] = values
    return out


class SoftmaxDNN(Recommender):
    """The softmax DNN: a query tower ψ(x) over the user's history bag and side features; the
    item embeddings are the softmax weights V [N, d] (optionally the same table the history bag
    reads: ``tie_history``)."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.item_embedding = _embedding(config.n_items, config.dim)
        self.query_tower = QueryTower(config, self.item_embedding if config.tie_history else None)

    def query_embeddings(self, batch: QueryBatch) -> Tensor:
        return self._query_out(self.query_tower(batch))

    def item_embeddings(self, ids: Optional[Tensor] = None) -> Tensor:
        weight = self.item_embedding.weight if ids is None else self.item_embedding(ids)
        return self._item_out(weight, ids)


class TwoTower(Recommender):
    """Two towers: the softmax DNN's query tower and an item tower over item features."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.query_tower = QueryTower(config)
        self.item_tower = ItemTower(config)

    def query_embeddings(self, batch: QueryBatch) -> Tensor:
        return self._query_out(self.query_tower(batch))

    def item_embeddings(self, ids: Optional[Tensor] = None) -> Tensor:
        return self._item_out(self.item_tower(ids), ids)


_CLASSES = {"mf": MatrixFactorization, "softmax_dnn": SoftmaxDNN, "two_tower": TwoTower}


def build_model(config: ModelConfig) -> Recommender:
    """A freshly initialised model of ``config.kind``. Data-derived buffers (dense-feature
    statistics, item features) start at zeros/ones; set them with ``set_dense_stats`` /
    ``set_features`` or load them from a checkpoint's state dict."""
    return _CLASSES[config.kind](config)
