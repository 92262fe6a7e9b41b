"""report.md pieces on constructed tables: the differences table and the validation-test line."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import homework
from analysis.report_sections import _differences_section, _validation_test_section
from analysis.summary import validation_source


def _trials(spread: dict[str, float], means: dict[str, float], seeds: int = 4) -> pd.DataFrame:
    """Loss arms only, at the homework's baseline; test accuracy = mean + seeded noise."""
    rng = np.random.default_rng(1)
    rows = []
    for loss in ("bce", "ce"):
        for seed in range(seeds):
            acc = means[loss] + rng.normal(0, spread[loss])
            rows.append({"trial_id": f"t_{loss}_{seed}", "status": "completed", "seed": seed,
                         "loss": loss, "batch_size": 32, "depth": 3, "test_accuracy": acc,
                         "val_accuracy": acc + 1, "best_val_accuracy": acc + 2})
    return pd.DataFrame(rows)


def _record(trials: pd.DataFrame) -> dict:
    comparison = homework.select_comparison(trials, "loss")
    assert comparison is not None
    stats = homework.collect_arm_stats(comparison)
    (result,) = homework.adjust_comparisons([homework.compare_test_accuracy(stats)])
    return homework.comparison_record(comparison, stats, result)


def test_differences_table_carries_every_number_of_the_pair() -> None:
    record = _record(_trials({"bce": 1.0, "ce": 3.0}, {"bce": 80.0, "ce": 84.0}))
    lines = _differences_section([record])
    (pair,) = record["pairs"]
    row = next(line for line in lines if line.startswith("| Loss: BCE vs CE | BCE − CE |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2] == "4/4" and cells[3] == "paired" == record["test"]
    assert cells[4] == (f"−{abs(pair['difference']):.2f} [−{abs(pair['ci_low']):.2f}, "
                        f"{pair['ci_high']:+.2f}]").replace("-", "−")
    assert cells[5] == f"{pair['seed_correlation']:+.2f}".replace("-", "−")
    assert cells[6] == "–"  # no per-image predictions in this table
    assert cells[7] == f"{pair['hedges_g']:+.2f}".replace("-", "−")
    assert cells[8] == f"{pair['p_value']:.3f}" and cells[9] == f"{pair['p_holm']:.3f}"
    assert cells[10] == (f"{pair['detectable_80']:.1f} [{pair['detectable_80_low']:.1f}, "
                         f"{pair['detectable_80_high']:.1f}]")
    assert cells[11] == (f"{pair['seeds_needed']} [{pair['seeds_needed_low']}, "
                         f"{pair['seeds_needed_high']}]")
    assert any("Holm-adjusted together" in line for line in lines)
    assert any("Test: paired: the arms ran the same 4 seeds" in line for line in lines)


def test_an_arm_without_spread_is_compared() -> None:
    # Bug 4: an arm whose seeds all score the same was "cannot tell"; it is compared, on the
    # other arm's spread (paired here: the arms share their seeds).
    trials = _trials({"bce": 0.0, "ce": 3.0}, {"bce": 80.0, "ce": 84.0})
    record = _record(trials)
    lines = _differences_section([record])
    (pair,) = record["pairs"]
    assert record["test"] == "paired" and math.isnan(pair["seed_correlation"] or math.nan)
    assert any(line.startswith("| Loss: BCE vs CE | BCE − CE |") for line in lines)
    assert not any("cannot tell" in line for line in lines if line.startswith("- **Loss"))


def _best(val: float, test: float, ci: float) -> dict:
    return {"metrics": {"val_accuracy": val, "test_accuracy": test},
            "ci95": {"test_accuracy": ci} if math.isfinite(ci) else {}}


def test_validation_test_gap_larger_than_the_test_ci_is_flagged_with_reasons() -> None:
    trials = _trials({"bce": 1.0, "ce": 1.0}, {"bce": 80.0, "ce": 81.0})
    lines = _validation_test_section(_best(95.0, 82.0, 2.5), {"data": "/data/xray"}, trials)
    text = "\n".join(lines)
    assert ("Best configuration: validation accuracy 95.00 % vs test accuracy 82.00 ± 2.50 % "
            "(gap +13.00 points") in text
    assert "**Warning: validation overstates test accuracy by 13.00 points, more than its " \
           "noise (± 2.50: seeds ± 2.50, validation images ± 0.00, test images ± 0.00).**" \
        in text
    assert "**selection on validation**: this configuration was picked as the best of 2" in text
    assert "hold-out of the training images (`train/`)" in text


def test_validation_test_gap_within_the_ci_or_without_one() -> None:
    trials = _trials({"bce": 1.0, "ce": 1.0}, {"bce": 80.0, "ce": 81.0})
    within = "\n".join(_validation_test_section(_best(83.0, 82.0, 2.5), {}, trials))
    assert "within its noise (± 2.50" in within and "Warning" not in within
    single = "\n".join(_validation_test_section(_best(95.0, 82.0, math.nan), {}, trials))
    assert "One seed only" in single and "Warning" not in single


def test_validation_source_names_a_files_own_split(tmp_path: Path) -> None:
    images = np.zeros((4, 8, 8), dtype=np.uint8)
    labels = np.array([0, 1, 0, 1])
    own = tmp_path / "own.npz"
    np.savez(own, train_images=images, train_labels=labels, val_images=images,
             val_labels=labels, test_images=images, test_labels=labels)
    held = tmp_path / "held.npz"
    np.savez(held, train_images=images, train_labels=labels, test_images=images,
             test_labels=labels)
    text, is_own = validation_source(str(own))
    assert is_own and "the file's own validation split (`val_images` in own.npz)" in text
    text, is_own = validation_source(str(held))
    assert not is_own and "hold-out of the training images in held.npz" in text
    assert "synthetic" in validation_source("synthetic:size=8")[0]
    assert validation_source(None)[0].startswith("unknown")


@pytest.mark.parametrize("gap_sign", [1, -1])
def test_the_gap_direction_is_named(gap_sign: int) -> None:
    trials = _trials({"bce": 1.0, "ce": 1.0}, {"bce": 80.0, "ce": 81.0})
    text = "\n".join(_validation_test_section(_best(82.0 + gap_sign * 10, 82.0, 2.0),
                                              {"data": "synthetic"}, trials))
    assert ("overstates" if gap_sign > 0 else "understates") in text
    assert ("selection on validation" in text) == (gap_sign > 0)


def test_seeds_section_states_the_rule_and_where_each_configuration_stopped() -> None:
    from analysis.report_sections import _seeds_section

    rows = []
    scores = {"bce": [80.0, 80.4, 79.8], "ce": [70.0, 78.0, 62.0, 74.0, 66.0]}
    for loss, values in scores.items():
        for seed, value in enumerate(values):
            rows.append({"trial_id": f"{loss}{seed}", "status": "completed", "seed": seed,
                         "loss": loss, "batch_size": 32, "test_accuracy": value})
    rows.append({"trial_id": "ce5", "status": "diverged", "seed": 5, "loss": "ce",
                 "batch_size": 32, "test_accuracy": math.nan})
    meta = {"searched": ["loss"],
            "seeds_on_demand": {"target_ci": 1.0, "max_repeats": 6, "first_seeds": 3,
                                "metric": "test_accuracy"}}
    lines = _seeds_section(pd.DataFrame(rows), meta)
    text = "\n".join(lines)
    assert ("**Stopping rule:** every configuration started with 3 seeds; while the 95 % CI "
            "half-width of its test accuracy was above 1 points, it got one more seed, up to 6 "
            "seeds") in text
    bce = next(line for line in lines if line.startswith("| loss=bce |"))
    assert bce == ("| loss=bce | 3 | 0.76 | stopped: half-width 0.76 <= target 1 at 3 seeds |")
    ce = next(line for line in lines if line.startswith("| loss=ce |"))
    hw = mean_ci_half_width(scores["ce"])
    assert ce.startswith(f"| loss=ce | 5 (1 failed) | {hw:.2f} | stopped at the cap of 6 seeds")
    assert "1 of 2 configuration(s) reached the target, 1 stopped at the cap." in text
    assert _seeds_section(pd.DataFrame(rows), {}) == []


def test_seeds_section_says_when_the_study_ended_first() -> None:
    from analysis.report_sections import _seeds_section

    rows = [{"trial_id": f"t{s}", "status": "completed" if s < 3 else "running", "seed": s,
             "loss": "ce", "test_accuracy": v} for s, v in enumerate([70.0, 78.0, 62.0, 0.0])]
    meta = {"seeds_on_demand": {"target_ci": 1.0, "max_repeats": 10, "first_seeds": 3}}
    text = "\n".join(_seeds_section(pd.DataFrame(rows), meta))
    assert "not done: the study ended first (waiting for 1 running seed(s))" in text
    assert "1 not done when the study ended" in text


def mean_ci_half_width(values: list[float]) -> float:
    from analysis.stats import mean_ci

    return mean_ci(values).half_width
