"""``fastsoftmax``: train, evaluate and compare softmax recommenders from the command line.

    fastsoftmax train --model dnn --loss hard --out runs/dnn
    fastsoftmax evaluate --checkpoint runs/dnn
    fastsoftmax compare [--quick] [--seeds 0 1 2] [--out results/]
    fastsoftmax folding [--out results/]
    fastsoftmax cold-start [--seeds 0 1 2]

Also runnable as ``python -m fastsoftmax.cli``. Hyper-parameters default to each model's
recipe (fastsoftmax/training/recipes.py); every flag overrides its entry.

Threads: ``--threads`` defaults to 1. On the 2-core development machine the softmax DNN
trained 3.2x slower with 2 OpenMP threads than with 1 while another process kept a core busy
(OpenMP worker threads spin-wait), and only 1.2-1.3x faster with 2 on an idle machine
(docs/compare.md). Pass ``--threads 0`` to keep torch's default.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

DEFAULT_THREADS = 1


class CLIError(Exception):
    """A usage error detected after parsing (reported like an argparse error, exit code 2)."""


# ------------------------------------------------------------------------------ argument sets

def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _add_runtime(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runtime")
    group.add_argument("--device", default="cpu",
                       help="torch device: cpu, cuda, cuda:1 ... (default cpu)")
    group.add_argument("--threads", type=_non_negative_int, default=DEFAULT_THREADS,
                       help="torch intra-op threads (default 1; 0 keeps torch's default)")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_data(parser: argparse.ArgumentParser, *, split: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default="ml-100k", choices=("ml-100k", "ml-1m", "synthetic"))
    group.add_argument("--data-path", default=None,
                       help="folder or archive of the dataset (ml-100k is found automatically)")
    if split:
        group.add_argument("--split", default="random",
                           choices=("random", "leave_last_out", "cold_start"),
                           help="random: RecBole's per-user 80/10/10 (default)")


def _add_model(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (defaults: the model's recipe)")
    group.add_argument("--model", default="softmax_dnn",
                       choices=("mf", "dnn", "softmax_dnn", "two_tower"))
    group.add_argument("--dim", type=_positive_int, default=None, help="embedding width d")
    group.add_argument("--hidden", type=_positive_int, nargs="*", default=None,
                       help="hidden layer widths of the towers (none: linear)")
    group.add_argument("--dropout", type=_fraction, default=None)
    group.add_argument("--field-dropout", type=_fraction, default=None,
                       help="probability of dropping each side feature in training")
    side = group.add_mutually_exclusive_group()
    side.add_argument("--side-features", dest="use_side_features", action="store_true",
                      default=None, help="use user side features (recipe default)")
    side.add_argument("--no-side-features", dest="use_side_features", action="store_false",
                      help="history-only query tower")
    group.add_argument("--tie-history", action="store_true", default=None,
                       help="softmax DNN: the history bag reads the softmax weights")
    norm = group.add_mutually_exclusive_group()
    norm.add_argument("--normalize", dest="normalize", action="store_true", default=None,
                      help="cosine scores (L2-normalised embeddings)")
    norm.add_argument("--no-normalize", dest="normalize", action="store_false")
    bias = group.add_mutually_exclusive_group()
    bias.add_argument("--item-bias", dest="item_bias", action="store_true", default=None)
    bias.add_argument("--no-item-bias", dest="item_bias", action="store_false")


def _add_loss(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("loss")
    group.add_argument("--loss", default="full",
                       choices=("full", "sampled", "uniform", "in_batch", "mixed", "hard",
                                "positives_only"),
                       help="a preset (full, uniform, in_batch, mixed, hard, positives_only) or "
                            "'sampled' configured by the flags below")
    group.add_argument("--sampler", default=None,
                       choices=("uniform", "log_uniform", "unigram", "in_batch", "mixed"))
    group.add_argument("--num-negatives", type=_non_negative_int, default=None)
    group.add_argument("--hard-negatives", type=_non_negative_int, default=None)
    group.add_argument("--hard-negative-pool", type=_positive_int, default=None)
    group.add_argument("--hard-negative-mode", default=None, choices=("sample", "topk"))
    group.add_argument("--temperature", type=_positive_float, default=None)
    group.add_argument("--no-logq", dest="logq_correction", action="store_false", default=None,
                       help="no logQ correction of the sampled logits")


def _add_train(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training (defaults: the model's recipe)")
    group.add_argument("--epochs", type=_non_negative_int, default=None)
    group.add_argument("--lr", type=_positive_float, default=None)
    group.add_argument("--batch-size", type=_positive_int, default=None)
    group.add_argument("--weight-decay", type=float, default=None)
    group.add_argument("--patience", type=_non_negative_int, default=None,
                       help="early-stopping patience in evaluations (0: never stop early)")
    group.add_argument("--eval-every", type=_positive_int, default=None)
    group.add_argument("--history-keep", type=_fraction, default=None,
                       help="share of a user's training items used as the history bag")
    group.add_argument("--max-targets", type=_positive_int, default=None)
    group.add_argument("--seed", type=_non_negative_int, default=0,
                       help="split and training seed (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastsoftmax", description="Train, evaluate and compare softmax recommenders.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("train", help="train one model; save a checkpoint")
    _add_data(p)
    _add_model(p)
    _add_loss(p)
    _add_train(p)
    _add_runtime(p)
    p.add_argument("--out", default=None, help="checkpoint folder (model.pt + config.json)")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on its data")
    p.add_argument("--checkpoint", required=True, help="folder written by 'train --out'")
    p.add_argument("--task", default="test", choices=("valid", "test"))
    p.add_argument("--ks", type=_positive_int, nargs="+", default=[10, 20])
    p.add_argument("--data-path", default=None, help="override the checkpoint's data path")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _add_runtime(p)

    p = sub.add_parser("compare", help="MF / softmax DNN / two-tower x five losses")
    _add_data(p, split=False)
    p.add_argument("--models", nargs="+", default=None,
                   choices=("mf", "dnn", "softmax_dnn", "two_tower"))
    p.add_argument("--losses", nargs="+", default=None,
                   choices=("full", "uniform", "in_batch", "mixed", "hard", "positives_only"))
    p.add_argument("--seeds", type=_non_negative_int, nargs="+", default=[0, 1, 2],
                   help="seeds (split + initialisation; default 0 1 2, the 3-seed mean of the "
                        "protocol; one seed takes about a third of the time)")
    p.add_argument("--quick", action="store_true", help="a 1-2 minute smoke run")
    p.add_argument("--epochs", type=_non_negative_int, default=None,
                   help="override every recipe's maximum epochs")
    p.add_argument("--cold-start", action="store_true", help="also run the cold-start report")
    p.add_argument("--out", default="compare_results", help="folder for CSV and PNG")
    p.add_argument("--no-plot", action="store_true")
    _add_runtime(p)

    p = sub.add_parser("folding", help="folding on clustered synthetic data")
    p.add_argument("--model", default="softmax_dnn", choices=("mf", "dnn", "softmax_dnn"))
    p.add_argument("--losses", nargs="+", default=None,
                   choices=("positives_only", "full", "uniform", "in_batch", "mixed", "hard"))
    p.add_argument("--groups", type=_positive_int, default=None)
    p.add_argument("--users", type=_positive_int, default=None)
    p.add_argument("--items", type=_positive_int, default=None)
    p.add_argument("--p-in", type=float, default=None,
                   help="probability that an interaction stays in the user's group")
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=_non_negative_int, default=None)
    p.add_argument("--out", default="folding_results", help="folder for CSV and PNG")
    p.add_argument("--no-plot", action="store_true")
    _add_runtime(p)

    p = sub.add_parser("cold-start", help="held-out users: MF vs softmax DNN with/without "
                                          "side features")
    _add_data(p, split=False)
    p.add_argument("--seeds", type=_non_negative_int, nargs="+", default=[0])
    p.add_argument("--loss", default="full",
                   choices=("full", "uniform", "in_batch", "mixed", "hard"))
    p.add_argument("--heldout-fraction", type=_fraction, default=0.1)
    p.add_argument("--n-given", type=_non_negative_int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=_non_negative_int, default=None)
    p.add_argument("--out", default=None, help="folder for the CSV")
    _add_runtime(p)
    return parser


# ------------------------------------------------------------------------------ helpers

def _set_threads(threads: int) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise CLIError(f"--device: {err}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {device}: CUDA is not available on this machine")


def _model_kind(name: str) -> str:
    from .models import MODEL_ALIASES

    return MODEL_ALIASES[name]


def _data_config(args, split: Optional[str] = None):
    from .training import DataConfig

    try:
        return DataConfig(dataset=args.dataset, path=args.data_path,
                          split=split or getattr(args, "split", "random"),
                          seed=getattr(args, "seed", 0))
    except ValueError as err:
        raise CLIError(str(err)) from err


def _picked(args, names: Sequence[str]) -> dict:
    """{name: value} of the flags the user actually gave (not None)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _say(text: str) -> None:
    print(text, flush=True)


