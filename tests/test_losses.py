"""The one loss module: head widths, targets, criteria and positive-class probabilities."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from study.errors import StudyError
from study.training.losses import LOSSES, get_loss


@pytest.mark.parametrize(("name", "width"), [("bce", 1), ("ce", 2)])
def test_head_width(name: str, width: int) -> None:
    loss = get_loss(name)
    assert loss.name == name and loss.out_features == width


def test_losses_listed() -> None:
    assert LOSSES == ("bce", "ce")


@pytest.mark.parametrize("name", ["mse", "BCE", ""])
def test_unknown_loss_refused(name: str) -> None:
    with pytest.raises(StudyError, match=f"loss: must be one of bce, ce, got {name!r}"):
        get_loss(name)


def test_bce_targets() -> None:
    labels = torch.tensor([0, 1, 1], dtype=torch.int64)
    targets = get_loss("bce").targets(labels)
    assert targets.dtype == torch.float32 and targets.shape == (3, 1)
    assert targets[:, 0].tolist() == [0.0, 1.0, 1.0]


def test_ce_targets() -> None:
    labels = torch.tensor([1, 0, 1], dtype=torch.uint8)
    targets = get_loss("ce").targets(labels)
    assert targets.dtype == torch.long and targets.shape == (3,)
    assert targets.tolist() == [1, 0, 1]


@pytest.mark.parametrize(("name", "kind"), [("bce", nn.BCEWithLogitsLoss),
                                            ("ce", nn.CrossEntropyLoss)])
def test_criterion_kind_and_reduction(name: str, kind: type) -> None:
    loss = get_loss(name)
    assert isinstance(loss.criterion(), kind)
    assert loss.criterion().reduction == "mean"
    assert loss.criterion(reduction="sum").reduction == "sum"


@pytest.mark.parametrize("name", ["bce", "ce"])
def test_criterion_accepts_head_and_targets(name: str) -> None:
    loss = get_loss(name)
    torch.manual_seed(0)
    logits = torch.randn(5, loss.out_features)
    labels = torch.tensor([0, 1, 1, 0, 1])
    value = loss.criterion()(logits, loss.targets(labels))
    assert value.shape == () and torch.isfinite(value) and value > 0


def test_bce_loss_value() -> None:
    loss = get_loss("bce")
    logits = torch.tensor([[0.0], [2.0]])
    value = loss.criterion()(logits, loss.targets(torch.tensor([1, 0])))
    expected = (torch.log(torch.tensor(2.0)) + torch.log1p(torch.exp(torch.tensor(2.0)))) / 2
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["bce", "ce"])
def test_positive_probability_shape(name: str) -> None:
    loss = get_loss(name)
    prob = loss.positive_probability(torch.randn(7, loss.out_features))
    assert prob.shape == (7,)
    assert ((prob >= 0) & (prob <= 1)).all()


def test_positive_probability_values() -> None:
    bce = get_loss("bce").positive_probability(torch.tensor([[0.0], [2.0], [-1.0]]))
    assert bce.tolist() == pytest.approx([0.5, 1 / (1 + torch.e**-2), 1 / (1 + torch.e)])
    # CE: softmax over the two logits; only their difference matters.
    ce = get_loss("ce").positive_probability(torch.tensor([[0.0, 0.0], [1.0, 3.0], [5.0, 4.0]]))
    assert ce.tolist() == pytest.approx([0.5, 1 / (1 + torch.e**-2), 1 / (1 + torch.e)])
