"""The training loop: plain functions with explicit arguments, the same with or without Ray.

Data goes to the device once, as uint8; batches are taken by index and scaled to [0, 1] on the
fly (no DataLoader, no per-batch host-to-device copy, no per-step `.item()`); metrics reach the
host once per epoch. As in the homework lab, the weights kept are those of the epoch with the
best validation loss, and test metrics are computed for those weights; the final report names
that epoch and its validation metrics (`kept_*`), so validation and test describe one model.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from study.errors import StudyError
from study.training.augment import Augmenter
from study.training.config import TrialConfig
from study.training.cuda_graph import CapturedSteps, capture_steps, set_lr
from study.training.device import DeviceData, DeviceSplit, class_weights, pixel_stats, scale
from study.training.evaluation import evaluate, positive_probability, seed_classification_metrics
from study.training.history import (  # noqa: F401 (the loop's)
    EPOCH_METRICS,
    KEPT_METRICS,
    TEST_METRICS,
    epoch_report,
    kept_from_history,
    seed_mean,
    seed_rows,
)
from study.training.losses import Loss, get_loss
from study.training.model import (
    StackedBatchNorm1d,
    StackedCNN,
    StackedMLP,
    build_model,
    build_stacked_model,
    image_size_of,
    unstack_state,
)
from study.training.stacked import set_standardization

log = logging.getLogger(__name__)

# Fused Adam/SGD kernels exist for the CPU from PyTorch 2.4 on.
_FUSED_CPU = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 4)


def lr_at(config: TrialConfig, epoch: int) -> float:
    """Learning rate for 0-based `epoch`: constant, or cosine-annealed to 0 over the run.

    Stateless (the same as CosineAnnealingLR stepped per epoch), so a checkpoint needs only the
    epoch, and PBT can change `lr` between epochs.
    """
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))
    return config.lr


def make_optimizer(config: TrialConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam or SGD (momentum 0.9), with fused kernels (one kernel per step, not one per
    parameter tensor and operation) on CUDA and on the CPU where PyTorch has them (>= 2.4).

    On the CPU, at 256x256 and batch 32, the fused Adam step takes about a tenth of the epoch,
    the default (foreach) one two fifths (bench/RESULTS.md); the update is the same up to
    float rounding.
    """
    fused = True if _FUSED_CPU or next(model.parameters()).is_cuda else None
    if config.optimizer == "adam":
        return torch.optim.Adam(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused
        )
    return torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay,
        fused=fused,
    )


