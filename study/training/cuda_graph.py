"""The training step captured once as a CUDA graph and replayed for every full batch.

On a GPU a small MLP's step is launch-bound: milliseconds of Python and kernel launches around
microseconds of arithmetic. `CapturedSteps` records one whole step (gather the batch's rows by
index, scale, forward, loss, backward, optimizer step, and the epoch's loss and score
accumulation) as one CUDA graph, and an epoch replays it once per full batch: one launch per
step, no Python in between. The batch's indices come from a static, device-resident copy of the
epoch's order and a device-side batch counter, so a replay needs no host-to-device copy.

The learning rate lives in a device tensor (`set_lr` fills it in place), so the cosine schedule
and PBT change it without a new capture. The last, partial batch of an epoch (n % batch_size
examples) has another shape than the captured one: it runs eagerly, on the same parameters and
optimizer state, after the replays. Where capture is impossible (no CUDA; a capture that fails)
`capture_steps` returns None, logs one line saying why, and training runs eagerly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# step(idx) -> (losses (K,), probabilities (K, B), labels (K, B)): one optimizer step of every
# seed on its batch `idx` (K, B), with no host sync (loop.train_step, bound to a model).
Step = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
WARMUP_STEPS = 2  # eager steps before capture: allocate optimizer state, pick kernels


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate: in place where it is a tensor (a captured graph reads
    it from that memory), by assignment where it is a number."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


class CapturedSteps:
    """One captured training step for `seeds` x `batch_size`, replayed for an epoch's full
    batches; the epoch's loss sum, scores and labels accumulate in static device buffers.
    Before `capture` the same step runs eagerly (on any device), which is how its bookkeeping
    is tested where there is no GPU."""

    def __init__(self, step: Step, n: int, seeds: int, batch_size: int, label_dtype: torch.dtype,
                 device: torch.device) -> None:
        self.batch_size = batch_size
        self.n = n
        self._step = step
        self.order = torch.zeros(seeds, n, dtype=torch.long, device=device)
        self.batch = torch.zeros((), dtype=torch.long, device=device)  # the next replay's batch
        self.total = torch.zeros(seeds, device=device)  # sum over batches of loss x batch size
        self.probs = torch.zeros(seeds, n, device=device)
        self.labels = torch.zeros(seeds, n, dtype=label_dtype, device=device)
        self._offsets = torch.arange(batch_size, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        # One step: the body run eagerly until `capture`, then the graph's replay.
        self.replay: Callable[[], None] = self._body

    def _body(self) -> None:
        slot = self.batch * self.batch_size + self._offsets  # this batch's positions, (B,)
        losses, probs, labels = self._step(self.order.index_select(1, slot))
        self.total.add_(losses * self.batch_size)
        self.probs.index_copy_(1, slot, probs)
        self.labels.index_copy_(1, slot, labels)
        self.batch.add_(1)

    def _reset(self, order: torch.Tensor) -> None:
        self.order.copy_(order)
        self.batch.zero_()
        self.total.zero_()

    def capture(self, order: torch.Tensor) -> None:
        """Warm up on a side stream, then record `_body` into the graph (recording runs no
        kernels). The caller restores the model and optimizer the warm-up steps changed."""
        self._reset(order)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self.batch.zero_()  # always the first batch: inside the smallest epoch
                self._body()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._body()
        self.graph, self.replay = graph, graph.replay

    def run(self, order: torch.Tensor, stop: int) -> int:
        """Train the full batches of an epoch whose order is `order` (K, n) and which uses its
        first `stop` examples; return how many examples that was (the caller trains the rest,
        a partial batch, eagerly)."""
        self._reset(order)
        full = stop // self.batch_size
        for _ in range(full):
            self.replay()
        return full * self.batch_size


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Copies of everything a training step changes, to undo the warm-up steps."""
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": {id(p): {k: v.clone() if isinstance(v, torch.Tensor) else v
                              for k, v in optimizer.state[p].items()}
                      for group in optimizer.param_groups for p in group["params"]
                      if p in optimizer.state},
        "cuda_rng": torch.cuda.get_rng_state(),
    }


@torch.no_grad()
def _restore(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Put back `_snapshot`'s values in place (the captured graph keeps these addresses).
    Optimizer state the warm-up created is zeroed: Adam's and SGD's first step from zeros is
    their first step from no state (momentum 0.9 with no dampening: buffer 0 * 0.9 + grad)."""
    for key, value in model.state_dict().items():
        value.copy_(saved["model"][key])
    for group in optimizer.param_groups:
        for p in group["params"]:
            before = saved["optimizer"].get(id(p), {})
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor):
                    if key in before:
                        value.copy_(before[key])
                    else:
                        value.zero_()
    torch.cuda.set_rng_state(saved["cuda_rng"])


def capture_steps(step: Step, model: nn.Module, optimizer: torch.optim.Optimizer,
                  order: torch.Tensor, stop: int, batch_size: int,
                  label_dtype: torch.dtype) -> CapturedSteps | None:
    """Capture `step` for an epoch like `order` (K, n) and return it, with the model and
    optimizer as they were; None (one log line saying why) where training stays eager."""
    device = order.device
    if device.type != "cuda":
        log.info("training eagerly: CUDA graphs need a CUDA device, this trial has %s", device)
        return None
    if stop < batch_size:
        log.info("training eagerly: no full batch of %d in %d examples to capture",
                 batch_size, stop)
        return None
    settings = [(group["lr"], group.get("capturable")) for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        # A captured step reads the learning rate from device memory, so it can change.
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
        if "capturable" in group:
            group["capturable"] = True
    saved = _snapshot(model, optimizer)
    captured = CapturedSteps(step, order.shape[1], order.shape[0], batch_size, label_dtype,
                             device)
    try:
        captured.capture(order)
    except Exception as exc:  # the eager step is always there to fall back on
        torch.cuda.synchronize(device)
        _restore(model, optimizer, saved)
        for group, (lr, capturable) in zip(optimizer.param_groups, settings, strict=True):
            group["lr"] = lr  # the eager step as it was: an optimizer may want a number
            if capturable is not None:
                group["capturable"] = capturable
        log.warning("training eagerly: capturing the step as a CUDA graph failed (%s: %s)",
                    type(exc).__name__, exc)
        return None
    torch.cuda.synchronize(device)
    _restore(model, optimizer, saved)
    return captured
