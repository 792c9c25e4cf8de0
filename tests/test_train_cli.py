"""Training (examples, losses, loop, checkpoints) and the fastsoftmax CLI, on tiny data."""
import json
import math

import pytest
import torch

from fastsoftmax import cli
from fastsoftmax.data import UserItemCSR
from fastsoftmax.models import MatrixFactorization, SoftmaxDNN
from fastsoftmax.reference_topk import topk_inner_product_reference as reference_topk
from fastsoftmax.training import (
    DataConfig,
    LossConfig,
    TrainConfig,
    TrainingLoss,
    create_model,
    evaluate,
    load_checkpoint,
    loss_preset,
    padded_rows,
    positives_only_loss,
    prepare_data,
    save_checkpoint,
    train,
    training_batch,
)
from fastsoftmax.training.experiments import aggregate, format_table

TINY = dict(n_users=120, n_items=60, n_groups=3, interactions_per_user=12, p_in=0.9)



@pytest.fixture(scope="module")
def tiny():
    return prepare_data(DataConfig(dataset="synthetic", synthetic=TINY))


# ------------------------------------------------------------------------------ data / examples

def test_prepare_data_random_split(tiny):
    assert (tiny.n_users, tiny.n_items) == (120, 60)
    assert tiny.dense.shape == (120, 2) and tiny.categorical.shape == (120, 0)
    assert tiny.item_genres.shape == (60, 0)
    valid, test = tiny.tasks["valid"], tiny.tasks["test"]
    train_sets = tiny.train_csr.to_sets()
    for u in test.users.tolist()[:20]:
        truth = test.ground_truth.to_sets()[u]
        assert truth and not truth & train_sets[u]
        assert test.exclude.to_sets()[u] >= train_sets[u] | valid.ground_truth.to_sets()[u]
    assert int(tiny.item_counts.sum()) == tiny.train_csr.nnz


def test_prepare_data_cold_start_split():
    data = prepare_data(DataConfig(dataset="synthetic", synthetic=TINY, split="cold_start",
                                   heldout_fraction=0.2, n_given=3))
    test = data.tasks["test"]
    assert not test.known_users and len(test.users) > 0
    held = set(test.users.tolist())
    assert not held & set(data.train_users.tolist())
    lengths = test.history.row_lengths()
    assert all(int(lengths[u]) == 3 for u in held)
    assert torch.equal(test.exclude.offsets, test.history.offsets)


def test_padded_rows_and_cap():
    csr = UserItemCSR.from_sets([{1, 2, 3}, set(), {7}])
    torch.testing.assert_close(padded_rows(csr), torch.tensor([[1, 2, 3], [-1, -1, -1],
                                                               [7, -1, -1]]))
    capped = padded_rows(csr, max_width=2, generator=torch.Generator().manual_seed(0))
    assert capped.shape == (3, 2)
    assert set(capped[0].tolist()) < {1, 2, 3} and capped[2].tolist() == [7, -1]


def test_training_batch_splits_history_and_targets(tiny):
    users = tiny.train_users[:40]
    g = torch.Generator().manual_seed(0)
    batch, targets = training_batch(tiny, users, 0.5, g)
    lengths = batch.history_lengths()
    train_sets = tiny.train_csr.take_rows(users).to_sets()
    for row in range(len(users)):
        start = int(batch.history_offsets[row])
        hist = set(batch.history[start:start + int(lengths[row])].tolist())
        tgt = {t for t in targets[row].tolist() if t >= 0}
        assert tgt, "every row needs a target"
        assert not hist & tgt and hist | tgt == train_sets[row]
    # the denoising variant: every item is a target, the bag is a subset
    batch2, targets2 = training_batch(tiny, users, 0.5, torch.Generator().manual_seed(0),
                                      targets_include_history=True)
    for row in range(len(users)):
        assert {t for t in targets2[row].tolist() if t >= 0} == train_sets[row]
    torch.testing.assert_close(batch2.history, batch.history)
    # MF-style: the full history in, all items targets
    full, all_targets = training_batch(tiny, users, None, g)
    assert full.history.numel() == sum(len(s) for s in train_sets)
    with pytest.raises(ValueError, match="history_keep"):
        training_batch(tiny, users, 1.0, g)


