"""From a dataset and a split to what training and evaluation read.

:class:`PreparedData` holds, on the CPU:

    train_csr          user -> training items (the softmax targets, and the history bags)
    categorical        [n_users, F] int64 user side-feature codes (F = 0 without features)
    dense              [n_users, 2] float32 dense query features from the training history:
                       log1p(history length), log1p(days since the user's last training
                       interaction, counted back from the last training timestamp of anyone)
    item_genres        [N, G] float32 multi-hot; item_year_bucket [N] int64 (G = 0 without)
    item_counts        [N] int64 training popularity (for the unigram / in-batch samplers)
    tasks              {"valid": EvalTask, "test": EvalTask} (cold start: "test" ranks the
                       held-out users)

An :class:`EvalTask` says whom to rank and how: the users, the history each query is built from
(with its dense features), the ground truth and the items to exclude.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..models.config import DictConfig
from ..data import (
    Interactions,
    RecDataset,
    UserItemCSR,
    load_movielens_100k,
    load_movielens_1m,
    make_clustered_dataset,
    split_cold_start_users,
    split_leave_last_out,
    split_random_ratio,
)

DATASETS = ("ml-100k", "ml-1m", "synthetic")
SPLITS = ("random", "leave_last_out", "cold_start")
DENSE_FEATURES = ("log_history_length", "log_days_since_last")
SECONDS_PER_DAY = 86400.0


@dataclass
class DataConfig(DictConfig):
    """Which data and which split (stored in checkpoints so ``evaluate`` can rebuild them).

    dataset:   "ml-100k" (found automatically, see fastsoftmax.data), "ml-1m" (needs ``path``)
               or "synthetic" (``make_clustered_dataset(**synthetic)``).
    split:     "random" (RecBole's per-user random 80/10/10, seeded), "leave_last_out", or
               "cold_start" (``heldout_fraction`` of users held out; each gives its first
               ``n_given`` interactions by time and the rest are ranked; the other users are
               split 90/10 train/valid for epoch selection).
    seed:      split seed.
    """

    dataset: str = "ml-100k"
    path: Optional[str] = None
    split: str = "random"
    seed: int = 0
    heldout_fraction: float = 0.1
    n_given: int = 5
    synthetic: dict = field(default_factory=dict)

    config_name = "data config"

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.dataset == "ml-1m" and not self.path:
            raise ValueError("dataset 'ml-1m' needs a path (folder or ml-1m.zip)")



@dataclass
class EvalTask:
    """Rank all items for ``users`` [U] int64; every CSR has n_users rows.

    history:       the items each query is built from (the history bag)
    dense:         [n_users, n_dense] dense features of that history
    ground_truth:  the items to find
    exclude:       the items never to recommend
    known_users:   whether the users were in training (MF has embeddings for them)
    """

    users: Tensor
    history: UserItemCSR
    dense: Tensor
    ground_truth: UserItemCSR
    exclude: UserItemCSR
    known_users: bool = True


@dataclass
class PreparedData:
    name: str
    n_users: int
    n_items: int
    train_csr: UserItemCSR
    train_users: Tensor
    dense: Tensor
    categorical: Tensor
    categorical_names: list
    categorical_cardinalities: list
    item_genres: Tensor
    item_year_bucket: Tensor
    n_year_buckets: int
    item_counts: Tensor
    tasks: dict
    user_groups: Optional[Tensor] = None
    item_groups: Optional[Tensor] = None

    @property
    def n_dense(self) -> int:
        return self.dense.shape[1]

    def dense_stats(self) -> tuple[Tensor, Tensor]:
        """Mean and std of the dense features over the training users (for standardising)."""
        values = self.dense[self.train_users]
        return values.mean(0), values.std(0, unbiased=False)


def load_dataset(config: DataConfig) -> RecDataset:
    if config.dataset == "ml-100k":
        return load_movielens_100k(config.path)
    if config.dataset == "ml-1m":
        return load_movielens_1m(config.path)
    return make_clustered_dataset(**config.synthetic)


def _last_timestamp(inter: Interactions, n_users: int) -> np.ndarray:
    last = np.full(n_users, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last, inter.user, inter.timestamp)
    return last


def dense_features(history: Interactions, n_users: int, reference_time: float) -> Tensor:
    """[n_users, 2] float32: log1p(#history items), log1p(days from the user's last history
    interaction to ``reference_time``); users without history get 0 and the largest gap seen."""
    counts = np.bincount(history.user, minlength=n_users).astype(np.float64)
    last = _last_timestamp(history, n_users).astype(np.float64)
    gap_days = np.maximum(reference_time - last, 0.0) / SECONDS_PER_DAY
    has = counts > 0
    gap_days[~has] = gap_days[has].max() if has.any() else 0.0
    return torch.from_numpy(np.stack([np.log1p(counts), np.log1p(gap_days)], 1)).float()


def _task(users: np.ndarray, history: Interactions, n_users: int, reference_time: float,
          ground_truth: UserItemCSR, exclude: UserItemCSR, known: bool) -> EvalTask:
    history_csr = UserItemCSR.from_pairs(history.user, history.item, n_users)
    has_truth = (ground_truth.row_lengths() > 0).numpy()
    users = np.asarray(users, dtype=np.int64)
    users = users[has_truth[users]]
    return EvalTask(torch.from_numpy(users), history_csr,
                    dense_features(history, n_users, reference_time), ground_truth, exclude,
                    known)


def prepare_data(config: DataConfig, dataset: Optional[RecDataset] = None) -> PreparedData:
    """Load (unless ``dataset`` is given) and split the data; build features and tasks."""
    dataset = load_dataset(config) if dataset is None else dataset
    n_users, n_items = dataset.n_users, dataset.n_items
    all_users = np.arange(n_users)
    if config.split == "cold_start":
        cold = split_cold_start_users(dataset, config.heldout_fraction, config.n_given,
                                      seed=config.seed)
        warm = split_random_ratio(dataclasses.replace(dataset, interactions=cold.train),
                                  (0.9, 0.1, 0.0), seed=config.seed)
        train = warm.train
        reference = float(train.timestamp.max())
        valid = _task(all_users, train, n_users, reference, warm.valid_csr, warm.train_csr, True)
        test = _task(cold.heldout_users, cold.given, n_users, reference, cold.target_csr,
                     cold.given_csr, False)
    else:
        split = (split_random_ratio(dataset, seed=config.seed) if config.split == "random"
                 else split_leave_last_out(dataset))
        train = split.train
        reference = float(train.timestamp.max())
        valid = _task(all_users, train, n_users, reference, split.valid_csr,
                      split.exclusion_csr("valid"), True)
        test = _task(all_users, train, n_users, reference, split.test_csr,
                     split.exclusion_csr("test"), True)
    train_csr = UserItemCSR.from_pairs(train.user, train.item, n_users)
    train_users = torch.nonzero(train_csr.row_lengths() > 0).flatten()

    names: list = []
    cards: list = []
    categorical = torch.zeros(n_users, 0, dtype=torch.int64)
    if dataset.user_features is not None:
        fields = dataset.user_features.categorical()
        names = list(fields)
        cards = [int(size) for _, size in fields.values()]
        categorical = torch.from_numpy(np.stack([codes for codes, _ in fields.values()], 1)
                                       .astype(np.int64))
    if dataset.item_features is not None:
        genres = torch.from_numpy(dataset.item_features.genres.astype(np.float32))
        years = torch.from_numpy(dataset.item_features.year_bucket.astype(np.int64))
        n_years = len(dataset.item_features.year_bucket_vocab)
    else:
        genres = torch.zeros(n_items, 0)
        years = torch.zeros(n_items, dtype=torch.int64)
        n_years = 0
    groups = (None if dataset.user_groups is None else
              (torch.from_numpy(dataset.user_groups), torch.from_numpy(dataset.item_groups)))
    return PreparedData(
        name=dataset.name, n_users=n_users, n_items=n_items, train_csr=train_csr,
        train_users=train_users, dense=dense_features(train, n_users, reference),
        categorical=categorical, categorical_names=names, categorical_cardinalities=cards,
        item_genres=genres, item_year_bucket=years, n_year_buckets=n_years,
        item_counts=torch.bincount(torch.from_numpy(train.item), minlength=n_items),
        tasks={"valid": valid, "test": test},
        user_groups=None if groups is None else groups[0],
        item_groups=None if groups is None else groups[1],
    )

