"""A run's history: each epoch's metrics, per seed and as seed means, and the kept epoch."""

from __future__ import annotations

import math
from typing import Any

# Sensitivity and specificity (fractions) at the 0.5 threshold, as the decision rule reads it.
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_auroc",
                 "val_sensitivity", "val_specificity")
TEST_METRICS = ("test_loss", "test_accuracy", "test_auroc", "test_sensitivity", "test_specificity")
# The validation metrics of the kept weights (the best-validation-loss epoch), in the final report
# as `kept_<name>` beside `kept_epoch`.
KEPT_METRICS = ("val_loss", "val_accuracy", "val_auroc", "val_sensitivity", "val_specificity")


def kept_from_history(history: list[dict[str, Any]], seeds: int
                      ) -> tuple[list[int], list[dict[str, float]]]:
    """Each seed's kept epoch and its KEPT_METRICS, read off `history` as `fit` keeps them: the
    first epoch with the lowest finite validation loss."""
    epochs, values = [0] * seeds, [{} for _ in range(seeds)]
    best = [math.inf] * seeds
    for entry in history:
        metrics = entry["seed_metrics"]
        for i in range(seeds):
            loss = metrics["val_loss"][i]
            if math.isfinite(loss) and math.isfinite(metrics["train_loss"][i]) \
                    and loss < best[i]:
                best[i], epochs[i] = loss, int(entry["epoch"])
                values[i] = {k: metrics[k][i] for k in KEPT_METRICS if k in metrics}
    return epochs, values


def seed_mean(values: list[float]) -> float:
    """The mean over seeds (NaN when any seed's value is NaN: a diverged seed is not hidden)."""
    return sum(values) / len(values)


def epoch_report(seeds: list[int], per_seed: list[dict[str, float]], epoch: int
                 ) -> dict[str, Any]:
    """The metrics of one epoch: each metric's seed-mean under its own name, `epoch`,
    `seeds` and `seed_metrics` (each metric's per-seed values, in seed order)."""
    names = list(per_seed[0])
    seed_metrics = {name: [values[name] for values in per_seed] for name in names}
    report: dict[str, Any] = {name: seed_mean(seed_metrics[name]) for name in names}
    report.update(epoch=epoch, seeds=list(seeds), seed_metrics=seed_metrics)
    return report


def seed_rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The history in long form: one row per epoch and seed, `epoch`, `seed` and that seed's
    value of every metric (for a table such as `study train`'s history.csv)."""
    rows = []
    for entry in history:
        for index, seed in enumerate(entry["seeds"]):
            values = {name: v[index] for name, v in entry["seed_metrics"].items()}
            rows.append({"epoch": entry["epoch"], "seed": seed, **values})
    return rows
