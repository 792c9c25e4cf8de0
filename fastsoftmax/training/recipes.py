"""Default hyper-parameters per model, shared by ``fastsoftmax train`` and ``fastsoftmax compare``.

Tuned by hand on MovieLens-100K *validation* NDCG@10 (the test split was not used to choose
them); docs/compare.md has the measured results of these recipes."""
from __future__ import annotations

import copy
from typing import Any

# The query-tower models share one recipe: an MLP over the history bag and the side features
# (field dropout keeps the near-unique demographics from being memorised).
_TOWER_RECIPE: dict[str, dict[str, Any]] = {
    "model": dict(dim=64, hidden=[256], normalize=True, item_bias=True,
                  use_side_features=True, field_dropout=0.5),
    "train": dict(lr=3e-3, batch_size=32, epochs=100, patience=10, history_keep=0.5,
                  targets_include_history=True),
    "loss": dict(temperature=0.3),
}

# model: ModelConfig fields; train: TrainConfig fields; loss: LossConfig overrides (on top of
# the loss preset).
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "mf": {
        "model": dict(dim=64, normalize=True, item_bias=True),
        "train": dict(lr=3e-3, batch_size=32, epochs=100, patience=10),
        "loss": dict(temperature=0.3),
    },
    "softmax_dnn": _TOWER_RECIPE,
    "two_tower": _TOWER_RECIPE,
}

# --quick: a smoke run of the same code paths in a minute or two.
QUICK_TRAIN = dict(epochs=6, patience=0, eval_every=2)


def recipe(kind: str) -> dict[str, dict[str, Any]]:
    if kind not in RECIPES:
        raise ValueError(f"no recipe for model {kind!r}; expected one of {tuple(RECIPES)}")
    return copy.deepcopy(RECIPES[kind])
