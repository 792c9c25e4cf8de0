"""Tests for fastsoftmax.metrics against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from fastsoftmax.data import UserItemCSR
from fastsoftmax.metrics import (
    average_metrics,
    evaluate_ranking,
    folding_score,
    hit_matrix,
    hit_rate_at_k,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    ranking_metrics,
    recall_at_k,
)
from fastsoftmax.reference_topk import topk_inner_product_reference as reference_topk

NAN = float("nan")

# Five ranked lists of width 5 (best first, -1 = padding) and their ground truth.
TOPK = torch.tensor(
    [
        [3, 7, 1, 9, 4],  # hits at ranks 2 and 5 of |G| = 3
        [2, 5, -1, -1, -1],  # padded list; hit at rank 2 of |G| = 1
        [0, 1, 2, 3, 4],  # empty ground truth: excluded
        [6, 0, 1, 2, 3],  # hit at rank 1 of |G| = 1
        [0, 1, 2, 3, 4],  # no hit
    ]
)
GROUND_TRUTH = [{7, 4, 8}, {5}, set(), {6}, {10, 11}]

# Expected per-user values, written out. NDCG for row 0:
#   @3: (1/log2 3) / (1 + 1/log2 3 + 1/log2 4) = 0.6309297536 / 2.1309297536 = 0.2960819110
#   @5: (1/log2 3 + 1/log2 6) / 2.1309297536 = 1.0177825608 / 2.1309297536 = 0.4776237035
# row 1: (1/log2 3) / 1 = 0.6309297536 for both k.
EXPECTED = {
    "recall@3": [1 / 3, 1.0, NAN, 1.0, 0.0],
    "ndcg@3": [0.2960819109658652, 0.6309297535714575, NAN, 1.0, 0.0],
    "hit@3": [1.0, 1.0, NAN, 1.0, 0.0],
    "mrr@3": [0.5, 0.5, NAN, 1.0, 0.0],
    "precision@3": [1 / 3, 1 / 3, NAN, 1 / 3, 0.0],
    "recall@5": [2 / 3, 1.0, NAN, 1.0, 0.0],
    "ndcg@5": [0.4776237035032179, 0.6309297535714575, NAN, 1.0, 0.0],
    "hit@5": [1.0, 1.0, NAN, 1.0, 0.0],
    "mrr@5": [0.5, 0.5, NAN, 1.0, 0.0],
    "precision@5": [0.4, 0.2, NAN, 0.2, 0.0],
}
# Means over the four users with ground truth (row 2 left out).
EXPECTED_MEAN = {
    "recall@3": 0.5833333333333334,
    "ndcg@3": 0.4817529161343307,
    "hit@3": 0.75,
    "mrr@3": 0.5,
    "precision@3": 0.25,
    "recall@5": 0.6666666666666666,
    "ndcg@5": 0.5271383642686689,
    "hit@5": 0.75,
    "mrr@5": 0.5,
    "precision@5": 0.2,
}


def _assert_values(actual: torch.Tensor, expected: list[float]):
    expected_t = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual, expected_t, equal_nan=True, rtol=0, atol=1e-12)


def test_hit_matrix_marks_hits_and_ignores_padding():
    hits, n_relevant = hit_matrix(TOPK, GROUND_TRUTH)
    assert hits.dtype == torch.bool and hits.shape == (5, 5)
    assert hits.nonzero().tolist() == [[0, 1], [0, 4], [1, 1], [3, 0]]
    assert n_relevant.tolist() == [3, 1, 0, 1, 2]


@pytest.mark.parametrize("as_csr", [False, True])
def test_ranking_metrics_hand_computed(as_csr):
    ground_truth = UserItemCSR.from_sets(GROUND_TRUTH) if as_csr else GROUND_TRUTH
    per_user = ranking_metrics(TOPK, ground_truth, ks=(3, 5))
    assert list(per_user) == list(EXPECTED)
    for name, expected in EXPECTED.items():
        _assert_values(per_user[name], expected)
    means = average_metrics(per_user)
    assert means == pytest.approx(EXPECTED_MEAN, abs=1e-12)


def test_single_metric_functions_match():
    _assert_values(recall_at_k(TOPK, GROUND_TRUTH, 3), EXPECTED["recall@3"])
    _assert_values(ndcg_at_k(TOPK, GROUND_TRUTH, 5), EXPECTED["ndcg@5"])
    _assert_values(hit_rate_at_k(TOPK, GROUND_TRUTH, 3), EXPECTED["hit@3"])
    _assert_values(mrr_at_k(TOPK, GROUND_TRUTH, 5), EXPECTED["mrr@5"])
    _assert_values(precision_at_k(TOPK, GROUND_TRUTH, 5), EXPECTED["precision@5"])


def test_ndcg_ideal_dcg_uses_min_of_ground_truth_and_k():
    # |G| = 4 > k = 2 and both top items relevant: a perfect list, NDCG 1 (not 2 of 4 hits).
    assert ndcg_at_k(torch.tensor([[1, 2, 0]]), [{1, 2, 3, 4}], 2).item() == pytest.approx(1.0)
    # Repeated ground-truth entries count once: recall = 1 / 2, not 1 / 3.
    csr = (torch.tensor([0, 3]), torch.tensor([4, 4, 9]))
    assert recall_at_k(torch.tensor([[4, 0]]), csr, 2).item() == pytest.approx(0.5)


def test_all_padding_and_empty_ground_truth():
    per_user = ranking_metrics(torch.full((2, 3), -1), [{1}, set()], ks=(3,))
    assert per_user["recall@3"][0].item() == 0.0 and per_user["ndcg@3"][0].item() == 0.0
    assert math.isnan(per_user["recall@3"][1].item())
    assert math.isnan(average_metrics(ranking_metrics(TOPK[2:3], [set()], ks=(3,)))["recall@3"])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="repeats an item"):
        ranking_metrics(torch.tensor([[1, 2, 1]]), [{1}], ks=(3,))
    with pytest.raises(ValueError, match="every k"):
        ranking_metrics(TOPK, GROUND_TRUTH, ks=(6,))
    with pytest.raises(ValueError, match="rows"):
        ranking_metrics(TOPK, GROUND_TRUTH[:2], ks=(3,))
    with pytest.raises(ValueError, match="unknown metric"):
        ranking_metrics(TOPK, GROUND_TRUTH, metrics=("auc",), ks=(3,))


# ----------------------------------------------------------------------------------- evaluate

# Items on a line: user [1, 0] ranks them 0, 1, ..., 5; user [-1, 0] ranks them 5, 4, ..., 0.
ITEMS = torch.tensor([[6.0, 0.0], [5.0, 0.0], [4.0, 0.0], [3.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
USERS = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.5, 0.5]])
EVAL_GROUND_TRUTH = [{2, 5}, {5}, set()]  # user 2 has nothing to predict
EVAL_EXCLUDE = [{0}, set(), {1}]


@pytest.mark.parametrize("batch_size", [1, 2, 1024])
def test_evaluate_ranking_hand_computed(batch_size):
    seen_rows = []

    def recording_topk(query, items, k, **kwargs):
        seen_rows.append(query.shape[0])
        return reference_topk(query, items, k, **kwargs)

    result = evaluate_ranking(
        USERS, ITEMS, EVAL_GROUND_TRUTH, EVAL_EXCLUDE, ks=(2, 4), topk_fn=recording_topk, batch_size=batch_size
    )
    # user 0 (item 0 excluded) sees [1, 2, 3, 4, 5]: hit at rank 2 of |G| = 2,
    #   NDCG = (1/log2 3) / (1 + 1/log2 3) = 0.3868528072 at both k.
    # user 1 sees [5, 4, 3, 2, 1, 0]: hit at rank 1 of |G| = 1.
    ndcg_user0 = 0.38685280723454163
    expected = {
        "recall@2": 0.75, "ndcg@2": (ndcg_user0 + 1) / 2, "hit@2": 1.0, "mrr@2": 0.75, "precision@2": 0.5,
        "recall@4": 0.75, "ndcg@4": (ndcg_user0 + 1) / 2, "hit@4": 1.0, "mrr@4": 0.75, "precision@4": 0.25,
        "n_users": 2,
    }  # fmt: skip
    assert result == pytest.approx(expected, abs=1e-12)
    assert sum(seen_rows) == 2  # the user without ground truth is never scored


def test_evaluate_ranking_bias_padding_and_csr_inputs():
    gt = UserItemCSR.from_sets(EVAL_GROUND_TRUTH)
    exclude = UserItemCSR.from_sets(EVAL_EXCLUDE)
    # A large bias on item 5 puts it first for user 0 as well.
    bias = torch.tensor([0.0, 0, 0, 0, 0, 100.0])
    result = evaluate_ranking(USERS, ITEMS, gt, tuple(exclude), ks=(2,), topk_fn=reference_topk, item_bias=bias)
    assert result["mrr@2"] == pytest.approx(1.0)
    # k = 10 > 6 items: the list is padded, user 0 still finds both of its items.
    result = evaluate_ranking(USERS, ITEMS, gt, exclude, ks=(10,), topk_fn=reference_topk)
    assert result["recall@10"] == pytest.approx(1.0)
    assert result["precision@10"] == pytest.approx((2 / 10 + 1 / 10) / 2)


def test_evaluate_ranking_defaults_to_the_topk_kernel():
    gt = UserItemCSR.from_sets(EVAL_GROUND_TRUTH)
    exclude = UserItemCSR.from_sets(EVAL_EXCLUDE)
    ours = evaluate_ranking(USERS, ITEMS, gt, exclude, ks=(1, 2, 10))
    expected = evaluate_ranking(USERS, ITEMS, gt, exclude, ks=(1, 2, 10), topk_fn=reference_topk)
    assert ours == pytest.approx(expected)


def test_folding_score_counts_cross_group_items():
    topk = torch.tensor([[0, 1, -1], [2, 3, 4]])
    user_groups = torch.tensor([0, 1])
    item_groups = torch.tensor([0, 1, 1, 1, 0])
    # row 0: item 1 is foreign (1 of 2); row 1: item 4 is foreign (1 of 3) -> 2 / 5.
    assert folding_score(topk, user_groups, item_groups) == pytest.approx(0.4)
    assert math.isnan(folding_score(torch.full((1, 2), -1), torch.tensor([0]), item_groups))
