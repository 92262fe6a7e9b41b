"""The CNN family: its layers, stacked seeds as grouped convolutions (each seed as it would be
alone), augmentation, class weights, input standardisation and the model file round trip."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from study.errors import StudyError
from study.training.augment import Augmenter
from study.training.checkpoint import load_model, save_model
from study.training.cnn import Conv2d, build_cnn
from study.training.config import TrialConfig, check_cnn_fits, max_cnn_depth, read_config_file
from study.training.cuda_graph import CapturedSteps
from study.training.data import load_data
from study.training.device import DeviceData, class_weights, pixel_stats, to_device
from study.training.export import export_trial_model
from study.training.loop import (
    batch_loss,
    evaluate,
    fit,
    new_state,
    seed_model,
    train_one_epoch,
    train_step,
)
from study.training.losses import get_loss
from study.training.model import build_model, build_stacked_model, unstack_state
from study.training.stacked import Standardize

SMALL = "synthetic:size=16,n=100,n_test=40"  # 160 train, 40 validation, 80 test
CPU = torch.device("cpu")
CNN = {"model": "cnn", "depth": 2, "width": 8, "batch_size": 16}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small() -> DeviceData:
    return to_device(load_data(SMALL), CPU)


def _plain_metrics(entry: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in entry.items() if k not in ("epoch", "seeds", "seed_metrics")}


def test_cnn_layers_and_any_image_size() -> None:
    model = build_cnn(2, 3, [8, 16, 4], kernel_size=5, pool="avg", dropout=0.25)
    kinds = [type(m) for m in model]
    block = [Conv2d, nn.BatchNorm2d, nn.ReLU, nn.AvgPool2d]
    assert kinds == [Standardize, *block * 3, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout,
                     nn.Linear]
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 8), (8, 16), (16, 4)]
    assert all(c.kernel_size == (5, 5) and c.padding == (2, 2) for c in convs)
    assert all(c.bias is None for c in convs)  # BatchNorm follows: a bias would only be noise
    assert model[-1].in_features == 4 and model[-2].p == 0.25
    model.eval()
    for side in (8, 28, 33):  # global average pooling: one head for every size
        assert model(torch.rand(3, side * side)).shape == (3, 2)
    plain = build_cnn(1, 1, [4], batchnorm=False)
    assert plain[1].bias is not None and not any(isinstance(m, nn.BatchNorm2d) for m in plain)


def test_max_pooling_runs_before_relu_and_changes_nothing() -> None:
    # ReLU is monotone, so pooling first gives the very same maps and gradients (ReLU then
    # runs on a quarter of the pixels); average pooling keeps ReLU first.
    model = build_cnn(2, 2, [8, 8], pool="max")
    assert [type(m) for m in model][1:5] == [Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.ReLU]
    torch.manual_seed(0)
    x = torch.randn(6, 8, 12, 12).contiguous(memory_format=torch.channels_last)
    x[0, 0, :2, :2] = -1.0  # a window of ties below zero
    x[1, 1, :2, :2] = 0.0  # and one at zero
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    first = F.relu(F.max_pool2d(a, 2))
    second = F.max_pool2d(F.relu(b), 2)
    assert torch.equal(first, second)
    g = torch.randn_like(first)
    first.backward(g)
    second.backward(g)
    assert torch.equal(a.grad, b.grad)
    assert a.grad[0, 0, :2, :2].abs().sum() == 0 and a.grad.abs().sum() > 0


def test_a_stacked_cnn_is_evaluated_in_batches_its_first_maps_fit() -> None:
    from study.training.evaluation import EVAL_BATCH, EVAL_PIXELS, eval_rows, predict

    data = to_device(load_data("synthetic:size=28,n=200,n_test=40"), CPU)
    cnn16 = {**CNN, "width": 16}
    one = build_stacked_model(TrialConfig(**cnn16, repeats=1), 28)
    three = build_stacked_model(TrialConfig(**cnn16, repeats=3), 28)
    mlp = build_stacked_model(TrialConfig(repeats=3), 28)
    # 16 channels a seed at 28x28: its maps are 16 x 784 floats an image.
    assert eval_rows(one, data.val) == EVAL_PIXELS // (16 * 784) == 334
    assert eval_rows(three, data.val) == EVAL_PIXELS // (3 * 16 * 784) == 111
    assert eval_rows(mlp, data.val) == EVAL_BATCH  # a flat input: the pixel budget alone
    assert eval_rows(build_model(TrialConfig(**cnn16), 28), data.val) == 334
    # In batches of 111 the predictions are those of one batch of all 320 training images.
    split = data.train
    assert len(split) == 320
    loss = get_loss("ce")
    three.eval()
    _, prob = predict(three, loss, split)
    with torch.no_grad():
        logits = three(split.images.float() / 255)
    whole = torch.softmax(logits, -1)[..., 1]
    torch.testing.assert_close(prob, whole, rtol=1e-5, atol=1e-6)


FAULTS_SCRIPT = """
import resource, torch
from study.training.config import TrialConfig
from study.training.device import keep_freed_host_memory
from study.training.model import build_stacked_model
kept = keep_freed_host_memory()
torch.set_num_threads(1)
model = build_stacked_model(TrialConfig(model="cnn", depth=3, width=16, repeats=3), 28)
optimizer = torch.optim.Adam(model.parameters())
x = torch.rand(3, 32, 784)
def step():
    optimizer.zero_grad()
    model(x).sum().backward()
    optimizer.step()
