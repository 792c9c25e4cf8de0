"""Training and evaluation of the recommenders (issue 5): data preparation, training examples,
loss configurations, the training loop with early stopping, and checkpoints."""
from .checkpoint import load_checkpoint, save_checkpoint
from .data import DataConfig, EvalTask, PreparedData, prepare_data
from .examples import eval_query_batch, padded_rows, query_batch, training_batch
from .losses import LOSS_PRESETS, LossConfig, TrainingLoss, loss_preset, positives_only_loss
from .trainer import (
    TrainConfig,
    TrainResult,
    attach_data,
    create_model,
    evaluate,
    model_config_for,
    task_query_embeddings,
    train,
)

__all__ = [
    "DataConfig",
    "EvalTask",
    "LOSS_PRESETS",
    "LossConfig",
    "PreparedData",
    "TrainConfig",
    "TrainResult",
    "TrainingLoss",
    "attach_data",
    "create_model",
    "eval_query_batch",
    "evaluate",
    "load_checkpoint",
    "loss_preset",
    "model_config_for",
    "padded_rows",
    "positives_only_loss",
    "prepare_data",
    "query_batch",
    "save_checkpoint",
    "task_query_embeddings",
    "train",
    "training_batch",
]
