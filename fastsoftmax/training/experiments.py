"""The experiments behind ``fastsoftmax compare``, ``folding`` and ``cold-start``: each trains
models through :func:`fastsoftmax.training.train`, evaluates them and returns flat result rows
(dicts) that the CLI prints, writes as CSV and plots."""
from __future__ import annotations

import csv
import math
import os
import time
from typing import Callable, Iterable, Optional, Sequence

import torch

from .data import DataConfig, PreparedData, prepare_data
from .losses import loss_preset
from .recipes import QUICK_TRAIN, recipe
from .trainer import TrainConfig, create_model, evaluate, task_query_embeddings, train

TEST_METRICS = ("ndcg@10", "recall@10", "hit@10", "mrr@10", "precision@10")
# RecBole 1.2.1 on this machine, ML-100K, default protocol, test set, mean of 3 seeds
# (NDCG@10, Recall@10); from issue 5.
RECBOLE_ML100K = {
    "LightGCN": (0.3049, 0.2581),
    "BPR": (0.2928, 0.2466),
    "MultiVAE": (0.2854, 0.2473),
    "ItemKNN": (0.2834, 0.2470),
    "NeuMF": (0.2724, 0.2319),
    "Pop": (0.1033, 0.0810),
}
COMPARE_MODELS = ("mf", "softmax_dnn", "two_tower")
COMPARE_LOSSES = ("full", "uniform", "in_batch", "mixed", "hard")


def run_one(data: PreparedData, kind: str, loss: str, seed: int, *, quick: bool = False,
            device: str = "cpu", progress: bool = False, topk_fn: Optional[Callable] = None,
            model_overrides: Optional[dict] = None, train_overrides: Optional[dict] = None,
            loss_overrides: Optional[dict] = None, tasks: Sequence[str] = ("test",),
            with_folding: bool = False, log: Optional[Callable[[str], None]] = None,
            label: Optional[str] = None):
    """Train one (model, loss preset, seed) with the model's recipe and evaluate it.

    Returns (row, model): row = {model, loss, seed, best_epoch, epochs_run, train_seconds,
    examples_per_second, valid_ndcg@10, <task>_<metric>...}.
    """
    spec = recipe(kind)
    model_kw = {**spec["model"], **(model_overrides or {})}
    train_kw = {**spec["train"], **(QUICK_TRAIN if quick else {}), **(train_overrides or {}),
                "seed": seed, "device": device, "progress": progress}
    loss_config = loss_preset(loss, **{**spec["loss"], **(loss_overrides or {})})
    torch.manual_seed(seed)
    model = create_model(kind, data, **model_kw)
    config = TrainConfig(**train_kw)
    result = train(model, data, loss_config, config, topk_fn=topk_fn, log=log)
    row = {"model": kind if label is None else label, "loss": loss, "loss_config":
           loss_config.describe(), "seed": seed, "best_epoch": result.best_epoch,
           "epochs_run": result.epochs_run, "train_seconds": round(result.train_seconds, 2),
           "examples_per_second": round(result.examples_per_second, 1),
           "valid_ndcg@10": result.best_valid.get("ndcg@10", float("nan"))}
    for task in tasks:
        metrics = evaluate(model, data, task, topk_fn=topk_fn, with_folding=with_folding,
                           cold_start_method=config.cold_start_method)
        for name, value in metrics.items():
            if name != "n_users":
                row[f"{task}_{name}"] = value
    return row, model


def compare(data_config: DataConfig, models: Iterable[str] = COMPARE_MODELS,
            losses: Iterable[str] = COMPARE_LOSSES, seeds: Iterable[int] = (0,), *,
            quick: bool = False, device: str = "cpu", progress: bool = False,
            topk_fn: Optional[Callable] = None, log: Optional[Callable[[str], None]] = print,
            train_overrides: Optional[dict] = None) -> list[dict]:
    """Every model x loss x seed on ``data_config`` (its seed replaced by each seed: the split
    and the initialisation change together, as in RecBole's protocol)."""
    rows = []
    say = log or (lambda _m: None)
    for seed in seeds:
        data = prepare_data(DataConfig(**{**data_config.to_dict(), "seed": seed}))
        for kind in models:
            for loss in losses:
                start = time.perf_counter()
                row, _ = run_one(data, kind, loss, seed, quick=quick, device=device,
                                 progress=progress, topk_fn=topk_fn,
                                 train_overrides=train_overrides)
                say(f"[seed {seed}] {kind:12s} {loss:9s} test NDCG@10 {row['test_ndcg@10']:.4f} "
                    f"Recall@10 {row['test_recall@10']:.4f}  best epoch {row['best_epoch']}  "
                    f"train {row['train_seconds']:.1f}s  (total {time.perf_counter() - start:.1f}s)")
                rows.append(row)
    return rows


