"""Data layer: MovieLens loaders, synthetic clustered data, splits and CSR item sets.

Pure Python (numpy + torch); nothing here needs the compiled extension.
"""

from .csr import UserItemCSR, as_user_item_csr
from .dataset import Interactions, ItemFeatures, RecDataset, UserFeatures
from .errors import DataFormatError
from .movielens import load_movielens_100k, load_movielens_1m
from .sources import find_movielens_100k
from .splits import (
    ColdStartSplit,
    InteractionSplit,
    ratio_split_sizes,
    split_cold_start_users,
    split_leave_last_out,
    split_random_ratio,
)
from .synthetic import make_clustered_dataset

__all__ = [
    "ColdStartSplit",
    "DataFormatError",
    "InteractionSplit",
    "Interactions",
    "ItemFeatures",
    "RecDataset",
    "UserFeatures",
    "UserItemCSR",
    "as_user_item_csr",
    "find_movielens_100k",
    "load_movielens_100k",
    "load_movielens_1m",
    "make_clustered_dataset",
    "ratio_split_sizes",
    "split_cold_start_users",
    "split_leave_last_out",
    "split_random_ratio",
]
