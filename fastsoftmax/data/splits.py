"""Train / valid / test splits of a dataset's interactions.

Every rating counts as one implicit interaction. Three strategies:

* :func:`split_random_ratio` -- RecBole's default for general recommendation (``RO_RS``,
  ratios 0.8/0.1/0.1, grouped by user): each user's interactions in a seeded random order, cut by
  ratio with RecBole's rounding (see :func:`ratio_split_sizes`).
* :func:`split_leave_last_out` -- per user, by time: the last interaction is the test item, the
  second to last the validation item, the rest train.
* :func:`split_cold_start_users` -- a seeded share of users is held out entirely; each held-out
  user's first ``n_given`` interactions are the history given at test time, the rest the targets.

Randomness comes from ``numpy.random.default_rng(seed)``, so a seed gives the same split on
every machine and numpy version with the same PCG64 stream. The permutation is not RecBole's
(which shuffles the whole table with torch's global RNG); the sizes per user are.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .csr import UserItemCSR
from .dataset import Interactions, RecDataset

__all__ = [
    "InteractionSplit",
    "ColdStartSplit",
    "ratio_split_sizes",
    "split_random_ratio",
    "split_leave_last_out",
    "split_cold_start_users",
]

_PARTS = ("train", "valid", "test")


@dataclass(frozen=True)
class InteractionSplit:
    """Interactions split three ways over the same users and items.

    train, valid, test: disjoint subsets of the dataset's interactions (grouped by user).
    CSRs (``train_csr`` ...) have ``n_users`` rows of item indices; use them as ground truth and
    as top-k exclusion lists (:meth:`exclusion_csr`).
    """

    n_users: int
    n_items: int
    train: Interactions
    valid: Interactions
    test: Interactions
    strategy: str

    def part(self, name: str) -> Interactions:
        if name not in _PARTS:
            raise ValueError(f"part must be one of {_PARTS}, got {name!r}")
        return getattr(self, name)

    def csr(self, name: str) -> UserItemCSR:
        """User -> items of one part: offsets [n_users + 1], indices [nnz] int64."""
        self.part(name)  # validates the name
        return getattr(self, f"{name}_csr")

    @cached_property
    def train_csr(self) -> UserItemCSR:
        return UserItemCSR.from_pairs(self.train.user, self.train.item, self.n_users)

    @cached_property
    def valid_csr(self) -> UserItemCSR:
        return UserItemCSR.from_pairs(self.valid.user, self.valid.item, self.n_users)

    @cached_property
    def test_csr(self) -> UserItemCSR:
        return UserItemCSR.from_pairs(self.test.user, self.test.item, self.n_users)

    def exclusion_csr(self, name: str) -> UserItemCSR:
        """Items to mask when ranking for part ``name``: those seen in the earlier parts.

        "valid" -> train; "test" -> train ∪ valid (RecBole's full-ranking protocol).
        """
        if name == "valid":
            return self.train_csr
        if name == "test":
            return self.train_csr.union(self.valid_csr)
        raise ValueError(f"exclusions are defined for 'valid' and 'test', got {name!r}")

    def sizes(self) -> dict[str, int]:
        return {name: len(self.part(name)) for name in _PARTS}


@dataclass(frozen=True)
class ColdStartSplit:
    """Users held out entirely from training.

    train:          interactions of the other users
    given:          first ``n_given`` interactions (by time) of each held-out user
    target:         the held-out users' remaining interactions, to be predicted
    heldout_users:  [n_heldout] int64 dense user indices, ascending
    ``given_csr`` / ``target_csr`` have n_users rows (empty for users not held out); rank with
    ``given_csr`` as the exclusion list and ``target_csr`` as ground truth.
    """

    n_users: int
    n_items: int
    train: Interactions
    given: Interactions
    target: Interactions
    heldout_users: np.ndarray
    n_given: int

    @cached_property
    def train_csr(self) -> UserItemCSR:
        return UserItemCSR.from_pairs(self.train.user, self.train.item, self.n_users)

    @cached_property
    def given_csr(self) -> UserItemCSR:
        return UserItemCSR.from_pairs(self.given.user, self.given.item, self.n_users)

    @cached_property
    def target_csr(self) -> UserItemCSR:
        return UserItemCSR.from_pairs(self.target.user, self.target.item, self.n_users)


def ratio_split_sizes(counts: np.ndarray, ratios=(0.8, 0.1, 0.1)) -> np.ndarray:
    """Per-user part sizes for a ratio split, with RecBole's rounding (``_calcu_split_ids``).

    counts: [U] int64 interactions per user.  Returns [U, len(ratios)] int64, rows summing to counts.

    Rule: ratios are normalised to sum 1; every part but the first gets ``floor(ratio * n)``;
    the first (train) gets the rest. Then, walking the later parts from last to first, a part
    whose ``ratio * n`` lies strictly between 0 and 1 (so it was floored to 0) takes one
    interaction from train, as long as train still holds more than one. So with 0.8/0.1/0.1:
    n=1 -> 1/0/0, n=2 -> 1/0/1, n=3 -> 1/1/1, n=9 -> 7/1/1, n=10 -> 8/1/1, n=15 -> 13/1/1,
    n=20 -> 16/2/2.
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    if ratios.ndim != 1 or len(ratios) < 2 or np.any(ratios < 0) or ratios.sum() <= 0:
        raise ValueError(f"ratios must be >= 2 non-negative numbers with a positive sum, got {ratios}")
    ratios = ratios / ratios.sum()
    counts = np.asarray(counts, dtype=np.int64)
    # NB: same float64 products as RecBole's int(ratio * tot), so the floors agree exactly.
    exact = ratios[None, :] * counts[:, None]
    sizes = np.floor(exact).astype(np.int64)
    sizes[:, 0] = counts - sizes[:, 1:].sum(axis=1)
    for part in range(len(ratios) - 1, 0, -1):
        bump = (sizes[:, 0] > 1) & (exact[:, part] > 0) & (exact[:, part] < 1)
        sizes[bump, part] += 1
        sizes[bump, 0] -= 1
    return sizes


def _group_by_user(users: np.ndarray, order_key: np.ndarray) -> np.ndarray:
    """Positions of all interactions, grouped by user ascending, ``order_key`` ascending within a
    user, ties kept in file order."""
    return np.lexsort((np.arange(len(users)), order_key, users))


def _cut_groups(
    dataset: RecDataset, order: np.ndarray, sizes: np.ndarray, strategy: str
) -> InteractionSplit:
    """Cut user-grouped positions ``order`` into parts of ``sizes`` [U, 3] per user."""
    counts = sizes.sum(axis=1)
    group_start = np.repeat(np.cumsum(counts) - counts, counts)
    rank_in_user = np.arange(len(order)) - group_start  # 0.. within each user's group
    users = dataset.interactions.user[order]
    train_end = sizes[users, 0]
    valid_end = train_end + sizes[users, 1]
    part_of = np.where(rank_in_user < train_end, 0, np.where(rank_in_user < valid_end, 1, 2))
    parts = [dataset.interactions.take(order[part_of == p]) for p in range(3)]
    return InteractionSplit(dataset.n_users, dataset.n_items, *parts, strategy=strategy)


def split_random_ratio(dataset: RecDataset, ratios=(0.8, 0.1, 0.1), seed: int = 0) -> InteractionSplit:
    """RecBole's default split (``RO_RS``): per user, random order, cut 80/10/10.

    Sizes per user follow :func:`ratio_split_sizes`. Deterministic for a given seed.
    """
    if len(ratios) != 3:
        raise ValueError(f"ratios must be (train, valid, test), got {ratios}")
    rng = np.random.default_rng(seed)
    random_key = rng.random(dataset.n_interactions)
    order = _group_by_user(dataset.interactions.user, random_key)
    sizes = ratio_split_sizes(dataset.user_counts(), ratios)
    return _cut_groups(dataset, order, sizes, strategy=f"random_ratio{tuple(ratios)} seed={seed}")


def split_leave_last_out(dataset: RecDataset) -> InteractionSplit:
    """Per user by timestamp: last interaction -> test, second to last -> valid, rest -> train.

    Ties in timestamp are broken by file order (a later line counts as later). As in RecBole's
    leave-one-out, train keeps at least one interaction: a user with 2 interactions gives 1 to
    train and 1 to test (none to valid); a user with 1 keeps it in train.
    """
    counts = dataset.user_counts()
    held = np.minimum(2, np.maximum(counts - 1, 0))  # interactions leaving train
    sizes = np.stack([counts - held, (held == 2).astype(np.int64), (held >= 1).astype(np.int64)], axis=1)
    order = _group_by_user(dataset.interactions.user, dataset.interactions.timestamp)
    return _cut_groups(dataset, order, sizes, strategy="leave_last_out")


def split_cold_start_users(
    dataset: RecDataset, heldout_fraction: float = 0.1, n_given: int = 5, seed: int = 0
) -> ColdStartSplit:
    """Hold out a seeded share of users; each gives its first ``n_given`` interactions as history.

    Only users with more than ``n_given`` interactions can be held out (the others would have
    no target); ``round(heldout_fraction * n_eligible)`` of them are drawn without replacement.
    "First" is by timestamp, ties by file order.
    """
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1], got {heldout_fraction}")
    if n_given < 0:
        raise ValueError(f"n_given must be >= 0, got {n_given}")
    counts = dataset.user_counts()
    eligible = np.flatnonzero(counts > n_given)
    n_heldout = int(round(heldout_fraction * len(eligible)))
    rng = np.random.default_rng(seed)
    heldout = np.sort(rng.choice(eligible, size=n_heldout, replace=False)).astype(np.int64)

    inter = dataset.interactions
    order = _group_by_user(inter.user, inter.timestamp)
    users = inter.user[order]
    group_start = np.repeat(np.cumsum(counts) - counts, counts)
    rank_in_user = np.arange(len(order)) - group_start
    is_heldout = np.zeros(dataset.n_users, dtype=bool)
    is_heldout[heldout] = True
    in_heldout = is_heldout[users]
    return ColdStartSplit(
        n_users=dataset.n_users,
        n_items=dataset.n_items,
        train=inter.take(order[~in_heldout]),
        given=inter.take(order[in_heldout & (rank_in_user < n_given)]),
        target=inter.take(order[in_heldout & (rank_in_user >= n_given)]),
        heldout_users=heldout,
        n_given=n_given,
    )
