"""Building blocks: the MLP, the query tower (history bag + side features) and the item tower."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batch import QueryBatch
from .config import ModelConfig

EMBEDDING_INIT_STD = 0.05


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float) -> nn.Sequential:
    """[Dropout ->] Linear -> ReLU for each hidden width, then a Linear to ``out_dim``."""
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class QueryTower(nn.Module):
    """ψ(x): history bag (mean of item embeddings) ⊕ categorical side features ⊕ dense
    features → MLP with ReLU → [B, dim].

    Side fields are regularised by *field dropout*: in training, each categorical field of each
    row is replaced by its own learned "missing" code (index = cardinality) with probability
    ``field_dropout``, and the dense block by zeros (the standardised mean). On MovieLens-100K
    users are nearly unique by their demographics, so without it the tower memorises users.

    Args:
        config: the model config (history_dim, categorical_*, n_dense, hidden, dim, ...).
        history_embedding: the [N, history_dim] table the history bag reads; pass the softmax
            weights' ``nn.Embedding`` to tie them, or None for a table of its own.
    """

    def __init__(self, config: ModelConfig, history_embedding: Optional[nn.Embedding] = None):
        super().__init__()
        self.field_dropout = float(config.field_dropout)
        self.use_side_features = bool(config.use_side_features)
        if history_embedding is None:
            history_embedding = nn.Embedding(config.n_items, config.history_dim)
            nn.init.normal_(history_embedding.weight, std=EMBEDDING_INIT_STD)
        elif tuple(history_embedding.weight.shape) != (config.n_items, config.history_dim):
            raise ValueError(f"history_embedding must be [{config.n_items}, "
                             f"{config.history_dim}], got {tuple(history_embedding.weight.shape)}")
        # NB: when tied, the same module is registered here and as the owner's softmax weights;
        # parameters() lists it once and the state dict stores one shared tensor under both keys.
        self.history_embedding = history_embedding
        in_dim = config.history_dim
        cards = list(config.categorical_cardinalities) if self.use_side_features else []
        self.categorical = nn.ModuleList(
            nn.Embedding(card + 1, config.categorical_dim) for card in cards)  # +1: missing
        for table in self.categorical:
            nn.init.normal_(table.weight, std=EMBEDDING_INIT_STD)
        self.cardinalities = cards
        in_dim += config.categorical_dim * len(cards)
        self.n_dense = int(config.n_dense) if self.use_side_features else 0
        # Standardisation statistics of the dense features (set by set_dense_stats; saved in
        # the state dict so a checkpoint carries them).
        self.register_buffer("dense_mean", torch.zeros(self.n_dense))
        self.register_buffer("dense_std", torch.ones(self.n_dense))
        in_dim += self.n_dense
        self.mlp = mlp(in_dim, config.hidden, config.dim, config.dropout)

    def set_dense_stats(self, mean: Tensor, std: Tensor) -> None:
        if mean.shape != self.dense_mean.shape or std.shape != self.dense_std.shape:
            raise ValueError(f"dense stats must be [{self.n_dense}], got {tuple(mean.shape)} "
                             f"and {tuple(std.shape)}")
        self.dense_mean.copy_(mean)
        self.dense_std.copy_(std.clamp_min(1e-6))

    def forward(self, batch: QueryBatch) -> Tensor:
        parts = [F.embedding_bag(batch.history, self.history_embedding.weight,
                                 batch.history_offsets, mode="mean")]
        drop = self.training and self.field_dropout > 0
        if self.cardinalities:
            if batch.categorical.shape[1] != len(self.cardinalities):
                raise ValueError(f"batch has {batch.categorical.shape[1]} categorical features, "
                                 f"the model expects {len(self.cardinalities)}")
            for f, (table, card) in enumerate(zip(self.categorical, self.cardinalities)):
                codes = batch.categorical[:, f]
                if drop:
                    missing = torch.rand(codes.shape, device=codes.device) < self.field_dropout
                    codes = codes.masked_fill(missing, card)
                parts.append(table(codes))
        if self.n_dense:
            if batch.dense.shape[1] != self.n_dense:
                raise ValueError(f"batch has {batch.dense.shape[1]} dense features, the model "
                                 f"expects {self.n_dense}")
            dense = (batch.dense - self.dense_mean) / self.dense_std
            if drop:
                keep = torch.rand(dense.shape[0], 1, device=dense.device) >= self.field_dropout
                dense = dense * keep
            parts.append(dense)
        return self.mlp(torch.cat(parts, dim=1))


class ItemTower(nn.Module):
    """φ(item): id embedding ⊕ mean genre embedding ⊕ year-bucket embedding → MLP → [n, dim].

    Item features live in buffers (saved with the model): ``genres`` [N, G] float32 multi-hot,
    ``year_bucket`` [N] int64. With G = 0 / no year buckets (synthetic data) only the id
    embedding feeds the MLP.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        n = config.n_items
        self.id_embedding = nn.Embedding(n, config.item_id_dim)
        nn.init.normal_(self.id_embedding.weight, std=EMBEDDING_INIT_STD)
        self.register_buffer("genres", torch.zeros(n, config.n_genres))
        self.register_buffer("year_bucket", torch.zeros(n, dtype=torch.int64))
        in_dim = config.item_id_dim
        self.genre_embedding = None
        if config.n_genres:
            self.genre_embedding = nn.Parameter(
                torch.randn(config.n_genres, config.categorical_dim) * EMBEDDING_INIT_STD)
            in_dim += config.categorical_dim
        self.year_embedding = None
        if config.n_year_buckets:
            self.year_embedding = nn.Embedding(config.n_year_buckets, config.categorical_dim)
            nn.init.normal_(self.year_embedding.weight, std=EMBEDDING_INIT_STD)
            in_dim += config.categorical_dim
        self.mlp = mlp(in_dim, config.hidden, config.dim, config.dropout)

    def set_features(self, genres: Tensor, year_bucket: Tensor) -> None:
        """genres: [N, G] multi-hot; year_bucket: [N] int64 codes."""
        if genres.shape != self.genres.shape or year_bucket.shape != self.year_bucket.shape:
            raise ValueError(f"item features must be genres {tuple(self.genres.shape)} and "
                             f"year_bucket {tuple(self.year_bucket.shape)}; got "
                             f"{tuple(genres.shape)} and {tuple(year_bucket.shape)}")
        self.genres.copy_(genres)
        self.year_bucket.copy_(year_bucket)

    def forward(self, ids: Optional[Tensor] = None) -> Tensor:
        if ids is None:
            ids = torch.arange(self.id_embedding.num_embeddings, device=self.genres.device)
        parts = [self.id_embedding(ids)]
        if self.genre_embedding is not None:
            genres = self.genres[ids]
            parts.append(genres @ self.genre_embedding / genres.sum(1, keepdim=True).clamp_min(1))
        if self.year_embedding is not None:
            parts.append(self.year_embedding(self.year_bucket[ids]))
        return self.mlp(torch.cat(parts, dim=1))
