"""Models of fastsoftmax.models: shapes, gradients, options (normalize, item bias, tying, field
dropout), MF cold-start embeddings, config round trip."""
import pytest
import torch
import torch.nn.functional as F

from fastsoftmax.models import (
    MatrixFactorization,
    ModelConfig,
    QueryBatch,
    SoftmaxDNN,
    TwoTower,
    build_model,
)

N_USERS, N_ITEMS, DIM = 7, 11, 8
CARDS = [3, 5]


def make_config(kind, **overrides):
    values = dict(kind=kind, n_users=N_USERS, n_items=N_ITEMS, dim=DIM, hidden=[16],
                  categorical_names=["a", "b"], categorical_cardinalities=CARDS,
                  categorical_dim=4, n_dense=2, n_genres=3, n_year_buckets=4)
    values.update(overrides)
    return ModelConfig(**values)


def make_batch(batch=5, generator=None):
    g = generator or torch.Generator().manual_seed(1)
    lengths = torch.tensor([3, 0, 2, 4, 1][:batch])
    offsets = torch.cumsum(lengths, 0) - lengths
    return QueryBatch(
        users=torch.arange(batch),
        history=torch.randint(0, N_ITEMS, (int(lengths.sum()),), generator=g),
        history_offsets=offsets,
        dense=torch.randn(batch, 2, generator=g),
        categorical=torch.stack([torch.randint(0, c, (batch,), generator=g) for c in CARDS], 1),
    )


def with_item_features(model):
    if isinstance(model, TwoTower):
        g = torch.Generator().manual_seed(2)
        model.item_tower.set_features((torch.rand(N_ITEMS, 3, generator=g) > 0.5).float(),
                                      torch.randint(0, 4, (N_ITEMS,), generator=g))
    return model


