"""Training loop (Adam, early stopping on validation NDCG@10) and full-corpus evaluation."""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from ..models.config import DictConfig
from ..metrics import evaluate_ranking, folding_score
from ..models import MatrixFactorization, ModelConfig, Recommender, build_model
from .data import EvalTask, PreparedData
from .examples import eval_query_batch, training_batch
from .losses import LossConfig, TrainingLoss

DEFAULT_KS = (10,)


@dataclass
class TrainConfig(DictConfig):
    """epochs:         maximum epochs (one epoch = every training user once, in random order).
    lr, weight_decay:  Adam's.
    batch_size:        users per step.
    patience:          stop after this many evaluations without a better validation metric
                       (0 = never stop early); the best epoch's weights are restored.
    history_keep:      query-tower models: share of a user's training items used as the
                       history bag each epoch (the rest are the targets); None = full history
                       in, every item a target (always the case for MF).
    max_targets:       cap on targets per row (a random subset), None = all.
    targets_include_history: the bag's items are targets too (denoising-autoencoder style).
    eval_every:        validate every this many epochs.
    select_metric:     the validation metric that selects the epoch.
    seed:              torch seed (initialisation, example sampling, negative sampling).
    device:            "cpu", "cuda", "cuda:1", ...
    cold_start_method: how MF embeds users it never trained on ("fold_in" or "mean").
    """

    epochs: int = 100
    lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 0.0
    patience: int = 10
    history_keep: Optional[float] = 0.5
    max_targets: Optional[int] = None
    targets_include_history: bool = False
    eval_every: int = 1
    select_metric: str = "ndcg@10"
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    cold_start_method: str = "fold_in"

    config_name = "training config"

    def __post_init__(self):
        if self.epochs < 0 or self.batch_size < 1 or self.eval_every < 1 or self.patience < 0:
            raise ValueError("need epochs >= 0, batch_size >= 1, eval_every >= 1, patience >= 0")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got {self.lr}, "
                             f"{self.weight_decay}")
        if self.history_keep is not None and not 0.0 <= self.history_keep < 1.0:
            raise ValueError(f"history_keep must be in [0, 1) or None, got {self.history_keep}")
        if self.cold_start_method not in ("fold_in", "mean"):
            raise ValueError("cold_start_method must be 'fold_in' or 'mean'")



@dataclass
class TrainResult:
    best_epoch: int
    best_valid: dict
    epochs_run: int
    train_seconds: float
    examples_per_second: float
    log: list = field(default_factory=list)


def model_config_for(kind: str, data: PreparedData, **hyper) -> ModelConfig:
    """A ModelConfig whose data-dependent sizes come from ``data``."""
    return ModelConfig(kind=kind, n_users=data.n_users, n_items=data.n_items,
                       categorical_names=list(data.categorical_names),
                       categorical_cardinalities=list(data.categorical_cardinalities),
                       n_dense=data.n_dense, n_genres=data.item_genres.shape[1],
                       n_year_buckets=data.n_year_buckets, **hyper)


def attach_data(model: Recommender, data: PreparedData) -> Recommender:
    """Copy the data-derived buffers (dense-feature statistics, item features) into a model."""
    tower = getattr(model, "query_tower", None)
    if tower is not None and tower.n_dense:
        mean, std = data.dense_stats()
        tower.set_dense_stats(mean.to(tower.dense_mean), std.to(tower.dense_std))
    item_tower = getattr(model, "item_tower", None)
    if item_tower is not None:
        item_tower.set_features(data.item_genres.to(item_tower.genres),
                                data.item_year_bucket.to(item_tower.year_bucket))
    return model


def create_model(kind: str, data: PreparedData, **hyper) -> Recommender:
    return attach_data(build_model(model_config_for(kind, data, **hyper)), data)


# Steps between updates of the progress bar's running loss (each update reads the loss).
_PROGRESS_EVERY = 20


