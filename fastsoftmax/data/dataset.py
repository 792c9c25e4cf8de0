"""The dataset type shared by the MovieLens loaders and the synthetic generator.

Users and items are indexed densely, 0..n_users-1 and 0..n_items-1, in ascending order of their
raw ids; ``user_raw_ids[u]`` / ``item_raw_ids[i]`` map back. Arrays are numpy (the loaders and
splits are numpy code); :meth:`Interactions.as_tensors` gives zero-copy torch views.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class Interactions:
    """A list of (user, item, rating, timestamp) events.

    user:      [N] int64 dense user index
    item:      [N] int64 dense item index
    rating:    [N] float32 explicit rating (1.0 for implicit data)
    timestamp: [N] int64 seconds since the epoch (or any monotone clock)
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray

    def __post_init__(self):
        n = len(self.user)
        for name in ("item", "rating", "timestamp"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Interactions.{name} has {len(getattr(self, name))} rows, user has {n}")

    def __len__(self) -> int:
        return len(self.user)

    def take(self, rows: np.ndarray) -> "Interactions":
        """The events at ``rows`` ([M] int64 positions or [N] bool mask), in that order."""
        return Interactions(self.user[rows], self.item[rows], self.rating[rows], self.timestamp[rows])

    def as_tensors(self) -> dict[str, torch.Tensor]:
        """{"user", "item", "rating", "timestamp"} -> torch tensors sharing this memory."""
        return {
            "user": torch.from_numpy(self.user),
            "item": torch.from_numpy(self.item),
            "rating": torch.from_numpy(self.rating),
            "timestamp": torch.from_numpy(self.timestamp),
        }

    @staticmethod
    def concat(parts: list["Interactions"]) -> "Interactions":
        return Interactions(
            np.concatenate([p.user for p in parts]),
            np.concatenate([p.item for p in parts]),
            np.concatenate([p.rating for p in parts]),
            np.concatenate([p.timestamp for p in parts]),
        )


@dataclass(frozen=True)
class UserFeatures:
    """Categorical user side features; each code indexes its vocabulary tuple.

    age:        [n_users] int64 age in years (ML-1M: lower bound of the user's age group)
    age_bucket: [n_users] int64 into ``age_vocab``
    gender:     [n_users] int64 into ``gender_vocab``
    occupation: [n_users] int64 into ``occupation_vocab``
    zip_prefix: [n_users] int64 into ``zip_prefix_vocab``
    """

    age: np.ndarray
    age_bucket: np.ndarray
    gender: np.ndarray
    occupation: np.ndarray
    zip_prefix: np.ndarray
    age_vocab: tuple[str, ...]
    gender_vocab: tuple[str, ...]
    occupation_vocab: tuple[str, ...]
    zip_prefix_vocab: tuple[str, ...]

    def categorical(self) -> dict[str, tuple[np.ndarray, int]]:
        """{feature name: (codes [n_users] int64, vocabulary size)} for embedding tables."""
        return {
            "age_bucket": (self.age_bucket, len(self.age_vocab)),
            "gender": (self.gender, len(self.gender_vocab)),
            "occupation": (self.occupation, len(self.occupation_vocab)),
            "zip_prefix": (self.zip_prefix, len(self.zip_prefix_vocab)),
        }


@dataclass(frozen=True)
class ItemFeatures:
    """Item side features.

    genres:       [n_items, n_genres] float32 multi-hot over ``genre_vocab``
    release_year: [n_items] int64 year, -1 when unknown
    year_bucket:  [n_items] int64 into ``year_bucket_vocab`` (0 = unknown)
    titles:       n_items titles as the source spells them
    """

    genres: np.ndarray
    release_year: np.ndarray
    year_bucket: np.ndarray
    titles: tuple[str, ...]
    genre_vocab: tuple[str, ...]
    year_bucket_vocab: tuple[str, ...]


@dataclass(frozen=True)
class RecDataset:
    """Interactions plus entity metadata.

    interactions:  events in source order
    user_raw_ids:  [n_users] int64, ascending; dense index -> raw id
    item_raw_ids:  [n_items] int64, ascending
    user_features, item_features: side features, or None (synthetic data)
    user_groups, item_groups: [n_users] / [n_items] int64 cluster labels (synthetic data), or None
    """

    name: str
    interactions: Interactions
    user_raw_ids: np.ndarray
    item_raw_ids: np.ndarray
    user_features: UserFeatures | None = None
    item_features: ItemFeatures | None = None
    user_groups: np.ndarray | None = None
    item_groups: np.ndarray | None = None
    source: str = field(default="", compare=False)

    @property
    def n_users(self) -> int:
        return len(self.user_raw_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_raw_ids)

    @property
    def n_interactions(self) -> int:
        return len(self.interactions)

    def user_counts(self) -> np.ndarray:
        """[n_users] int64: interactions per user."""
        return np.bincount(self.interactions.user, minlength=self.n_users).astype(np.int64)

    def item_counts(self) -> np.ndarray:
        """[n_items] int64: interactions per item (its popularity)."""
        return np.bincount(self.interactions.item, minlength=self.n_items).astype(np.int64)

    def user_index(self, raw_ids) -> np.ndarray:
        """Raw user ids -> dense indices; KeyError for an unknown id."""
        return _lookup(self.user_raw_ids, raw_ids, "user")

    def item_index(self, raw_ids) -> np.ndarray:
        """Raw item ids -> dense indices; KeyError for an unknown id."""
        return _lookup(self.item_raw_ids, raw_ids, "item")

    def __repr__(self) -> str:
        return (
            f"RecDataset(name={self.name!r}, n_users={self.n_users}, n_items={self.n_items}, "
            f"n_interactions={self.n_interactions}, "
            f"user_features={self.user_features is not None}, "
            f"item_features={self.item_features is not None})"
        )


def _lookup(sorted_raw_ids: np.ndarray, raw_ids, what: str) -> np.ndarray:
    raw = np.asarray(raw_ids, dtype=np.int64)
    pos = np.searchsorted(sorted_raw_ids, raw)
    if len(sorted_raw_ids) == 0:
        found = np.zeros(raw.shape, dtype=bool)
    else:
        pos_clipped = np.minimum(pos, len(sorted_raw_ids) - 1)
        found = (pos < len(sorted_raw_ids)) & (sorted_raw_ids[pos_clipped] == raw)
    if not np.all(found):
        missing = raw[~found].reshape(-1)[0]
        raise KeyError(f"unknown raw {what} id {int(missing)}")
    return pos