KINDS = ["mf", "softmax_dnn", "two_tower"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("item_bias", [False, True])
def test_shapes_and_gradients(kind, item_bias):
    model = with_item_features(build_model(make_config(kind, item_bias=item_bias)))
    width = DIM + int(item_bias)
    assert model.embedding_dim == width
    batch = make_batch()
    query = model.query_embeddings(batch)
    items = model.item_embeddings()
    some = model.item_embeddings(torch.tensor([4, 0, 4]))
    assert query.shape == (5, width) and items.shape == (N_ITEMS, width)
    assert some.shape == (3, width)
    torch.testing.assert_close(some, items[[4, 0, 4]])
    assert model(batch).shape == (5, N_ITEMS)
    loss = (query @ items.T).logsumexp(1).sum() - (query * some[:1]).sum()
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for name, param in trainable:
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all()
    # the embeddings that feed the scores must get a non-zero gradient
    table = model.item_tower.id_embedding.weight if kind == "two_tower" else \
        model.item_embedding.weight
    assert table.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_normalize_and_bias_scores(kind):
    model = with_item_features(build_model(make_config(kind, normalize=True, item_bias=True)))
    with torch.no_grad():
        model.item_bias.copy_(torch.linspace(-1, 1, N_ITEMS))
    query = model.query_embeddings(make_batch())
    items = model.item_embeddings()
    torch.testing.assert_close(query[:, :DIM].norm(dim=1), torch.ones(5))
    torch.testing.assert_close(items[:, :DIM].norm(dim=1), torch.ones(N_ITEMS))
    torch.testing.assert_close(query[:, DIM], torch.ones(5))
    scores = query @ items.T
    expected = query[:, :DIM] @ items[:, :DIM].T + torch.linspace(-1, 1, N_ITEMS)
    torch.testing.assert_close(scores, expected)


def test_tied_history_shares_the_softmax_weights():
    model = SoftmaxDNN(make_config("softmax_dnn", tie_history=True))
    assert model.query_tower.history_embedding is model.item_embedding
    names = [n for n, _ in model.named_parameters()]
    assert sum("embedding" in n and "categorical" not in n for n in names) == 1
    untied = SoftmaxDNN(make_config("softmax_dnn"))
    assert untied.query_tower.history_embedding is not untied.item_embedding
    with pytest.raises(ValueError, match="history_dim == dim"):
        make_config("softmax_dnn", tie_history=True, history_dim=DIM + 1)


def test_history_bag_is_mean_of_embeddings():
    config = make_config("softmax_dnn", use_side_features=False, hidden=[])
    model = SoftmaxDNN(config)
    batch = make_batch()
    table = model.query_tower.history_embedding.weight
    lengths = batch.history_lengths()
    bag = []
    for row in range(len(batch)):
        start = int(batch.history_offsets[row])
        items = batch.history[start:start + int(lengths[row])]
        bag.append(table[items].mean(0) if items.numel() else torch.zeros(DIM))
    expected = model.query_tower.mlp(torch.stack(bag))
    torch.testing.assert_close(model.query_embeddings(batch), expected)


def test_side_features_change_the_query_and_field_dropout_removes_them():
    model = SoftmaxDNN(make_config("softmax_dnn", field_dropout=0.999999))
    batch = make_batch()
    other = QueryBatch(batch.users, batch.history, batch.history_offsets, batch.dense + 3.0,
                       (batch.categorical + 1) % torch.tensor(CARDS))
    model.eval()
    assert not torch.allclose(model.query_embeddings(batch), model.query_embeddings(other))
    model.train()
    torch.manual_seed(0)
    dropped = model.query_embeddings(batch)
    torch.manual_seed(0)
    torch.testing.assert_close(model.query_embeddings(other), dropped)
    # without side features the tower ignores them entirely
    plain = SoftmaxDNN(make_config("softmax_dnn", use_side_features=False)).eval()
    torch.testing.assert_close(plain.query_embeddings(batch), plain.query_embeddings(other))


def test_dense_standardisation_uses_the_stored_statistics():
    model = SoftmaxDNN(make_config("softmax_dnn")).eval()
    batch = make_batch()
    before = model.query_embeddings(batch)
    model.query_tower.set_dense_stats(torch.tensor([1.0, -2.0]), torch.tensor([2.0, 0.5]))
    shifted = QueryBatch(batch.users, batch.history, batch.history_offsets,
                         batch.dense * torch.tensor([2.0, 0.5]) + torch.tensor([1.0, -2.0]),
                         batch.categorical)
    torch.testing.assert_close(model.query_embeddings(shifted), before)
    with pytest.raises(ValueError, match="dense stats"):
        model.query_tower.set_dense_stats(torch.zeros(3), torch.ones(3))


def test_two_tower_item_features_matter():
    model = with_item_features(TwoTower(make_config("two_tower"))).eval()
    before = model.item_embeddings()
    model.item_tower.set_features(torch.zeros(N_ITEMS, 3), torch.zeros(N_ITEMS, dtype=torch.long))
    assert not torch.allclose(before, model.item_embeddings())
    with pytest.raises(ValueError, match="item features"):
        model.item_tower.set_features(torch.zeros(N_ITEMS, 4), torch.zeros(N_ITEMS))


def test_mf_unknown_users_and_history_embeddings():
    model = MatrixFactorization(make_config("mf"))
    batch = make_batch()
    unknown = QueryBatch(torch.full((5,), -1), batch.history, batch.history_offsets,
                         batch.dense, batch.categorical)
    with pytest.raises(ValueError, match="unseen users"):
        model.query_embeddings(unknown)
    mean = model.query_embeddings_from_history(unknown, "mean")
    table = model.item_embedding.weight
    torch.testing.assert_close(mean[0], table[batch.history[:3]].mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(mean[1], torch.zeros(DIM))  # empty history
    with pytest.raises(ValueError, match="method"):
        model.query_embeddings_from_history(unknown, "nearest")


def test_mf_fold_in_fits_the_given_items_better_than_the_mean():
    torch.manual_seed(0)
    model = MatrixFactorization(make_config("mf"))
    with torch.no_grad():
        model.item_embedding.weight.normal_()
    batch = make_batch()
    mean = model.query_embeddings_from_history(batch, "mean")
    folded = model.query_embeddings_from_history(batch, "fold_in", steps=100, lr=0.1,
                                                 weight_decay=0.0)
    items = model.item_embeddings()
    lengths = batch.history_lengths()
    for row in (0, 2, 3):
        start = int(batch.history_offsets[row])
        given = batch.history[start:start + int(lengths[row])]
        def nll(q):
            return -F.log_softmax(q @ items.T, -1)[given].mean()
        assert nll(folded[row]) < nll(mean[row]) - 1e-3
    assert not folded.requires_grad
    torch.testing.assert_close(folded[1], mean[1])  # empty history: untouched


def test_query_batch_validation():
    batch = make_batch()
    with pytest.raises(ValueError, match="history_offsets"):
        QueryBatch(batch.users, batch.history, batch.history_offsets[:3], batch.dense,
                   batch.categorical)
    with pytest.raises(ValueError, match="dense"):
        QueryBatch(batch.users, batch.history, batch.history_offsets, batch.dense[:2],
                   batch.categorical)
    model = SoftmaxDNN(make_config("softmax_dnn"))
    wrong = QueryBatch(batch.users, batch.history, batch.history_offsets, batch.dense,
                       batch.categorical[:, :1])
    with pytest.raises(ValueError, match="categorical"):
        model.query_embeddings(wrong)


def test_config_round_trip_and_errors():
    config = make_config("two_tower", hidden=[32, 16], normalize=True)
    again = ModelConfig.from_dict(config.to_dict())
    assert again == config
    assert again.history_dim == DIM and again.item_id_dim == DIM
    with pytest.raises(ValueError, match="kind"):
        make_config("transformer")
    with pytest.raises(ValueError, match="dim"):
        make_config("mf", dim=0)
    with pytest.raises(ValueError, match="field_dropout"):
        make_config("mf", field_dropout=1.0)
    with pytest.raises(ValueError, match="unknown model config"):
        ModelConfig.from_dict({**config.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="differ in length"):
        make_config("mf", categorical_names=["a"])