# ------------------------------------------------------------------------------ losses

def test_loss_configs_validate():
    assert loss_preset("hard").hard_negatives > 0
    with pytest.raises(ValueError, match="unknown loss preset"):
        loss_preset("contrastive")
    with pytest.raises(ValueError, match="sampler"):
        LossConfig(kind="sampled", sampler="popularity")
    with pytest.raises(ValueError, match="hard_negatives needs"):
        LossConfig(kind="full", hard_negatives=4)
    with pytest.raises(ValueError, match="temperature"):
        LossConfig(temperature=0.0)


def test_full_loss_equals_dense_cross_entropy(tiny):
    model = create_model("mf", tiny, dim=8)
    loss_fn = TrainingLoss(LossConfig(kind="full", temperature=0.5), tiny.n_items)
    query = torch.randn(4, 8)
    targets = torch.tensor([[1, 2, -1], [3, -1, -1], [0, 5, 9], [7, 7, -1]])
    logits = query @ model.item_embeddings().T / 0.5
    logp = torch.log_softmax(logits, 1)
    expected = torch.stack([
        -logp[b, targets[b][targets[b] >= 0]].mean() for b in range(4)]).mean()
    torch.testing.assert_close(loss_fn(model, query, targets), expected, rtol=1e-5, atol=1e-5)


def test_positives_only_loss():
    items = torch.nn.Embedding(5, 3)
    query = torch.randn(2, 3)
    targets = torch.tensor([[0, 4], [2, -1]])
    s = query @ items.weight.T
    expected = (((1 - s[0, 0]) ** 2 + (1 - s[0, 4]) ** 2) / 2 + (1 - s[1, 2]) ** 2) / 2
    torch.testing.assert_close(positives_only_loss(query, items, targets), expected)


@pytest.mark.parametrize("preset", ["uniform", "in_batch", "mixed", "hard"])
def test_sampled_presets_train(tiny, preset):
    model = create_model("softmax_dnn", tiny, dim=8, hidden=[16])
    config = loss_preset(preset, num_negatives=16, hard_negative_pool=32, hard_negatives=8) \
        if preset == "hard" else loss_preset(preset, num_negatives=16)
    loss_fn = TrainingLoss(config, tiny.n_items, tiny.item_counts, seed=0)
    batch, targets = training_batch(tiny, tiny.train_users[:16], 0.5,
                                    torch.Generator().manual_seed(0))
    query = model.query_embeddings(batch)
    loss = loss_fn(model, query, targets)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.item_embedding.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------ training loop

@pytest.mark.parametrize("kind", ["mf", "softmax_dnn", "two_tower"])
def test_training_reduces_the_loss_and_beats_chance(tiny, kind):
    model = create_model(kind, tiny, dim=16, hidden=[32], normalize=True, item_bias=True)
    config = TrainConfig(epochs=8, lr=1e-2, batch_size=16, patience=0, progress=False,
                         eval_every=8)
    result = train(model, tiny, LossConfig(kind="full", temperature=0.3), config,
                   topk_fn=reference_topk, log=None)
    losses = [entry["loss"] for entry in result.log]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.05
    metrics = evaluate(model, tiny, "test", topk_fn=reference_topk)
    # random ranking of 60 items finds ~ 10/60 of the test items
    assert metrics["recall@10"] > 0.3
    assert result.best_epoch == 8 and result.examples_per_second > 0


def test_early_stopping_restores_the_best_epoch(tiny):
    model = create_model("mf", tiny, dim=8)
    config = TrainConfig(epochs=30, lr=0.5, batch_size=8, patience=2, progress=False)
    result = train(model, tiny, LossConfig(kind="full"), config, topk_fn=reference_topk, log=None)
    assert result.epochs_run < 30
    assert result.epochs_run - result.best_epoch == 2
    valid = evaluate(model, tiny, "valid", topk_fn=reference_topk)
    assert valid["ndcg@10"] == pytest.approx(result.best_valid["ndcg@10"])


