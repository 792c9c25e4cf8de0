"""Recommender models: softmax DNN, two-tower and matrix factorisation (issue 5).

Every model exposes ``query_embeddings(batch) -> [B, d]`` and ``item_embeddings(ids=None) ->
[N, d]`` (all items, or the rows ``ids``), so the losses and the evaluation are model-agnostic.
"""
from .batch import QueryBatch
from .config import MODEL_ALIASES, MODEL_KINDS, ModelConfig
from .models import MatrixFactorization, Recommender, SoftmaxDNN, TwoTower, build_model
from .towers import ItemTower, QueryTower, mlp

__all__ = [
    "ItemTower",
    "MODEL_ALIASES",
    "MODEL_KINDS",
    "MatrixFactorization",
    "ModelConfig",
    "QueryBatch",
    "QueryTower",
    "Recommender",
    "SoftmaxDNN",
    "TwoTower",
    "build_model",
    "mlp",
]
