"""Model hyper-parameters as one JSON-serialisable dataclass (checkpoints store it)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

MODEL_KINDS = ("mf", "softmax_dnn", "two_tower")
# Aliases accepted on the command line.
MODEL_ALIASES = {"mf": "mf", "matrix_factorization": "mf", "dnn": "softmax_dnn",
                 "softmax_dnn": "softmax_dnn", "two_tower": "two_tower", "twotower": "two_tower"}


class DictConfig:
    """``to_dict`` / ``from_dict`` of a config dataclass, for checkpoints stored as JSON.
    ``from_dict`` rejects keys the dataclass does not have, naming them."""

    config_name = "config"  # in error messages; each config names itself

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.config_name} keys: {sorted(unknown)}")
        return cls(**values)


@dataclass
class ModelConfig(DictConfig):
    """What :func:`fastsoftmax.models.build_model` needs to rebuild a model.

    kind:            "mf", "softmax_dnn" or "two_tower".
    n_users:         rows of MF's user table (the query towers ignore it).
    n_items:         N, rows of the softmax weights / the item tower's id table.
    dim:             d, width of query and item embeddings.
    hidden:          widths of the query (and item) tower's hidden ReLU layers.
    history_dim:     width of the history bag's embeddings (= dim when tied).
    tie_history:     softmax DNN only: the history bag reads the softmax weights themselves.
    categorical_names / categorical_cardinalities: the user side features (vocabulary sizes).
    categorical_dim: width of each side feature's embedding.
    n_dense:         number of dense query features.
    use_side_features: False ignores categorical and dense features (history-only tower).
    field_dropout:   training-time probability of replacing each side field (each categorical
                     feature, the dense block) by a learned "missing" value.
    dropout:         dropout before each hidden layer of the towers.
    normalize:       L2-normalise query and item embeddings (cosine scores; pair with a
                     temperature < 1 in the loss).
    item_bias:       a learned per-item score offset (popularity), carried as an extra
                     embedding column (see Recommender).
    n_genres, n_year_buckets, item_id_dim: the two-tower item tower's inputs.
    """

    kind: str
    n_users: int
    n_items: int
    dim: int = 64
    hidden: list = field(default_factory=lambda: [256])
    history_dim: int = 0
    tie_history: bool = False
    categorical_names: list = field(default_factory=list)
    categorical_cardinalities: list = field(default_factory=list)
    categorical_dim: int = 8
    n_dense: int = 0
    use_side_features: bool = True
    field_dropout: float = 0.0
    dropout: float = 0.0
    normalize: bool = False
    item_bias: bool = False
    n_genres: int = 0
    n_year_buckets: int = 0
    item_id_dim: int = 0

    config_name = "model config"

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        for name in ("n_users", "n_items", "dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.hidden = [int(h) for h in self.hidden]
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden layer widths must be >= 1, got {self.hidden}")
        if len(self.categorical_names) != len(self.categorical_cardinalities):
            raise ValueError("categorical_names and categorical_cardinalities differ in length")
        if self.history_dim <= 0:
            self.history_dim = self.dim
        if self.tie_history and self.history_dim != self.dim:
            raise ValueError(f"tie_history needs history_dim == dim, got {self.history_dim} "
                             f"and {self.dim}")
        if self.item_id_dim <= 0:
            self.item_id_dim = self.dim
        for name in ("field_dropout", "dropout"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