def test_training_is_seeded(tiny):
    """Given the same initial weights, training depends on config.seed only (not on the global
    RNG state it starts from)."""
    def once(global_seed):
        torch.manual_seed(7)
        model = create_model("softmax_dnn", tiny, dim=8, hidden=[8], field_dropout=0.3)
        torch.manual_seed(global_seed)
        config = TrainConfig(epochs=2, batch_size=32, patience=0, progress=False, seed=3)
        train(model, tiny, LossConfig(kind="full"), config, topk_fn=reference_topk, log=None)
        return model.item_embeddings()

    torch.testing.assert_close(once(123), once(456))


def test_positives_only_training_runs(tiny):
    model = create_model("softmax_dnn", tiny, dim=8, hidden=[8], use_side_features=False)
    config = TrainConfig(epochs=3, batch_size=32, patience=0, progress=False, lr=1e-2)
    result = train(model, tiny, loss_preset("positives_only"), config, topk_fn=reference_topk,
                   log=None)
    assert result.log[-1]["loss"] < result.log[0]["loss"]


def test_cold_start_evaluation_uses_history():
    data = prepare_data(DataConfig(dataset="synthetic", synthetic=TINY, split="cold_start",
                                   heldout_fraction=0.2, n_given=4))
    mf = create_model("mf", data, dim=8)
    train(mf, data, LossConfig(), TrainConfig(epochs=3, batch_size=16, progress=False, lr=1e-2,
                                              patience=0), log=None)
    folded = evaluate(mf, data, "test", cold_start_method="fold_in")
    mean = evaluate(mf, data, "test", cold_start_method="mean")
    assert folded["n_users"] == mean["n_users"] == len(data.tasks["test"].users)
    assert folded["recall@10"] > 0.2 and mean["recall@10"] > 0.2


# ------------------------------------------------------------------------------ checkpoints

@pytest.mark.parametrize("kind", ["mf", "softmax_dnn", "two_tower"])
def test_checkpoint_round_trip(tmp_path, tiny, kind):
    model = create_model(kind, tiny, dim=8, hidden=[8], item_bias=True, tie_history=
                         kind == "softmax_dnn").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    save_checkpoint(tmp_path, model, {"data": DataConfig(dataset="synthetic").to_dict(),
                                      "metrics": {"test": {"ndcg@10": 0.5}}})
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["model"]["kind"] == kind and meta["metrics"]["test"]["ndcg@10"] == 0.5
    # plain tensors only: loads with weights_only=True
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    loaded, meta2 = load_checkpoint(tmp_path)
    assert meta2 == meta and not loaded.training
    batch, _ = training_batch(tiny, tiny.train_users[:5], None, torch.Generator())
    torch.testing.assert_close(loaded.query_embeddings(batch), model.query_embeddings(batch))
    torch.testing.assert_close(loaded.item_embeddings(), model.item_embeddings())
    if kind == "softmax_dnn":
        assert loaded.query_tower.history_embedding is loaded.item_embedding


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": 99, "model": {}}))
    torch.save({}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="format"):
        load_checkpoint(tmp_path)


# ------------------------------------------------------------------------------ CLI

TINY_FLAGS = ["--dataset", "synthetic", "--no-progress", "--dim", "8", "--hidden", "16",
              "--batch-size", "64"]