def aggregate(rows: list[dict], keys: Sequence[str] = ("model", "loss")) -> list[dict]:
    """Mean (and sample std, over seeds) of every numeric column per (model, loss)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for key, members in groups.items():
        agg = dict(zip(keys, key))
        agg["loss_config"] = members[0].get("loss_config", "")
        agg["seeds"] = " ".join(str(m["seed"]) for m in members)
        agg["n_seeds"] = len(members)
        for name, value in members[0].items():
            if name in keys or not isinstance(value, (int, float)) or name == "seed":
                continue
            values = [float(m[name]) for m in members]
            mean = sum(values) / len(values)
            agg[name] = mean
            if len(values) > 1:
                agg[f"{name}_std"] = math.sqrt(sum((v - mean) ** 2 for v in values)
                                               / (len(values) - 1))
        out.append(agg)
    return out


def format_table(rows: list[dict], metrics: Sequence[str] = TEST_METRICS, prefix: str = "test_",
                 extra: Sequence[tuple[str, str]] = (("best_epoch", "epoch"),
                                                      ("train_seconds", "train s"))) -> str:
    """A fixed-width text table: model, loss, the metrics, and ``extra`` columns."""
    heads = ["model", "loss"] + [m.upper().replace("HIT@", "HR@").replace("PRECISION@", "P@")
                                 for m in metrics] + [h for _, h in extra]
    lines = []
    for row in rows:
        cells = [str(row["model"]), str(row["loss"])]
        for m in metrics:
            value = row.get(f"{prefix}{m}", float("nan"))
            std = row.get(f"{prefix}{m}_std")
            cells.append(f"{value:.4f}" + (f"±{std:.4f}" if std is not None else ""))
        for key, _ in extra:
            value = row.get(key, float("nan"))
            cells.append(f"{value:.1f}" if isinstance(value, float) else str(value))
        lines.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in lines)) if lines else len(h)
              for i, h in enumerate(heads)]
    text = ["  ".join(h.ljust(w) for h, w in zip(heads, widths)),
            "  ".join("-" * w for w in widths)]
    text += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in lines]
    return "\n".join(text)


def write_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                             for k, v in row.items()})


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise RuntimeError("plots need matplotlib (pip install matplotlib), or pass --no-plot"
                           ) from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_compare(path: str | os.PathLike, mean_rows: list[dict],
                 baselines: Optional[dict] = None) -> None:
    """Grouped bars of test NDCG@10 and Recall@10 per (model, loss), with the RecBole
    baselines as horizontal lines."""
    plt = _pyplot()
    models = list(dict.fromkeys(r["model"] for r in mean_rows))
    losses = list(dict.fromkeys(r["loss"] for r in mean_rows))
    lookup = {(r["model"], r["loss"]): r for r in mean_rows}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=False)
    width = 0.8 / max(len(losses), 1)
    for ax, metric, index in ((axes[0], "ndcg@10", 0), (axes[1], "recall@10", 1)):
        for j, loss in enumerate(losses):
            xs, ys, errs = [], [], []
            for i, model in enumerate(models):
                row = lookup.get((model, loss))
                if row is None:
                    continue
                xs.append(i + (j - (len(losses) - 1) / 2) * width)
                ys.append(row[f"test_{metric}"])
                errs.append(row.get(f"test_{metric}_std", 0.0))
            ax.bar(xs, ys, width, yerr=errs, label=loss, capsize=2)
        for name, values in (baselines or {}).items():
            if name == "Pop":
                continue
            ax.axhline(values[index], linestyle="--", linewidth=0.8, color="gray")
            ax.text(len(models) - 0.5, values[index], f" {name}", va="center", fontsize=7)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models)
        ax.set_ylabel(f"test {metric.upper()}")
        lows = [r[f"test_{metric}"] for r in mean_rows]
        ax.set_ylim(max(0.0, min(lows) - 0.05), max(lows + [v[index] for v in
                                                             (baselines or {}).values()]) + 0.02)
    axes[0].legend(fontsize=8, title="loss")
    fig.suptitle("fastsoftmax compare (dashed: RecBole 1.2.1 baselines)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------- folding

FOLDING_LOSSES = ("positives_only", "uniform", "hard")
FOLDING_DATA = dict(n_users=2000, n_items=2000, n_groups=4, interactions_per_user=20, p_in=1.0,
                    zipf_exponent=1.0)


def folding_experiment(seed: int = 0, *, kind: str = "softmax_dnn",
                       losses: Iterable[str] = FOLDING_LOSSES, synthetic: Optional[dict] = None,
                       quick: bool = False, device: str = "cpu", progress: bool = False,
                       topk_fn: Optional[Callable] = None,
                       log: Optional[Callable[[str], None]] = print,
                       train_overrides: Optional[dict] = None):
    """Train ``kind`` on clustered synthetic data with each loss; report test metrics and the
    folding score (share of top-10 recommendations from another group than the user's).

    Returns (rows, embeddings): embeddings[loss] = (query [U, d], items [N, d], user_groups,
    item_groups) for plotting.
    """
    data = prepare_data(DataConfig(dataset="synthetic", seed=seed,
                                   synthetic={**FOLDING_DATA, **(synthetic or {}), "seed": seed}))
    say = log or (lambda _m: None)
    rows, embeddings = [], {}
    overrides = {"history_keep": 0.5, **(train_overrides or {})}
    for loss in losses:
        row, model = run_one(data, kind, loss, seed, quick=quick, device=device,
                             progress=progress, topk_fn=topk_fn, with_folding=True,
                             model_overrides={"use_side_features": False},
                             train_overrides=overrides)
        say(f"{kind} {loss:15s} folding@10 {row['test_folding@10']:.4f}  test NDCG@10 "
            f"{row['test_ndcg@10']:.4f}")
        rows.append(row)
        model.eval()
        task = data.tasks["test"]
        with torch.no_grad():
            query = task_query_embeddings(model, data, task, task.users).cpu()
            items = model.item_embeddings().cpu()
        embeddings[loss] = (query, items, data.user_groups[task.users], data.item_groups)
    return rows, embeddings


def plot_folding(path: str | os.PathLike, embeddings: dict, max_points: int = 1500) -> None:
    """One panel per loss: the queries (dots) and items (crosses) projected on the first two
    principal components of their union, coloured by group."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(embeddings), figsize=(5 * len(embeddings), 4.6),
                             squeeze=False)
    generator = torch.Generator().manual_seed(0)
    for ax, (loss, (query, items, user_groups, item_groups)) in zip(axes[0], embeddings.items()):
        both = torch.cat([query, items]).double()
        centred = both - both.mean(0)
        _, _, v = torch.pca_lowrank(centred, q=2, center=False)
        proj = centred @ v[:, :2]
        pq, pi = proj[:query.shape[0]], proj[query.shape[0]:]
        qs = torch.randperm(pq.shape[0], generator=generator)[:max_points]
        its = torch.randperm(pi.shape[0], generator=generator)[:max_points]
        cmap = plt.get_cmap("tab10")
        ax.scatter(pi[its, 0], pi[its, 1], c=[cmap(int(g) % 10) for g in item_groups[its]],
                   marker="x", s=8, alpha=0.5, linewidths=0.6)
        ax.scatter(pq[qs, 0], pq[qs, 1], c=[cmap(int(g) % 10) for g in user_groups[qs]],
                   marker="o", s=6, alpha=0.6, edgecolors="none")
        ax.set_title(loss)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    fig.suptitle("query (dots) and item (x) embeddings, coloured by group")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------- cold start

