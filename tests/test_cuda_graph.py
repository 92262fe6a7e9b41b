"""The captured training step: the eager step's numbers where CUDA is present; eager elsewhere."""

from __future__ import annotations

import functools
import logging
from dataclasses import replace

import pytest
import torch

from study.training.config import TrialConfig
from study.training.cuda_graph import CapturedSteps, capture_steps, set_lr
from study.training.data import load_data
from study.training.device import to_device
from study.training.loop import (
    epoch_steps,
    fit,
    last_batch_stop,
    new_state,
    train_one_epoch,
    train_step,
)
from study.training.losses import get_loss

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_set_lr_fills_a_tensor_in_place_and_replaces_a_number() -> None:
    weight = torch.nn.Parameter(torch.zeros(3))
    tensor_lr = torch.tensor(0.1)
    optimizer = torch.optim.Adam([weight], lr=tensor_lr)
    set_lr(optimizer, 0.25)
    assert optimizer.param_groups[0]["lr"] is tensor_lr and float(tensor_lr) == 0.25
    optimizer = torch.optim.Adam([weight], lr=0.1)
    set_lr(optimizer, 0.5)
    assert optimizer.param_groups[0]["lr"] == 0.5


def test_cpu_trains_eagerly_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    data = to_device(load_data("synthetic:size=8,n=20,n_test=10"), torch.device("cpu"))
    config = TrialConfig(batch_size=8, epochs=1)
    state = new_state(config, data)
    with caplog.at_level(logging.INFO, logger="study.training.cuda_graph"):
        assert epoch_steps(state, get_loss(config.loss), data.train, 8) is None
    assert [r.getMessage() for r in caplog.records] == [
        "training eagerly: CUDA graphs need a CUDA device, this trial has cpu"]


@pytest.mark.parametrize("batch_size", [8, 29])
def test_the_steps_bookkeeping_gives_the_eager_epoch(batch_size: int) -> None:
    """Uncaptured, `CapturedSteps` runs its body eagerly: the epoch's batches, taken by a
    device-side counter from a static order, and the eager partial batch after them, give
    train_one_epoch's own losses, accuracy and weights."""
    data = to_device(load_data("synthetic:size=8,n=18,n_test=10,seed=3"), torch.device("cpu"))
    config = TrialConfig(batch_size=batch_size, depth=2, width=16, dropout=0.0, repeats=2)
    loss = get_loss(config.loss)
    results = []
    for bookkept in (False, True):
        state = new_state(config, data)
        steps = None
        if bookkept:
            step = functools.partial(train_step, state.model, loss, state.optimizer, data.train)
            steps = CapturedSteps(step, len(data.train), 2, batch_size, data.train.labels.dtype,
                                  torch.device("cpu"))
        epochs = [train_one_epoch(state.model, loss, state.optimizer, data.train, batch_size,
                                  state.generators, steps) for _ in range(2)]
        results.append((epochs, state.model.state_dict()))
    (eager, eager_weights), (kept, kept_weights) = results
    for a, b in zip(eager, kept, strict=True):
        torch.testing.assert_close(b["loss"], a["loss"])
        torch.testing.assert_close(b["accuracy"], a["accuracy"])
    for key, value in eager_weights.items():
        torch.testing.assert_close(kept_weights[key], value)


@cuda
@pytest.mark.parametrize("loss", ["bce", "ce"])
def test_captured_steps_give_the_eager_losses(loss: str) -> None:
    # 29 training images at batch 8: three captured batches and an eager partial one of 5;
    # the cosine schedule changes the learning rate every epoch without a new capture.
    data = to_device(load_data("synthetic:size=16,n=18,n_test=10,seed=3"),
                     torch.device("cuda"))
    assert len(data.train) % 8 not in (0, 1), len(data.train)
    config = TrialConfig(loss=loss, batch_size=8, depth=2, width=32, dropout=0.0, epochs=4,
                         lr=1e-2, repeats=2, seed=5)
    eager = fit(config, data, cuda_graph=False)
    captured = fit(config, data)
    for a, b in zip(eager.history, captured.history, strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (key, a, b)
    for key, value in eager.model.state_dict().items():
        torch.testing.assert_close(captured.model.state_dict()[key], value, rtol=1e-4,
                                   atol=1e-5)


@cuda
def test_a_resumed_run_recaptures_and_continues_as_one_run() -> None:
    data = to_device(load_data("synthetic:size=16,n=18,n_test=10,seed=3"),
                     torch.device("cuda"))
    config = TrialConfig(batch_size=8, depth=2, width=32, dropout=0.0, epochs=4, lr=1e-2,
                         schedule="none")
    whole = fit(config, data)
    first = fit(replace(config, epochs=2), data)
    saved = first.state_dict()  # the optimizer's learning rate is a device tensor in it
    state = new_state(config, data)
    state.load_state_dict(saved)
    resumed = fit(config, data, state=state)
    assert [h["train_loss"] for h in resumed.history] == pytest.approx(
        [h["train_loss"] for h in whole.history], rel=1e-4, abs=1e-6)


@cuda
def test_a_step_that_cannot_be_captured_trains_eagerly_and_says_why(
        caplog: pytest.LogCaptureFixture) -> None:
    """A step that reads a value on the host runs eagerly but cannot be captured: CUDA refuses
    the copy while the stream captures. `capture_steps` says so in one warning, leaves the
    model and optimizer as they were, and the epoch then trained eagerly is the eager one."""
    device = torch.device("cuda")
    data = to_device(load_data("synthetic:size=16,n=18,n_test=10,seed=3"), device)
    config = TrialConfig(batch_size=8, depth=2, width=32, dropout=0.0, epochs=1, lr=1e-2, seed=5)
    loss = get_loss(config.loss)
    reference = new_state(config, data)
    expected = train_one_epoch(reference.model, loss, reference.optimizer, data.train, 8,
                               reference.generators)
    state = new_state(config, data)
    before = {key: value.clone() for key, value in state.model.state_dict().items()}

    def syncing_step(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        losses, probs, labels = train_step(state.model, loss, state.optimizer, data.train, idx)
        losses.sum().item()  # a host sync: fine eagerly, refused while the stream captures
        return losses, probs, labels

    n = len(data.train)
    order = torch.arange(n, device=device).expand(1, n)
    with caplog.at_level(logging.INFO, logger="study.training.cuda_graph"):
        steps = capture_steps(syncing_step, state.model, state.optimizer, order,
                              last_batch_stop(state.model, n, 8), 8, data.train.labels.dtype)
    assert steps is None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1, messages
    assert messages[0].startswith("training eagerly: capturing the step as a CUDA graph failed")
    for key, value in state.model.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)
    assert not isinstance(state.optimizer.param_groups[0]["lr"], torch.Tensor)
    got = train_one_epoch(state.model, loss, state.optimizer, data.train, 8, state.generators)
    torch.testing.assert_close(got["loss"], expected["loss"])
    torch.testing.assert_close(got["accuracy"], expected["accuracy"])