def test_cli_train_then_evaluate(tmp_path, capsys):
    out = tmp_path / "ckpt"
    code = cli.main(["train", "--model", "dnn", "--loss", "full", "--epochs", "2",
                     "--out", str(out), "--json", *TINY_FLAGS])
    assert code == 0
    printed = capsys.readouterr().out
    final = json.loads(printed.strip().splitlines()[-1])
    assert 0.0 <= final["test"]["ndcg@10"] <= 1.0 and final["best_epoch"] in (1, 2)
    assert (out / "model.pt").is_file() and (out / "config.json").is_file()
    assert cli.main(["evaluate", "--checkpoint", str(out), "--json", "--ks", "10"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["ndcg@10"] == pytest.approx(final["test"]["ndcg@10"])
    assert cli.main(["evaluate", "--checkpoint", str(out), "--task", "valid"]) == 0
    assert "valid: recall@10" in capsys.readouterr().out


def test_cli_compare_quick_writes_table_and_csv(tmp_path, capsys):
    code = cli.main(["compare", "--dataset", "synthetic", "--models", "mf", "dnn",
                     "--losses", "full", "--quick", "--epochs", "2", "--no-plot",
                     "--no-progress", "--out", str(tmp_path)])
    assert code == 0
    text = capsys.readouterr().out
    assert "NDCG@10" in text and "softmax_dnn" in text
    lines = (tmp_path / "compare.csv").read_text().splitlines()
    assert lines[0].startswith("model,loss") and len(lines) == 3


def test_cli_folding_quick(tmp_path, capsys):
    code = cli.main(["folding", "--users", "120", "--items", "60", "--groups", "3",
                     "--losses", "positives_only", "full", "--quick", "--epochs", "2",
                     "--no-plot", "--no-progress", "--out", str(tmp_path)])
    assert code == 0
    assert "folding" in capsys.readouterr().out
    assert len((tmp_path / "folding.csv").read_text().splitlines()) == 3


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    from fastsoftmax.training.experiments import plot_compare, plot_folding

    rows = [{"model": m, "loss": l, "test_ndcg@10": 0.2 + 0.01 * i, "test_recall@10": 0.2}
            for i, (m, l) in enumerate([("mf", "full"), ("mf", "hard"), ("dnn", "full")])]
    plot_compare(tmp_path / "c.png", rows, {"BPR": (0.29, 0.25)})
    g = torch.arange(20) % 2
    plot_folding(tmp_path / "f.png", {"x": (torch.randn(20, 4), torch.randn(20, 4), g, g)})
    for name in ("c.png", "f.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "transformer"], "invalid choice"),
    (["train", "--epochs", "-1"], "must be >= 0"),
    (["train", "--lr", "0"], "must be > 0"),
    (["train", "--history-keep", "1.5"], r"must be in \[0, 1\)"),
    (["evaluate"], "--checkpoint"),
    (["compare", "--losses", "focal"], "invalid choice"),
    ([], "COMMAND"),
])
def test_cli_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)


def test_cli_errors_after_parsing(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", "--checkpoint", str(tmp_path / "missing")])
    assert exit_info.value.code == 2
    assert "not a fastsoftmax checkpoint" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            cli.main(["train", "--device", "cuda", *TINY_FLAGS])
        assert "CUDA is not available" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--dataset", "ml-1m", "--no-progress"])
    assert "needs a path" in capsys.readouterr().err


def test_format_table_and_aggregate():
    rows = [{"model": "mf", "loss": "full", "seed": s, "test_ndcg@10": v, "best_epoch": 3,
             "train_seconds": 1.0} for s, v in ((0, 0.2), (1, 0.4))]
    means = aggregate(rows)
    assert len(means) == 1 and means[0]["test_ndcg@10"] == pytest.approx(0.3)
    assert means[0]["test_ndcg@10_std"] == pytest.approx(math.sqrt(0.02))
    table = format_table(means, metrics=("ndcg@10",))
    assert "0.3000±0.1414" in table and table.splitlines()[0].startswith("model")


def test_isinstance_of_models(tiny):
    assert isinstance(create_model("mf", tiny, dim=4), MatrixFactorization)
    assert isinstance(create_model("softmax_dnn", tiny, dim=4), SoftmaxDNN)


def test_cli_reports_missing_data_without_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--data-path", str(tmp_path / "nowhere"), "--no-progress"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "error:" in err and "nowhere" in err and "Traceback" not in err