COLD_START_VARIANTS = (
    # (label, model kind, model overrides, train overrides)
    ("mf (fold-in)", "mf", {}, {"cold_start_method": "fold_in"}),
    ("mf (mean of items)", "mf", {}, {"cold_start_method": "mean"}),
    ("softmax_dnn (history + side features)", "softmax_dnn", {"use_side_features": True}, {}),
    ("softmax_dnn (history only)", "softmax_dnn", {"use_side_features": False}, {}),
)


def cold_start_experiment(data_config: DataConfig, seeds: Iterable[int] = (0,), *,
                          loss: str = "full", quick: bool = False, device: str = "cpu",
                          progress: bool = False, topk_fn: Optional[Callable] = None,
                          log: Optional[Callable[[str], None]] = print,
                          train_overrides: Optional[dict] = None) -> list[dict]:
    """Hold out ``heldout_fraction`` of users; rank each one's interactions after the first
    ``n_given`` (by time) from those given items and its side features. Epochs are selected on
    the other users' validation items. One row per variant and seed."""
    say = log or (lambda _m: None)
    rows = []
    for seed in seeds:
        data = prepare_data(DataConfig(**{**data_config.to_dict(), "split": "cold_start",
                                          "seed": seed}))
        for label, kind, model_kw, train_kw in COLD_START_VARIANTS:
            row, _ = run_one(data, kind, loss, seed, quick=quick, device=device,
                             progress=progress, topk_fn=topk_fn, model_overrides=model_kw,
                             train_overrides={**train_kw, **(train_overrides or {})},
                             label=label)
            say(f"[seed {seed}] {label:40s} cold-start NDCG@10 {row['test_ndcg@10']:.4f} "
                f"Recall@10 {row['test_recall@10']:.4f}")
            rows.append(row)
    return rows