for _ in range(15):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux (glibc)")
def test_training_steps_reuse_the_host_memory_they_free() -> None:
    # Three stacked seeds' 28x28 maps at batch 32 are megabytes a step: glibc maps them
    # afresh each step and the kernel faults every page in (thousands of faults a step),
    # unless the process keeps what it frees.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT], check=True,
                         capture_output=True, text=True).stdout.split()
    # Seen: 0 (now and then ~1,200, the heap growing once); without it 30,000-60,000.
    assert out[0] == "True" and int(out[1]) < 3000, out


def test_depth_is_bounded_by_the_halvings_an_image_allows() -> None:
    assert [max_cnn_depth(s) for s in (1, 2, 7, 8, 16, 28, 32, 64)] == [0, 1, 2, 3, 4, 4, 5, 6]
    check_cnn_fits(4, 28)
    with pytest.raises(StudyError, match=r"depth: a CNN of depth 5 halves 28x28 images 5 "
                                         r"times, to nothing; at most depth 4"):
        build_model(TrialConfig(model="cnn", depth=5), 28)
    assert build_model(TrialConfig(model="cnn", depth=4, width=2), 28)(
        torch.rand(2, 784)).shape == (2, 2)


@pytest.mark.parametrize("batchnorm", [True, False])
def test_stacked_cnn_is_each_seeds_plain_model(batchnorm: bool) -> None:
    config = TrialConfig(model="cnn", depth=2, width=(8, 4), dropout=0.0, batchnorm=batchnorm,
                         loss="bce", seed=4, repeats=3)
    stacked = build_stacked_model(config, 16)
    initial = {k: v.clone() for k, v in stacked.state_dict().items()}
    assert all(v.shape[0] == 3 for v in initial.values())
    x = torch.rand(3, 5, 256)  # a different batch per seed
    out = stacked(x)
    assert out.shape == (3, 5, 1)
    out.sum().backward()
    for k, seed in enumerate(config.seeds):
        torch.manual_seed(seed)
        plain = build_model(TrialConfig.from_dict({**config.to_dict(), "seed": seed,
                                                   "repeats": 1}), 16)
        for key, value in plain.state_dict().items():  # the seed's own initial weights
            assert torch.equal(unstack_state(initial, k)[key], value), key
        y = plain(x[k])
        torch.testing.assert_close(out[k], y)
        y.sum().backward()
        for (name, p), (_, q) in zip(stacked.named_parameters(), plain.named_parameters(),
                                     strict=True):
            torch.testing.assert_close(p.grad[k], q.grad, msg=name)
        for key, value in plain.state_dict().items():  # BatchNorm statistics: its batch only
            torch.testing.assert_close(stacked.state_dict()[key][k], value, msg=key)
    stacked.eval()
    assert stacked(torch.rand(4, 256)).shape == (3, 4, 1)  # one batch shared by every seed


@pytest.mark.parametrize("extra", [{}, {"augment": "strong", "hflip": True,
                                        "class_weight": "balanced", "loss": "bce"}],
                         ids=["plain", "augmented-weighted"])
def test_stacked_cnn_seeds_train_as_separate_runs(small: DeviceData,
                                                  extra: dict[str, Any]) -> None:
    # Dropout 0: every seed of the stacked run must match the run of that seed alone (initial
    # weights, batch order, augmentation draws, BatchNorm statistics, Adam state, best weights
    # and every metric, test metrics included).
    common = {**CNN, "dropout": 0.0, "lr": 3e-3, "epochs": 3, **extra}
    stacked = fit(TrialConfig(seed=3, repeats=3, **common), small)
    for k, seed in enumerate((3, 4, 5)):
        alone = fit(TrialConfig(seed=seed, **common), small)
        for ours, theirs in zip(stacked.history, alone.history, strict=True):
            mine = {name: values[k] for name, values in ours["seed_metrics"].items()}
            assert mine == pytest.approx(_plain_metrics(theirs), rel=1e-5, abs=1e-6)
        for key, value in alone.best_model.items():
            # A grouped convolution sums in another order than one seed's convolution: the
            # weights agree to float rounding, grown over 30 Adam steps (seen: 2e-6 at most).
            torch.testing.assert_close(stacked.best_model[key][k], value[0], rtol=1e-4,
                                       atol=1e-5, msg=key)
        test = evaluate(seed_model(stacked, k), get_loss(common.get("loss", "ce")), small.test)
        assert stacked.history[-1]["seed_metrics"]["test_accuracy"][k] == pytest.approx(
            test["accuracy"].item())