def _metrics_line(name: str, metrics: dict) -> str:
    keys = [k for k in metrics if k != "n_users"]
    return f"{name}: " + "  ".join(f"{k} {metrics[k]:.4f}" for k in keys) + \
        f"  (users {metrics.get('n_users', '?')})"


# ------------------------------------------------------------------------------ commands

def cmd_train(args) -> int:
    from .training import (LossConfig, TrainConfig, create_model, evaluate, loss_preset,
                           prepare_data, save_checkpoint, train)
    from .training.recipes import recipe

    kind = _model_kind(args.model)
    spec = recipe(kind)
    model_kw = {**spec["model"], **_picked(args, ("dim", "hidden", "dropout", "field_dropout",
                                                   "use_side_features", "tie_history",
                                                   "normalize", "item_bias"))}
    loss_kw = {**spec["loss"], **_picked(args, ("sampler", "num_negatives", "hard_negatives",
                                                 "hard_negative_pool", "hard_negative_mode",
                                                 "temperature", "logq_correction"))}
    train_kw = {**spec["train"], **_picked(args, ("epochs", "lr", "batch_size", "weight_decay",
                                                   "patience", "eval_every", "history_keep",
                                                   "max_targets")),
                "seed": args.seed, "device": args.device, "progress": not args.no_progress}
    if kind == "softmax_dnn" and model_kw.get("tie_history"):
        model_kw.setdefault("history_dim", model_kw.get("dim", 64))
    try:
        if args.loss == "sampled":
            loss_config = LossConfig(kind="sampled", **loss_kw)
        else:
            loss_config = loss_preset(args.loss, **loss_kw)
        train_config = TrainConfig(**train_kw)
    except (ValueError, TypeError) as err:
        raise CLIError(str(err)) from err
    data_config = _data_config(args)
    _say(f"loading {data_config.dataset} ({data_config.split} split, seed {data_config.seed})")
    data = prepare_data(data_config)
    import torch

    torch.manual_seed(args.seed)  # initialisation; train() reseeds for the rest
    model = create_model(kind, data, **model_kw)
    n_params = sum(p.numel() for p in model.parameters())
    _say(f"{kind}: {n_params} parameters; loss {loss_config.describe()}; "
         f"{len(data.train_users)} training users, {data.n_items} items")
    result = train(model, data, loss_config, train_config, log=_say)
    valid = evaluate(model, data, "valid", cold_start_method=train_config.cold_start_method)
    test = evaluate(model, data, "test", cold_start_method=train_config.cold_start_method)
    _say(f"best epoch {result.best_epoch} of {result.epochs_run}; training "
         f"{result.train_seconds:.1f}s ({result.examples_per_second:.0f} examples/s)")
    _say(_metrics_line("valid", valid))
    _say(_metrics_line("test", test))
    if args.out:
        path = save_checkpoint(args.out, model, {
            "data": data_config.to_dict(), "loss": loss_config.to_dict(),
            "train": train_config.to_dict(), "best_epoch": result.best_epoch,
            "metrics": {"valid": valid, "test": test}})
        _say(f"checkpoint written to {path}")
    if args.json:
        print(json.dumps({"best_epoch": result.best_epoch, "train_seconds":
                          result.train_seconds, "valid": valid, "test": test}))
    return 0


