"""The MLP: layer structure, per-layer widths, batch norm on or off, head width per loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from study.training.losses import get_loss
from study.training.model import (
    build_mlp,
    build_stacked_mlp,
    is_stacked_state,
    layer_widths,
    unstack_state,
)


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("depth", [0, 1, 3, 5])
def test_layer_counts(depth: int) -> None:
    model = build_mlp(64, 2, depth, 32, 0.5)
    assert isinstance(model[0], nn.Flatten)
    assert _count(model, nn.Linear) == depth + 1
    assert _count(model, nn.BatchNorm1d) == depth
    assert _count(model, nn.ReLU) == depth
    assert _count(model, nn.Dropout) == depth
    assert len(model) == 1 + 4 * depth + 1


def test_block_order() -> None:
    model = build_mlp(16, 1, 2, 8, 0.25)
    kinds = [type(m) for m in model]
    block = [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout]
    assert kinds == [nn.Flatten, *block, *block, nn.Linear]
    assert all(m.p == 0.25 for m in model if isinstance(m, nn.Dropout))


def test_per_layer_widths() -> None:
    widths = [256, 128, 64, 64, 64]
    model = build_mlp(32 * 32, 2, 5, widths, 0.5)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [m.in_features for m in linears] == [1024, *widths]
    assert [m.out_features for m in linears] == [*widths, 2]
    assert [m.num_features for m in model if isinstance(m, nn.BatchNorm1d)] == widths


def test_layer_widths() -> None:
    assert layer_widths(3, 64) == [64, 64, 64]
    assert layer_widths(0, 64) == []
    assert layer_widths(2, (8, 4)) == [8, 4]
    with pytest.raises(AssertionError):
        layer_widths(3, [8, 4])


def test_no_batchnorm() -> None:
    model = build_mlp(64, 2, 3, 16, 0.1, batchnorm=False)
    assert _count(model, nn.BatchNorm1d) == 0
    assert _count(model, nn.Linear) == 4 and _count(model, nn.ReLU) == 3
    assert len(model) == 1 + 3 * 3 + 1


@pytest.mark.parametrize(("name", "width"), [("bce", 1), ("ce", 2)])
def test_output_shape(name: str, width: int) -> None:
    model = build_mlp(16 * 16, get_loss(name).out_features, 3, 64, 0.5)
    model.eval()
    out = model(torch.rand(5, 16, 16))
    assert out.shape == (5, width)
    model.train()
    assert model(torch.rand(4, 256)).shape == (4, width)


@pytest.mark.parametrize("batchnorm", [True, False])
def test_stacked_mlp_is_each_seeds_plain_model(batchnorm: bool) -> None:
    seeds = [4, 5, 6]
    stacked = build_stacked_mlp(seeds, 64, 2, 2, (16, 8), 0.0, batchnorm)
    assert stacked.seeds == 3 and isinstance(stacked[0], nn.Identity)
    x = torch.rand(5, 64)
    stacked.eval()
    out = stacked(x)  # one batch shared by every seed
    assert out.shape == (3, 5, 2)
    state = stacked.state_dict()
    assert all(v.shape[0] == 3 for v in state.values())
    for k, seed in enumerate(seeds):
        torch.manual_seed(seed)
        plain = build_mlp(64, 2, 2, (16, 8), 0.0, batchnorm)
        # the same initial weights as the seed alone, and unstack_state gives them back
        for key, value in plain.state_dict().items():
            assert torch.equal(unstack_state(state, k)[key], value), key
        plain.eval()
        torch.testing.assert_close(out[k], plain(x))
    assert is_stacked_state(state) and not is_stacked_state(plain.state_dict())


def test_stacked_mlp_trains_each_seed_on_its_own_batch() -> None:
    stacked = build_stacked_mlp([0, 1], 16, 1, 1, 8, 0.0)
    plains = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        plains.append(build_mlp(16, 1, 1, 8, 0.0))
    x = torch.rand(2, 6, 16)  # a different batch per seed
    out = stacked(x)
    out.sum().backward()
    for k, plain in enumerate(plains):
        y = plain(x[k])
        torch.testing.assert_close(out[k], y)
        y.sum().backward()
        for (name, p), (_, q) in zip(stacked.named_parameters(), plain.named_parameters(),
                                     strict=True):
            torch.testing.assert_close(p.grad[k], q.grad, msg=name)
    # BatchNorm running statistics are per seed, from that seed's batch only
    for k, plain in enumerate(plains):
        torch.testing.assert_close(stacked[2].running_mean[k], plain[2].running_mean)