def batch_loss(loss: Loss, logits: torch.Tensor, labels: torch.Tensor,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """Return each seed's mean loss over its batch, shape (K,), for (K, B, out) logits and
    (K, B) labels: the loss to minimise is their sum, so each seed's gradient is its own. With
    class `weights` (2,), the weighted mean sum(w_y l) / sum(w_y), as PyTorch's `weight=`."""
    seeds, batch, out = logits.shape
    # Per example, then a mean per seed, for every K alike: the criterion's own mean reduction
    # rounds its gradient differently, and Adam turns such last-bit differences in the
    # (mathematically zero) gradients of biases before BatchNorm into whole steps.
    per_example = loss.per_example(logits.reshape(seeds * batch, out), labels.reshape(-1))
    if weights is None:
        return per_example.view(seeds, batch).mean(1)
    w = weights[labels]  # (K, B)
    return (per_example.view(seeds, batch) * w).sum(1) / w.sum(1)


def train_step(
    model: nn.Module,
    loss: Loss,
    optimizer: torch.optim.Optimizer,
    split: DeviceSplit,
    idx: torch.Tensor,
    augment: Augmenter | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step of every seed on its own batch: gather -> scale -> augment (if
    asked) -> forward -> loss (class-weighted if asked) -> backward -> step.

    `idx` (K, B) holds each seed's example indices. Returns the seeds' batch losses (K,), their
    positive-class probabilities (K, B) and labels (K, B), detached. No host sync and no branch
    on data, so the step can be captured as one CUDA graph with `idx` as its static input.
    """
    labels = split.labels[idx]
    images = scale(split.images[idx])
    logits = model(images if augment is None else augment(images, idx))
    losses = batch_loss(loss, logits, labels, weights)
    optimizer.zero_grad(set_to_none=True)
    losses.sum().backward()
    optimizer.step()
    return losses.detach(), positive_probability(loss, logits.detach()), labels


def epoch_order(generators: list[torch.Generator], n: int, device: torch.device) -> torch.Tensor:
    """Each seed's random order of `n` examples, (K, n), drawn from that seed's generator."""
    return torch.stack([torch.randperm(n, generator=g) for g in generators]).to(device)


def last_batch_stop(model: nn.Module, n: int, batch_size: int) -> int:
    """Examples used per epoch: BatchNorm cannot normalise a batch of one in training, so a
    trailing batch of one is skipped when the model has BatchNorm."""
    has_bn = any(isinstance(m, (nn.BatchNorm1d, StackedBatchNorm1d)) for m in model.modules())
    return n - 1 if has_bn and n % batch_size == 1 and n > 1 else n


def train_one_epoch(
    model: nn.Module,
    loss: Loss,
    optimizer: torch.optim.Optimizer,
    split: DeviceSplit,
    batch_size: int,
    generators: list[torch.Generator],
    steps: CapturedSteps | None = None,
    augment: Augmenter | None = None,
    weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Train one pass over `split`, each seed in its own seeded random order (and its own
    augmentation draws, after the order); return each seed's mean loss and accuracy, (K,)
    tensors. `steps` must have been captured with the same `augment` and `weights`.

    With `steps` (`epoch_steps`: the step captured as a CUDA graph), the epoch's full batches
    replay it; the partial last batch, if any, runs eagerly after them. Either way the same
    operations in the same order.
    """
    model.train()
    n = len(split)
    order = epoch_order(generators, n, split.images.device)
    if augment is not None:
        augment.draw(generators)
    stop = last_batch_stop(model, n, batch_size)
    total = torch.zeros(len(generators), device=split.images.device)
    probs, seen = [], []
    first = 0
    if steps is not None:
        first = steps.run(order, stop)
        total = steps.total.clone()
        probs.append(steps.probs[:, :first])
        seen.append(steps.labels[:, :first])
    for start in range(first, stop, batch_size):
        idx = order[:, start : min(start + batch_size, stop)]
        losses, prob, labels = train_step(model, loss, optimizer, split, idx, augment, weights)
        total += losses * idx.shape[1]
        probs.append(prob)
        seen.append(labels)
    metrics = seed_classification_metrics(torch.cat(probs, 1), torch.cat(seen, 1))
    return {"loss": total / stop, "accuracy": metrics["accuracy"]}


def epoch_steps(state: TrainState, loss: Loss, split: DeviceSplit,
                batch_size: int) -> CapturedSteps | None:
    """`state`'s training step on `split` captured as a CUDA graph for `train_one_epoch`;
    None (with one log line saying why) where it trains eagerly: on the CPU, or when the
    capture fails. The model and optimizer are left as they were."""
    n = len(split)
    # Warm-up and capture index rows in order: the seeds' generators must not advance.
    order = torch.arange(n, device=split.images.device).expand(len(state.generators), n)
    state.model.train()  # the captured step is a training step (dropout, batch statistics)
    step = functools.partial(train_step, state.model, loss, state.optimizer, split,
                             augment=state.augmenter, weights=state.class_weights)
    return capture_steps(step, state.model, state.optimizer, order,
                         last_batch_stop(state.model, n, batch_size), batch_size,
                         split.labels.dtype)


@dataclass
class TrainState:
    """Everything a run needs to continue: weights, optimizer, epoch, best weights, history.

    The model is stacked over the config's seeds; per-seed values are lists in seed order.
    """

    config: TrialConfig
    model: StackedMLP | StackedCNN
    optimizer: torch.optim.Optimizer
    generators: list[torch.Generator]  # one per seed: its batch order
    epoch: int = 0  # epochs completed
    best_val_loss: list[float] = field(default_factory=list)
    best_model: dict[str, torch.Tensor] = field(default_factory=dict)  # stacked, per seed
    history: list[dict[str, Any]] = field(default_factory=list)
    # Seeds whose training loss went non-finite: the epoch it happened (0: never) and their
    # test metrics, taken then, as the seed alone would have stopped there.
    diverged_at: list[int] = field(default_factory=list)
    diverged_test: list[dict[str, float]] = field(default_factory=list)
    # The kept weights' epoch (0: none yet) and validation metrics (KEPT_METRICS), per seed, and
    # their test and validation P(pneumonia) per image, (K, N), once tested (the final report's
    # predictions; validation's choose an operating threshold).
    best_epoch: list[int] = field(default_factory=list)
    best_val: list[dict[str, float]] = field(default_factory=list)
    test_prob: torch.Tensor | None = None
    val_prob: torch.Tensor | None = None
    image_size: int | None = None  # the images trained on (a CNN's weights fit any size)
    # Derived from the training split, rebuilt by `new_state` (not checkpointed as state):
    augmenter: Augmenter | None = None  # the config's augmentation, or None
    class_weights: torch.Tensor | None = None  # (2,) loss weights of `class_weight: balanced`

    def __post_init__(self) -> None:
        seeds = len(self.generators)
        self.best_val_loss = self.best_val_loss or [math.inf] * seeds
        self.diverged_at = self.diverged_at or [0] * seeds
        self.diverged_test = self.diverged_test or [{} for _ in range(seeds)]
        self.best_epoch = self.best_epoch or [0] * seeds
        self.best_val = self.best_val or [{} for _ in range(seeds)]

    def state_dict(self) -> dict[str, Any]:
        """Return a checkpoint that `torch.load(weights_only=True)` can read back."""
        return {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generators": [g.get_state() for g in self.generators],
            # Dropout masks come from torch's global generator: keep it, so a resumed run
            # continues exactly as an uninterrupted one would.
            "torch_rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "best_val_loss": list(self.best_val_loss),
            "best_model": self.best_model,
            "history": self.history,
            "diverged_at": list(self.diverged_at),
            "diverged_test": self.diverged_test,
            "best_epoch": list(self.best_epoch),
            "best_val": self.best_val,
            **({"test_prob": self.test_prob} if self.test_prob is not None else {}),
            **({"val_prob": self.val_prob} if self.val_prob is not None else {}),
            **({"image_size": self.image_size} if self.image_size is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint; the current config's lr and weight decay win (PBT)."""
        seeds = len(state["generators"])
        if seeds != len(self.generators):
            raise StudyError(f"checkpoint: it holds {seeds} seed(s), the config trains "
                             f"{len(self.generators)} (repeats={self.config.repeats})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            group["weight_decay"] = self.config.weight_decay
        for generator, saved in zip(self.generators, state["generators"], strict=True):
            generator.set_state(saved)
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"].cpu())
        self.epoch = int(state["epoch"])
        self.best_val_loss = [float(v) for v in state["best_val_loss"]]
        self.best_model = state["best_model"]
        self.history = list(state["history"])
        self.diverged_at = [int(v) for v in state["diverged_at"]]
        self.diverged_test = [dict(d) for d in state["diverged_test"]]
        if "best_epoch" in state:
            self.best_epoch = [int(v) for v in state["best_epoch"]]
            self.best_val = [dict(d) for d in state["best_val"]]
        else:  # a checkpoint from before `best_epoch`: its history says which epoch was kept
            self.best_epoch, self.best_val = kept_from_history(self.history, seeds)
        self.test_prob, self.val_prob = state.get("test_prob"), state.get("val_prob")


def new_state(config: TrialConfig, data: DeviceData) -> TrainState:
    """Seed, then build the stacked model of the config's seeds and its optimizer on the
    data's device. Seed s's initial weights are those a run of seed s alone would get; the
    training split gives the input standardisation and class weights, where asked."""
    device = data.train.images.device
    model = build_stacked_model(config, data.image_size).to(device)
    if config.normalizes:
        set_standardization(model, *pixel_stats(data.train))
    generators = [torch.Generator().manual_seed(seed) for seed in config.seeds]
    augmenter = (None if config.augment == "none" else
                 Augmenter(config.augment, config.hflip, len(generators), len(data.train),
                           device))
    weights = class_weights(data.train) if config.class_weight == "balanced" else None
    if weights is not None:
        log.info("class weights (normal, pneumonia): %s", weights.tolist())
    return TrainState(config, model, make_optimizer(config, model), generators,
                      image_size=data.image_size, augmenter=augmenter, class_weights=weights)


def seed_model(state: TrainState, index: int, best: bool = True) -> nn.Sequential:
    """Return seed `index`'s model as the plain `build_model` model (for saving and evaluating),
    with its best-validation-loss weights when `best` and it has any."""
    weights = state.best_model if best and state.best_model else state.model.state_dict()
    image_size = state.image_size or image_size_of(weights)
    assert image_size is not None  # a trained model has layer weights
    model = build_model(state.config, image_size)
    model.load_state_dict(unstack_state(weights, index))
    return model.to(next(iter(weights.values())).device)


def evaluate_test(state: TrainState, data: DeviceData, seeds: list[int] | None = None
                  ) -> list[dict[str, float]]:
    """Evaluate each seed's best-validation-loss weights on the test split; one dict per seed.
    The probabilities per image of the seeds at indices `seeds` (None: all) go into
    `state.test_prob`, and the same weights' on validation into `state.val_prob`."""
    model = copy.deepcopy(state.model)
    if state.best_model:
        model.load_state_dict(state.best_model)
    probs: list[torch.Tensor] = []
    raw = evaluate(model, get_loss(state.config.loss), data.test, probs)
    rows = list(range(len(state.generators))) if seeds is None else seeds
    evaluate(model, get_loss(state.config.loss), data.val, probs)
    if state.test_prob is None:
        state.test_prob = torch.full_like(probs[0], math.nan)
    if state.val_prob is None:
        state.val_prob = torch.full_like(probs[1], math.nan)
    state.test_prob[rows], state.val_prob[rows] = probs[0][rows], probs[1][rows]
    values = torch.stack(list(raw.values())).tolist()  # one host sync
    names = [f"test_{k}" for k in raw]
    return [dict(zip(names, column, strict=True)) for column in zip(*values, strict=True)]


def kept_report(state: TrainState, index: int) -> dict[str, float]:
    """Seed `index`'s kept weights: their epoch and validation metrics, as `kept_*`; and the
    class weights of its loss, where balanced (`class_weight_normal`, `_pneumonia`)."""
    values = state.best_val[index]
    report = {"kept_epoch": float(state.best_epoch[index]),
              **{f"kept_{k}": values.get(k, math.nan) for k in KEPT_METRICS}}
    if state.class_weights is not None:  # which loss weights `class_weight: balanced` used
        normal, pneumonia = state.class_weights.tolist()
        report.update(class_weight_normal=normal, class_weight_pneumonia=pneumonia)
    return report


EpochCallback = Callable[[dict[str, Any], TrainState], None]


def fit(
    config: TrialConfig,
    data: DeviceData,
    on_epoch: EpochCallback | None = None,
    state: TrainState | None = None,
    cuda_graph: bool = True,
) -> TrainState:
    """Train `config`'s seeds, stacked, on `data` from `state` (or from scratch) to
    `config.epochs`.

    After each epoch, `on_epoch(metrics, state)` receives `epoch_report`'s metrics: the
    seed-mean of each of EPOCH_METRICS, plus `seeds` and `seed_metrics`. The last epoch's
    metrics also carry the test metrics of each seed's best weights, and those weights' epoch
    and validation metrics (`kept_epoch`, `kept_val_accuracy`, ...). A seed whose training
    loss goes non-finite has diverged: from then on its metrics are NaN and its test metrics
    are those taken when it diverged; `diverged` (the fraction of seeds diverged, per seed 1.0
    or 0.0) appears from that epoch on, and the run ends when every seed has diverged.
    """
    state = state or new_state(config, data)
    loss = get_loss(config.loss)
    seeds = config.seeds
    # On CUDA the step is captured once here and replayed every epoch (`cuda_graph=False`:
    # eager, as on the CPU); the learning rate is set in place, so no epoch recaptures.
    steps = (epoch_steps(state, loss, data.train, config.batch_size)
             if cuda_graph and state.epoch < config.epochs else None)
    while state.epoch < config.epochs:
        set_lr(state.optimizer, lr_at(config, state.epoch))
        train = train_one_epoch(
            state.model, loss, state.optimizer, data.train, config.batch_size, state.generators,
            steps, state.augmenter, state.class_weights,
        )
        val = evaluate(state.model, loss, data.val)
        values = torch.stack(
            [train["loss"], train["accuracy"], val["loss"], val["accuracy"], val["auroc"],
             val["sensitivity"], val["specificity"]]
        ).tolist()  # the one host sync of the epoch
        state.epoch += 1
        per_seed = [dict(zip(EPOCH_METRICS, column, strict=True))
                    for column in zip(*values, strict=True)]
        newly = [i for i, m in enumerate(per_seed)
                 if not state.diverged_at[i] and not math.isfinite(m["train_loss"])]
        improved = [i for i, m in enumerate(per_seed)
                    if not state.diverged_at[i] and i not in newly
                    and m["val_loss"] < state.best_val_loss[i]]
        _keep_best(state, improved, [per_seed[i]["val_loss"] for i in improved])
        for i in improved:
            state.best_epoch[i] = state.epoch
            state.best_val[i] = {k: per_seed[i][k] for k in KEPT_METRICS}
        if newly:
            tests = evaluate_test(state, data, newly)
            for i in newly:
                state.diverged_at[i] = state.epoch
                state.diverged_test[i] = tests[i]
                log.warning("seed %d diverged at epoch %d: train_loss=%s", seeds[i],
                            state.epoch, per_seed[i]["train_loss"])
        for i, at in enumerate(state.diverged_at):
            if at and at < state.epoch:  # stopped training earlier: no values of this epoch
                per_seed[i] = dict.fromkeys(EPOCH_METRICS, math.nan)
        finished = all(state.diverged_at) or state.epoch == config.epochs
        if finished:
            alive = [i for i, at in enumerate(state.diverged_at) if not at]
            tests = evaluate_test(state, data, alive) if alive else None
            for i, values_i in enumerate(per_seed):
                values_i.update(state.diverged_test[i] if state.diverged_at[i] else tests[i])
                values_i.update(kept_report(state, i))
        if any(state.diverged_at):
            for i, values_i in enumerate(per_seed):
                values_i["diverged"] = 1.0 if state.diverged_at[i] else 0.0
        metrics = epoch_report(seeds, per_seed, state.epoch)
        state.history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics, state)
        if finished:
            break
    return state


def _keep_best(state: TrainState, improved: list[int], val_losses: list[float]) -> None:
    """Copy the weights of the `improved` seeds (a new best validation loss) into best_model."""
    if not improved:
        return
    current = state.model.state_dict()
    if not state.best_model:
        state.best_model = {k: v.detach().clone() for k, v in current.items()}
    else:
        rows = torch.tensor(improved, device=next(iter(current.values())).device)
        for key, value in current.items():  # every tensor has the leading seed dimension
            state.best_model[key].index_copy_(0, rows, value.detach().index_select(0, rows))
    for i, val_loss in zip(improved, val_losses, strict=True):
        state.best_val_loss[i] = val_loss
