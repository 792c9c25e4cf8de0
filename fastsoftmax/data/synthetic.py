"""Synthetic clustered interactions: the setting in which positive-only training folds.

Users and items fall into G groups. Each interaction of a user picks a group -- its own with
probability ``p_in``, otherwise one of the other groups uniformly -- then an item of that group
with Zipf-like popularity (``P(rank r) ∝ 1 / (r + 1) ** zipf_exponent``, ranks drawn at random
within each group). With ``p_in`` near 1 the groups barely interact, so an embedding model
trained on positives alone has no signal keeping the groups apart; negatives must.
"""

from __future__ import annotations

import numpy as np

from .dataset import Interactions, RecDataset

__all__ = ["make_clustered_dataset"]


def make_clustered_dataset(
    n_users: int = 1000,
    n_items: int = 2000,
    n_groups: int = 4,
    interactions_per_user: int = 20,
    p_in: float = 0.9,
    zipf_exponent: float = 1.0,
    seed: int = 0,
) -> RecDataset:
    """Generate a clustered implicit-feedback dataset.

    Each user draws ``interactions_per_user`` items with replacement; repeated (user, item)
    pairs are kept once, so a user has at most that many distinct interactions. Groups are as
    even as possible (sizes differ by at most one) and assigned at random. Ratings are 1.0;
    timestamps are each user's draw order (0, 1, ...), so leave-last-out splits work.

    Returns a RecDataset with ``user_groups`` [n_users] and ``item_groups`` [n_items] int64 in
    [0, n_groups), no side features, and raw ids equal to the dense indices.
    """
    if n_groups < 1 or n_users < n_groups or n_items < n_groups:
        raise ValueError(f"need 1 <= n_groups <= min(n_users, n_items); got n_groups={n_groups}, "
                         f"n_users={n_users}, n_items={n_items}")  # fmt: skip
    if not 0.0 <= p_in <= 1.0:
        raise ValueError(f"p_in must be in [0, 1], got {p_in}")
    if interactions_per_user < 1:
        raise ValueError(f"interactions_per_user must be >= 1, got {interactions_per_user}")
    rng = np.random.default_rng(seed)
    user_groups = rng.permutation(np.arange(n_users) % n_groups).astype(np.int64)
    item_groups = rng.permutation(np.arange(n_items) % n_groups).astype(np.int64)

    n_draws = n_users * interactions_per_user
    draw_user = np.repeat(np.arange(n_users, dtype=np.int64), interactions_per_user)
    own = user_groups[draw_user]
    # Another group uniformly: shift the own group by 1..G-1 (mod G).
    if n_groups > 1:
        other = (own + rng.integers(1, n_groups, size=n_draws)) % n_groups
        stay = rng.random(n_draws) < p_in
        draw_group = np.where(stay, own, other)
    else:
        draw_group = own

    draw_item = np.empty(n_draws, dtype=np.int64)
    for g in range(n_groups):
        members = rng.permutation(np.flatnonzero(item_groups == g))  # position = popularity rank
        weights = 1.0 / np.arange(1, len(members) + 1, dtype=np.float64) ** zipf_exponent
        in_group = np.flatnonzero(draw_group == g)
        draw_item[in_group] = rng.choice(members, size=len(in_group), p=weights / weights.sum())

    # Keep each (user, item) pair's first draw, in (user, draw order).
    _, first = np.unique(draw_user * n_items + draw_item, return_index=True)
    first.sort()
    draw_order = np.tile(np.arange(interactions_per_user, dtype=np.int64), n_users)
    interactions = Interactions(
        user=draw_user[first],
        item=draw_item[first],
        rating=np.ones(len(first), dtype=np.float32),
        timestamp=draw_order[first],
    )
    return RecDataset(
        name=f"clustered-G{n_groups}",
        interactions=interactions,
        user_raw_ids=np.arange(n_users, dtype=np.int64),
        item_raw_ids=np.arange(n_items, dtype=np.int64),
        user_groups=user_groups,
        item_groups=item_groups,
        source=f"make_clustered_dataset(p_in={p_in}, zipf_exponent={zipf_exponent}, seed={seed})",
    )