def test_augmentation_draws_per_seed_and_flips_only_when_asked() -> None:
    generators = [torch.Generator().manual_seed(s) for s in (0, 1)]
    light = Augmenter("light", hflip=False, seeds=2, n=50, device=CPU)
    images = torch.rand(2, 4, 64)
    idx = torch.arange(4).expand(2, 4)
    torch.testing.assert_close(light(images, idx), images)  # the identity before a draw
    light.draw(generators)
    warped = light(images, idx)
    assert warped.shape == images.shape and not torch.allclose(warped, images)
    assert (light.theta[..., 0] > 0).all()  # cos(angle) * scale: never mirrored
    assert light.theta[..., 2].abs().max() <= 2 * 0.06 + 1e-6  # shifts within 6 % a side
    alone = Augmenter("light", hflip=False, seeds=1, n=50, device=CPU)
    alone.draw([torch.Generator().manual_seed(1)])
    torch.testing.assert_close(alone.theta[0], light.theta[1])  # seed 1's draws are its own
    flips = Augmenter("strong", hflip=True, seeds=1, n=200, device=CPU)
    flips.draw([torch.Generator().manual_seed(0)])
    mirrored = (flips.theta[0, :, 0] < 0).float().mean().item()
    assert 0.35 < mirrored < 0.65


def test_augmentation_never_touches_validation_or_test(small: DeviceData) -> None:
    state = fit(TrialConfig(**CNN, augment="strong", epochs=2, lr=3e-3, repeats=2), small)
    loss = get_loss("ce")
    last = state.history[-1]["seed_metrics"]
    again = evaluate(state.model, loss, small.val)  # the last epoch's weights, unwarped images
    assert again["loss"].tolist() == pytest.approx(last["val_loss"], rel=1e-6)
    tested = evaluate(seed_model(state, 1), loss, small.test)
    assert tested["accuracy"].item() == pytest.approx(last["test_accuracy"][1])


def test_balanced_class_weights_and_the_weighted_loss() -> None:
    data = to_device(load_data("synthetic:size=8,n=30,n_test=10"), CPU)
    labels = torch.tensor([0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1])  # 1 normal to 5 pneumonia
    skewed = type(data.train)(data.train.images[:12], labels)
    weights = class_weights(skewed)
    assert weights.tolist() == pytest.approx([12 / (2 * 2), 12 / (2 * 10)])
    assert class_weights(data.train).tolist() == [1.0, 1.0]  # balanced already
    logits = torch.randn(2, 7, 2)
    y = torch.tensor([[0, 1, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 0, 1]])
    ours = batch_loss(get_loss("ce"), logits, y, torch.tensor([3.0, 0.5]))
    for k in range(2):
        theirs = F.cross_entropy(logits[k], y[k], weight=torch.tensor([3.0, 0.5]))
        assert ours[k].item() == pytest.approx(theirs.item(), rel=1e-6)
    one_class = type(data.train)(data.train.images, torch.zeros_like(data.train.labels))
    with pytest.raises(StudyError, match=r"no example of class 1 \(counts \[\d+, 0\]\)"):
        class_weights(one_class)
    # The run says which weights it used, in its final report.
    state = fit(TrialConfig(depth=1, width=4, epochs=1, class_weight="balanced", repeats=2),
                to_device(load_data("synthetic:size=8,n=30,n_test=10"), CPU))
    final = state.history[-1]["seed_metrics"]
    assert final["class_weight_normal"] == final["class_weight_pneumonia"] == [1.0, 1.0]
    assert "class_weight_normal" not in fit(TrialConfig(depth=1, width=4, epochs=1),
                                            data).history[-1]


def test_inputs_are_standardised_by_the_training_split(small: DeviceData) -> None:
    pixels = small.train.images.numpy().astype(np.float64) / 255
    mean, std = pixel_stats(small.train, rows=7)
    assert (mean, std) == pytest.approx((pixels.mean(), pixels.std()), rel=1e-9)
    cnn = new_state(TrialConfig(**CNN, repeats=2), small).model
    assert cnn[0].mean.tolist() == pytest.approx([mean] * 2)
    assert cnn[0].std.tolist() == pytest.approx([std] * 2)
    mlp = new_state(TrialConfig(), small).model  # the homework's MLP: unchanged by default
    assert isinstance(mlp[0], nn.Identity) and "0.mean" not in mlp.state_dict()
    scaled = new_state(TrialConfig(normalize=True, repeats=2), small).model
    assert scaled[0].mean.tolist() == pytest.approx([mean] * 2)
    off = new_state(TrialConfig(**CNN, normalize=False), small).model
    assert off[0].mean.tolist() == [0.0] and off[0].std.tolist() == [1.0]