def cmd_evaluate(args) -> int:
    from .training import DataConfig, evaluate, load_checkpoint, prepare_data

    try:
        model, meta = load_checkpoint(args.checkpoint, map_location=args.device)
    except FileNotFoundError as err:
        raise CLIError(str(err)) from err
    values = dict(meta["data"])
    if args.data_path is not None:
        values["path"] = args.data_path
    data_config = DataConfig.from_dict(values)
    data = prepare_data(data_config)
    if (data.n_items, data.n_users) != (model.config.n_items, model.config.n_users):
        raise CLIError(f"the checkpoint was trained on {model.config.n_users} users x "
                       f"{model.config.n_items} items, the data has {data.n_users} x "
                       f"{data.n_items}")
    method = meta.get("train", {}).get("cold_start_method", "fold_in")
    metrics = evaluate(model, data, args.task, ks=args.ks, cold_start_method=method)
    if args.json:
        print(json.dumps(metrics))
    else:
        _say(f"{model.config.kind} on {data_config.dataset} ({data_config.split} split, seed "
             f"{data_config.seed})")
        _say(_metrics_line(args.task, metrics))
    return 0


def _out_dir(path: str) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def cmd_compare(args) -> int:
    from .training.experiments import (COMPARE_LOSSES, COMPARE_MODELS, RECBOLE_ML100K,
                                       aggregate, cold_start_experiment, compare, format_table,
                                       plot_compare, write_csv)

    models = [_model_kind(m) for m in (args.models or COMPARE_MODELS)]
    losses = list(args.losses or COMPARE_LOSSES)
    data_config = _data_config(args, split="random")
    overrides = {} if args.epochs is None else {"epochs": args.epochs}
    out = _out_dir(args.out)
    start = time.perf_counter()
    rows = compare(data_config, models, losses, args.seeds, quick=args.quick,
                   device=args.device, progress=not args.no_progress, log=_say,
                   train_overrides=overrides)
    means = aggregate(rows)
    elapsed = time.perf_counter() - start
    _say(f"\ntest metrics on {data_config.dataset}, mean of seeds {args.seeds} "
         f"({elapsed / 60:.1f} min in all):")
    _say(format_table(means))
    if data_config.dataset == "ml-100k":
        _say("\nRecBole 1.2.1 (same protocol): " + "  ".join(
            f"{name} {n:.4f}/{r:.4f}" for name, (n, r) in RECBOLE_ML100K.items())
            + "  (NDCG@10/Recall@10)")
    write_csv(out / "compare_runs.csv", rows)
    write_csv(out / "compare.csv", means)
    written = [out / "compare.csv", out / "compare_runs.csv"]
    if not args.no_plot:
        plot_compare(out / "compare.png", means,
                     RECBOLE_ML100K if data_config.dataset == "ml-100k" else None)
        written.append(out / "compare.png")
    if args.cold_start:
        cold = cold_start_experiment(data_config, args.seeds, quick=args.quick,
                                     device=args.device, progress=not args.no_progress,
                                     log=_say, train_overrides=overrides)
        cold_means = aggregate(cold)
        _say("\ncold start (held-out users):")
        _say(format_table(cold_means))
        write_csv(out / "cold_start.csv", cold_means)
        written.append(out / "cold_start.csv")
    _say("wrote " + ", ".join(str(p) for p in written))
    return 0


