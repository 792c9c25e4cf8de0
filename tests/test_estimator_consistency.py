"""Does SampledSoftmaxLoss estimate the full softmax? Its gradient w.r.t. the query against
``full_softmax_cross_entropy``'s on a synthetic problem with popularity structure.

    python tests/test_estimator_consistency.py        # prints the tables (a few tens of seconds)

Problem: N = 20,000 items, d = 32, Zipf popularity c_i ∝ 1 / (i + 1) (ids sorted by decreasing
popularity, as the log-uniform sampler assumes). Item embeddings are N(0, 0.25²) with one
coordinate set to the standardised log-popularity (× 0.8); B = 256 queries are N(0, 0.375²)
with that coordinate ≈ 1, so scores favour popular items (effective softmax support ~6,000
items, mean p(positive) ~ 0.007). Positives are drawn from the popularity distribution.

Metrics, averaged over 4 seeds: cos = cosine between the flattened [B, d] sampled and full
gradients; cos(E) = the same for the model-expectation part only, Σ_i p_i e_i (the gradient
plus the exact positive term), which the positive term cannot inflate.
"""
import os
import sys

if __name__ == "__main__":  # script mode: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402
import torch  # noqa: E402

import fastsoftmax  # noqa: E402
from fastsoftmax.sampled_loss import SampledSoftmaxLoss  # noqa: E402

NUM_ITEMS, DIM, BATCH = 20_000, 32, 256
SIZES = (64, 256, 1024, 4096, 8192)
SEEDS = (0, 1, 2, 3)
HARD, POOL = 64, 4096


