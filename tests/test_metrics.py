"""Every metric through one function; the homework's scoring bug cannot come back."""

from __future__ import annotations

import itertools

import pytest
import torch

from study.training.losses import get_loss
from study.training.metrics import THRESHOLD, auroc, classification_metrics


def _pairwise_auroc(prob: list[float], labels: list[int]) -> float:
    """P(score of a positive > score of a negative), ties counting one half."""
    pos = [p for p, y in zip(prob, labels, strict=True) if y == 1]
    neg = [p for p, y in zip(prob, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_by_hand_with_ties() -> None:
    prob = torch.tensor([0.1, 0.4, 0.4, 0.8])
    labels = torch.tensor([0, 0, 1, 1])
    # Positive 0.4 beats 0.1 and ties 0.4 (1.5); positive 0.8 beats both (2): 3.5 / 4.
    assert auroc(prob, labels).item() == pytest.approx(0.875)


@pytest.mark.parametrize(
    ("prob", "labels", "expected"),
    [
        ([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 1.0),
        ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0),
        ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),
        ([0.3, 0.7, 0.3, 0.7, 0.5], [1, 0, 0, 1, 1], 0.5),
    ],
)
def test_auroc_cases(prob: list[float], labels: list[int], expected: float) -> None:
    assert auroc(torch.tensor(prob), torch.tensor(labels)).item() == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_pairwise_count(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    # Scores on a coarse grid so that ties are frequent.
    prob = torch.randint(0, 6, (40,), generator=gen).to(torch.float64) / 5
    labels = torch.randint(0, 2, (40,), generator=gen)
    expected = _pairwise_auroc(prob.tolist(), labels.tolist())
    assert auroc(prob, labels).item() == pytest.approx(expected, abs=1e-12)


def test_auroc_one_class_is_nan() -> None:
    assert torch.isnan(auroc(torch.tensor([0.2, 0.7]), torch.tensor([1, 1])))


def test_classification_metrics_by_hand() -> None:
    prob = torch.tensor([0.9, 0.6, 0.4, 0.2, 0.7, 0.1])
    labels = torch.tensor([1, 1, 1, 0, 0, 0])
    m = classification_metrics(prob, labels)
    # Predictions (>= 0.5): 1 1 0 0 1 0 -> correct: 1 1 0 1 0 1.
    assert m["accuracy"].item() == pytest.approx(400 / 6)
    assert m["sensitivity"].item() == pytest.approx(2 / 3)
    assert m["specificity"].item() == pytest.approx(2 / 3)
    assert m["auroc"].item() == pytest.approx(_pairwise_auroc(prob.tolist(), labels.tolist()))
    assert all(v.dim() == 0 for v in m.values())


def test_threshold_is_inclusive() -> None:
    m = classification_metrics(torch.tensor([THRESHOLD, THRESHOLD]), torch.tensor([1, 0]))
    assert m["sensitivity"].item() == 1.0 and m["specificity"].item() == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_accuracy_never_exceeds_100(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    prob = torch.rand(64, generator=gen)
    labels = torch.randint(0, 2, (64,), generator=gen)
    m = classification_metrics(prob, labels)
    assert 0.0 <= m["accuracy"].item() <= 100.0
    perfect = classification_metrics(labels.to(torch.float32), labels)
    assert perfect["accuracy"].item() == 100.0


# The homework's CE head on fixed outputs: per row, the homework rule counts one comparison per
# logit (so up to 2 per example); the correct rule predicts 1 when logit 1 >= logit 0.
HOMEWORK_LOGITS = torch.tensor(
    [[-2.0, 3.0], [-1.0, 2.0], [3.0, -2.0], [1.0, 2.0], [2.0, 1.0], [-3.0, -1.0]]
)
HOMEWORK_LABELS = torch.tensor([[1], [1], [0], [1], [1], [0]])


def test_regression_homework_scoring_bug() -> None:
    out, y = HOMEWORK_LOGITS, HOMEWORK_LABELS
    batch = len(y)
    homework = ((torch.sigmoid(out) > 0.5) == y).sum().item() / batch * 100
    # Broadcasting (B, 2) against (B, 1) counts 1+1+1+2+2+2 = 9 "hits" for 6 examples.
    assert homework == pytest.approx(150.0)
    assert homework > 100

    prob = get_loss("ce").positive_probability(out)
    m = classification_metrics(prob, y.squeeze(1))
    # Predictions: 1 1 0 1 0 1 against labels 1 1 0 1 1 0: rows 4 and 5 are wrong.
    assert m["accuracy"].item() == pytest.approx(400 / 6)
    assert m["sensitivity"].item() == pytest.approx(3 / 4)
    assert m["specificity"].item() == pytest.approx(1 / 2)


def test_two_column_scores_are_refused() -> None:
    with pytest.raises(AssertionError):
        classification_metrics(torch.sigmoid(HOMEWORK_LOGITS), HOMEWORK_LABELS.squeeze(1))
    with pytest.raises(AssertionError):
        classification_metrics(torch.rand(6), HOMEWORK_LABELS)