def cmd_folding(args) -> int:
    from .training.experiments import (FOLDING_LOSSES, folding_experiment, format_table,
                                       plot_folding, write_csv)

    synthetic = {k: v for k, v in (("n_groups", args.groups), ("n_users", args.users),
                                   ("n_items", args.items), ("p_in", args.p_in))
                 if v is not None}
    if args.p_in is not None and not 0.0 <= args.p_in <= 1.0:
        raise CLIError(f"--p-in must be in [0, 1], got {args.p_in}")
    overrides = {} if args.epochs is None else {"epochs": args.epochs}
    out = _out_dir(args.out)
    rows, embeddings = folding_experiment(
        args.seed, kind=_model_kind(args.model), losses=args.losses or FOLDING_LOSSES,
        synthetic=synthetic, quick=args.quick, device=args.device,
        progress=not args.no_progress, log=_say, train_overrides=overrides)
    _say("\nfolding on clustered synthetic data (share of top-10 from another group; "
         "lower is better):")
    _say(format_table(rows, metrics=("folding@10", "ndcg@10", "recall@10")))
    write_csv(out / "folding.csv", rows)
    written = [out / "folding.csv"]
    if not args.no_plot:
        plot_folding(out / "folding.png", embeddings)
        written.append(out / "folding.png")
    _say("wrote " + ", ".join(str(p) for p in written))
    return 0


def cmd_cold_start(args) -> int:
    from .training import DataConfig
    from .training.experiments import aggregate, cold_start_experiment, format_table, write_csv

    try:
        data_config = DataConfig(dataset=args.dataset, path=args.data_path, split="cold_start",
                                 heldout_fraction=args.heldout_fraction, n_given=args.n_given)
    except ValueError as err:
        raise CLIError(str(err)) from err
    overrides = {} if args.epochs is None else {"epochs": args.epochs}
    rows = cold_start_experiment(data_config, args.seeds, loss=args.loss, quick=args.quick,
                                 device=args.device, progress=not args.no_progress, log=_say,
                                 train_overrides=overrides)
    means = aggregate(rows)
    _say(f"\ncold start: {args.heldout_fraction:.0%} of users held out, first {args.n_given} "
         f"interactions given; seeds {args.seeds}:")
    _say(format_table(means))
    if args.out:
        out = _out_dir(args.out)
        write_csv(out / "cold_start.csv", means)
        write_csv(out / "cold_start_runs.csv", rows)
        _say(f"wrote {out / 'cold_start.csv'}")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "compare": cmd_compare,
            "folding": cmd_folding, "cold-start": cmd_cold_start}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .data import DataFormatError

    try:
        _set_threads(args.threads)
        _check_device(args.device)
        return COMMANDS[args.command](args)
    except CLIError as err:
        parser.error(str(err))  # exits with status 2
    except (FileNotFoundError, DataFormatError) as err:
        # Missing or malformed data files: the message names the file (and line); a
        # traceback would only bury it.
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