@pytest.mark.parametrize("family", [CNN, {"model": "mlp", "depth": 1, "width": 8,
                                          "normalize": True}], ids=["cnn", "mlp"])
def test_model_file_and_best_config_round_trip(family: dict[str, Any], small: DeviceData,
                                               tmp_path: Path) -> None:
    config = TrialConfig(**family, epochs=2, lr=3e-3, repeats=2, seed=1, augment="light",
                         class_weight="balanced")
    state = fit(config, small)
    checkpoint = tmp_path / "checkpoint_000001" / "state.pt"
    checkpoint.parent.mkdir()
    torch.save(state.state_dict(), checkpoint)
    model_file = export_trial_model(tmp_path, tmp_path / "model.pt", seed=2)
    assert model_file is not None
    loaded_config, model, image_size = load_model(model_file)
    assert image_size == 16 and loaded_config.seed == 2 and loaded_config.repeats == 1
    assert loaded_config.model == family["model"] and loaded_config.augment == "light"
    loss = get_loss(config.loss)
    ours = evaluate(model, loss, small.test)  # the standardisation travels with the weights
    assert ours["accuracy"].item() == pytest.approx(
        state.history[-1]["seed_metrics"]["test_accuracy"][1])
    assert ours["loss"].item() == pytest.approx(
        state.history[-1]["seed_metrics"]["test_loss"][1], rel=1e-5)
    save_model(tmp_path / "again.pt", model.state_dict(), loaded_config, image_size)
    assert load_model(tmp_path / "again.pt")[0] == loaded_config
    best = tmp_path / "best_config.yaml"
    best.write_text("config:\n" + "".join(
        f"  {k}: {v if v is not None else 'null'}\n" for k, v in config.to_dict().items()))
    assert TrialConfig.from_dict(read_config_file(best)) == config


def test_the_steps_bookkeeping_gives_the_eager_epoch_for_an_augmented_cnn() -> None:
    """Uncaptured, `CapturedSteps` runs its body eagerly (the body a CUDA graph captures):
    with the augmentation and class weights bound to the step, it gives train_one_epoch's own
    losses and weights."""
    data = to_device(load_data("synthetic:size=8,n=18,n_test=10,seed=3"), CPU)
    config = TrialConfig(model="cnn", batch_size=8, depth=2, width=4, dropout=0.0, repeats=2,
                         augment="strong", class_weight="balanced")
    loss = get_loss(config.loss)
    results = []
    for bookkept in (False, True):
        state = new_state(config, data)
        steps = None
        if bookkept:
            step = functools.partial(train_step, state.model, loss, state.optimizer, data.train,
                                     augment=state.augmenter, weights=state.class_weights)
            steps = CapturedSteps(step, len(data.train), 2, 8, data.train.labels.dtype, CPU)
        epochs = [train_one_epoch(state.model, loss, state.optimizer, data.train, 8,
                                  state.generators, steps, state.augmenter, state.class_weights)
                  for _ in range(2)]
        results.append((epochs, state.model.state_dict()))
    (eager, eager_sd), (kept, kept_sd) = results
    for a, b in zip(eager, kept, strict=True):
        torch.testing.assert_close(a["loss"], b["loss"])
        assert math.isfinite(a["loss"].sum().item())
    for key, value in eager_sd.items():
        torch.testing.assert_close(kept_sd[key], value, msg=key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_captured_cnn_step_gives_the_eager_losses() -> None:
    """On a GPU the stacked CNN's step, augmentation and class weights included, is captured
    as a CUDA graph and replayed; it trains as the eager step does (written for a GPU, run
    where there is one)."""
    data = to_device(load_data("synthetic:size=16,n=18,n_test=10,seed=3"),
                     torch.device("cuda"))
    config = TrialConfig(**{**CNN, "batch_size": 8}, dropout=0.0, epochs=3, lr=1e-2,
                         repeats=2, seed=5, augment="strong", class_weight="balanced")
    eager = fit(config, data, cuda_graph=False)
    captured = fit(config, data)
    for a, b in zip(eager.history, captured.history, strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (key, a, b)
    for key, value in eager.model.state_dict().items():
        torch.testing.assert_close(captured.model.state_dict()[key], value, rtol=1e-4,
                                   atol=1e-5)