def _progress(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


@torch.no_grad()
def task_query_embeddings(model: Recommender, data: PreparedData, task: EvalTask,
                          users: Tensor, *, batch_size: int = 1024,
                          cold_start_method: str = "fold_in") -> Tensor:
    """[U, d] query embeddings of ``users`` for ``task`` (eval mode, on the model's device)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, users.numel(), batch_size):
        batch = eval_query_batch(data, task, users[start:start + batch_size]).to(device)
        if isinstance(model, MatrixFactorization) and not task.known_users:
            out.append(model.query_embeddings_from_history(batch, cold_start_method))
        else:
            out.append(model.query_embeddings(batch))
    return torch.cat(out) if out else torch.zeros(0, model.embedding_dim, device=device)


@torch.no_grad()
def evaluate(model: Recommender, data: PreparedData, task: str | EvalTask = "test", *,
             ks: Sequence[int] = DEFAULT_KS, topk_fn: Optional[Callable] = None,
             batch_size: int = 1024, cold_start_method: str = "fold_in",
             with_folding: bool = False) -> dict[str, float]:
    """Recall/NDCG/HitRate/MRR/Precision@k over the full corpus for one task (train items and,
    for "test", valid items excluded), through ``topk_fn`` (default
    ``fastsoftmax.topk_inner_product``). With ``with_folding`` on data with groups, adds
    ``folding@k`` (share of recommended items from another group) for the largest k."""
    task_obj = data.tasks[task] if isinstance(task, str) else task
    was_training = model.training
    model.eval()
    try:
        users = task_obj.users
        query = task_query_embeddings(model, data, task_obj, users, batch_size=batch_size,
                                      cold_start_method=cold_start_method)
        items = model.item_embeddings()
        result = evaluate_ranking(query, items, task_obj.ground_truth.take_rows(users),
                                  task_obj.exclude.take_rows(users), ks=ks, topk_fn=topk_fn,
                                  batch_size=batch_size)
        if with_folding and data.user_groups is not None:
            result.update(folding_metrics(query, items, task_obj, data, max(ks), topk_fn))
    finally:
        model.train(was_training)
    return result


def folding_metrics(query: Tensor, items: Tensor, task: EvalTask, data: PreparedData, k: int,
                    topk_fn: Optional[Callable] = None) -> dict[str, float]:
    """folding@k: share of each user's top-k (own seen items excluded) from another group."""
    from ..metrics import _resolve_topk_fn

    topk_fn = _resolve_topk_fn(topk_fn)
    exclude = task.exclude.take_rows(task.users).to(items.device)
    _, topk = topk_fn(query, items, min(k, items.shape[0]), bias=None,
                      exclude=(exclude.offsets, exclude.indices))
    return {f"folding@{k}": folding_score(topk.cpu(), data.user_groups[task.users],
                                          data.item_groups)}


def train(model: Recommender, data: PreparedData, loss_config: LossConfig,
          config: TrainConfig, *, topk_fn: Optional[Callable] = None,
          log: Optional[Callable[[str], None]] = print) -> TrainResult:
    """Train ``model`` on ``data.train_csr``; validate every ``eval_every`` epochs on
    ``data.tasks["valid"]``; keep (and finally restore) the weights of the best epoch.

    Examples per second counts training rows (users) processed by the optimiser, excluding
    validation time.
    """
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model.to(device)
    loss_fn = TrainingLoss(loss_config, data.n_items, data.item_counts, config.seed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr,
                                 weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    history_keep = None if isinstance(model, MatrixFactorization) else config.history_keep
    users_all = data.train_users
    best_value, best_epoch, best_state, best_valid = -math.inf, 0, None, {}
    stale, train_seconds, examples, epochs_run = 0, 0.0, 0, 0
    entries = []
    say = log or (lambda _msg: None)
    for epoch in range(1, config.epochs + 1):
        model.train()
        start = time.perf_counter()
        order = users_all[torch.randperm(users_all.numel(), generator=generator)]
        # NB: the loss sum stays a tensor: reading it every step would synchronise a GPU.
        total, steps = torch.zeros((), device=device), 0
        batches = range(0, order.numel(), config.batch_size)
        bar = _progress(batches, config.progress, desc=f"epoch {epoch}", leave=False,
                        unit="batch")
        for first in bar:
            users = order[first:first + config.batch_size]
            batch, targets = training_batch(data, users, history_keep, generator,
                                            config.max_targets,
                                            config.targets_include_history)
            batch, targets = batch.to(device), targets.to(device)
            query = model.query_embeddings(batch)
            loss = loss_fn(model, query, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().float()
            steps += 1
            examples += users.numel()
            if config.progress and steps % _PROGRESS_EVERY == 0:
                bar.set_postfix(loss=f"{float(total) / steps:.4f}", refresh=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds += time.perf_counter() - start
        epochs_run = epoch
        entry = {"epoch": epoch, "loss": float(total) / max(steps, 1)}
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            valid = evaluate(model, data, "valid", topk_fn=topk_fn,
                             cold_start_method=config.cold_start_method)
            if config.select_metric not in valid:
                raise ValueError(f"select_metric {config.select_metric!r} is not among the "
                                 f"validation metrics {sorted(valid)}")
            entry.update({f"valid_{k}": v for k, v in valid.items() if k != "n_users"})
            value = valid[config.select_metric]
            if value > best_value:
                best_value, best_epoch, best_valid, stale = value, epoch, valid, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
            say(f"epoch {epoch:3d}  loss {entry['loss']:.4f}  valid {config.select_metric} "
                f"{value:.4f}  (best {best_value:.4f} @ {best_epoch})  "
                f"{examples / max(train_seconds, 1e-9):.0f} ex/s")
        entries.append(entry)
        if config.patience and stale >= config.patience:
            say(f"early stop after epoch {epoch}: no better {config.select_metric} for "
                f"{config.patience} evaluations")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return TrainResult(best_epoch, best_valid, epochs_run, train_seconds,
                       examples / max(train_seconds, 1e-9), entries)