def make_problem(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    counts = 1.0 / torch.arange(1, NUM_ITEMS + 1, dtype=torch.float64)
    log_pop = counts.log()
    log_pop = ((log_pop - log_pop.mean()) / log_pop.std()).float()
    items = torch.randn(NUM_ITEMS, DIM, generator=g) * 0.25
    items[:, 0] = 0.8 * log_pop
    query = torch.randn(BATCH, DIM, generator=g) * 0.375
    query[:, 0] = 1.0 + 0.3 * torch.randn(BATCH, generator=g)
    positives = torch.multinomial((counts / counts.sum()).float(), BATCH, replacement=True,
                                  generator=g)
    q = query.clone().requires_grad_()
    fastsoftmax.full_softmax_cross_entropy(q, items, positives).backward()
    return dict(query=query, items=items, positives=positives, counts=counts, full=q.grad)


def cosines(problem: dict, grad: torch.Tensor):
    """(cos of the gradients, cos of their model-expectation parts) for mean reduction, T = 1."""
    full, pos_rows = problem["full"], problem["items"][problem["positives"]]
    cos = torch.nn.functional.cosine_similarity(grad.flatten(), full.flatten(), 0)
    expect = lambda g: g * BATCH + pos_rows  # noqa: E731  (the exact positive term removed)
    cos_e = torch.nn.functional.cosine_similarity(expect(grad).flatten(),
                                                  expect(full).flatten(), 0)
    return cos.item(), cos_e.item()


def query_grad(problem: dict, loss_fn, seed: int, positive_correction: bool = False):
    """d loss / d query for one draw. positive_correction=True recomputes the loss on the same
    draw with TensorFlow's convention (the positive logit also minus log S q_pos)."""
    q = problem["query"].clone().requires_grad_()
    loss, draw = loss_fn(q, problem["items"], problem["positives"], seed=seed, return_draw=True)
    if positive_correction:
        q = problem["query"].clone().requires_grad_()
        pos = problem["positives"].unsqueeze(1)
        items, neg = problem["items"], draw.negative_ids
        loss = fastsoftmax.sampled_softmax_cross_entropy(
            q, items[pos], items[neg], positive_ids=pos, candidate_ids=neg,
            positive_log_q=loss_fn.sampler.log_expected_count(pos, neg.numel()),
            candidate_log_q=draw.negative_log_q)
    loss.backward()
    return q.grad


def average_cosines(problem: dict, make_loss, seeds=SEEDS, **kw):
    pairs = [cosines(problem, query_grad(problem, make_loss(), s, **kw)) for s in seeds]
    return tuple(sum(p[i] for p in pairs) / len(pairs) for i in range(2))


def sampler_loss(problem: dict, sampler: str, size: int, **kw):
    counts = problem["counts"] if sampler == "unigram" else None
    return lambda: SampledSoftmaxLoss(NUM_ITEMS, size, sampler=sampler, counts=counts, **kw)


def convergence_row(problem: dict, sampler: str, **kw):
    return [average_cosines(problem, sampler_loss(problem, sampler, s, **kw)) for s in SIZES]


def hard_negative_rows(problem: dict, modes=("sample", "topk")):
    """Equal budget of 64 negatives per row: hard (pool of 4096 uniform draws) vs uniform."""
    rows = {f"{HARD} uniform": average_cosines(problem, sampler_loss(problem, "uniform", HARD))}
    for mode in modes:
        make = (lambda mode=mode: SampledSoftmaxLoss(
            NUM_ITEMS, 0, sampler="uniform", hard_negatives=HARD, hard_negative_pool=POOL,
            hard_negative_mode=mode))
        rows[f"{HARD} hard, {mode} mode, pool {POOL}"] = average_cosines(problem, make)
    return rows


# ---------------------------------------------------------------------------------------------
# Tests

@pytest.fixture(scope="module")
def problem():
    return make_problem()


@pytest.mark.parametrize("sampler", ["uniform", "unigram"])
def test_sampled_gradient_converges_to_full_softmax(problem, sampler):
    row = convergence_row(problem, sampler)
    for metric in (0, 1):
        values = [r[metric] for r in row]
        assert all(b > a for a, b in zip(values, values[1:])), (sampler, metric, values)
        assert values[-1] > 0.99, (sampler, metric, values)


def test_without_logq_correction_the_popularity_bias_stays(problem):
    corrected = average_cosines(problem, sampler_loss(problem, "unigram", SIZES[-1]))
    plain = average_cosines(problem, sampler_loss(problem, "unigram", SIZES[-1],
                                                  logq_correction=False))
    assert plain[0] < 0.95 < corrected[0], (plain, corrected)


def test_correcting_the_positive_logit_leaves_a_bias(problem):
    """TensorFlow's convention (positive logit minus log S q_pos) does not converge: at
    S = 8192 it stays measurably further from the full gradient than ours."""
    make = sampler_loss(problem, "unigram", SIZES[-1])
    ours = average_cosines(problem, make)
    tf_style = average_cosines(problem, make, positive_correction=True)
    assert 1 - tf_style[0] > 3 * (1 - ours[0]), (ours, tf_style)


def test_hard_negatives_beat_uniform_at_equal_budget(problem):
    rows = hard_negative_rows(problem, modes=("sample",))
    uniform = rows[f"{HARD} uniform"]
    sampled = rows[f"{HARD} hard, sample mode, pool {POOL}"]
    assert sampled[0] > uniform[0] and sampled[1] > uniform[1], rows


# ---------------------------------------------------------------------------------------------
# Script mode

def main() -> None:
    import time

    start = time.perf_counter()
    prob = make_problem()
    print(f"N={NUM_ITEMS} d={DIM} B={BATCH}, mean over seeds {SEEDS}; cells: cos / cos(E)\n")
    print("| sampler | " + " | ".join(f"S={s}" for s in SIZES) + " |")
    print("|---" * (len(SIZES) + 1) + "|")
    rows = [(name, name, {}) for name in ("uniform", "unigram", "log_uniform")]
    rows += [("unigram, no logQ correction", "unigram", dict(logq_correction=False)),
             ("log_uniform, no logQ correction", "log_uniform", dict(logq_correction=False))]
    for label, sampler, kw in rows:
        cells = convergence_row(prob, sampler, **kw)
        print(f"| {label} | " + " | ".join(f"{a:.5f} / {b:.5f}" for a, b in cells) + " |")
    for sampler in ("unigram", "log_uniform"):
        cells = [average_cosines(prob, sampler_loss(prob, sampler, s), positive_correction=True)
                 for s in SIZES]
        print(f"| {sampler}, TF positive correction | "
              + " | ".join(f"{a:.5f} / {b:.5f}" for a, b in cells) + " |")
    print(f"\nHard negatives (fastsoftmax.mine_hard_negatives), {HARD} negatives per row:\n")
    print("| negatives | cos | cos(E) |\n|---|---|---|")
    for label, (a, b) in hard_negative_rows(prob).items():
        print(f"| {label} | {a:.5f} | {b:.5f} |")
    print(f"\n({time.perf_counter() - start:.1f} s, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
