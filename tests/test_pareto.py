"""analysis.pareto: the front against a brute-force definition, feasibility and the choice rule,
the leaderboard's flags, the report section and the figure (small tables, no Ray)."""

from __future__ import annotations

import io
import math
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from analysis.pareto import (
    NONE_FEASIBLE,
    RULE,
    collect_front,
    mark_leaderboard,
    objectives_of,
    pareto_mask,
    pareto_section,
    plot_pareto,
    selection_record,
)
from analysis.summary import best_configuration
from study.errors import StudyError
from study.search.space import parse_constraints

MAXMAX = ["max", "max"]


def brute_front(values: list[tuple[float, ...]], modes: list[str]) -> set[int]:
    """The definition, literally: i is on the front unless some j is at least as good in every
    objective and strictly better in one."""
    def better(a: float, b: float, mode: str) -> bool:
        return a > b if mode == "max" else a < b

    def at_least(a: float, b: float, mode: str) -> bool:
        return a >= b if mode == "max" else a <= b

    front = set()
    for i, vi in enumerate(values):
        if not any(all(at_least(a, b, m) for a, b, m in zip(vj, vi, modes, strict=True))
                   and any(better(a, b, m) for a, b, m in zip(vj, vi, modes, strict=True))
                   for j, vj in enumerate(values) if j != i):
            front.add(i)
    return front


@pytest.mark.parametrize("modes", [["max", "max"], ["max", "min"], ["min", "min", "max"]])
def test_pareto_mask_matches_the_definition(modes: list[str]) -> None:
    rng = np.random.default_rng(len(modes) + (modes[1] == "min"))
    for trial in range(40):
        n = int(rng.integers(1, 25))
        # few distinct values, so ties and exact duplicates are common
        values = rng.integers(0, 4 if trial % 2 else 100, size=(n, len(modes))).astype(float)
        mask = pareto_mask(values, modes)
        assert set(np.flatnonzero(mask)) == brute_front([tuple(v) for v in values], modes)


def test_pareto_mask_small_cases() -> None:
    values = np.array([[0.9, 0.8], [0.8, 0.9], [0.7, 0.7], [0.9, 0.8]])
    assert pareto_mask(values, MAXMAX).tolist() == [True, True, False, True]  # duplicates stay
    assert pareto_mask(values, ["min", "min"]).tolist() == [False, False, True, False]


def runs_table(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    """Runs as collect_runs gives them: (trial_id, seed, lr, status, auroc, sensitivity)."""
    return pd.DataFrame(rows, columns=["trial_id", "seed", "lr", "status", "val_auroc",
                                       "val_sensitivity"]).assign(
        duplicate=False, val_accuracy=70.0, trial_dir=lambda d: d["trial_id"])


RUNS = runs_table([
    ("a", 0, 0.1, "completed", 0.95, 0.70), ("a", 1, 0.1, "completed", 0.97, 0.80),  # infeasible
    ("b", 0, 0.2, "completed", 0.88, 0.92), ("b", 1, 0.2, "completed", 0.90, 0.94),  # front
    ("c", 0, 0.3, "completed", 0.80, 0.99),  # front: more sensitive, lower AUROC
    ("d", 0, 0.4, "completed", 0.79, 0.95),  # dominated by c
    ("e", 0, 0.5, "diverged", math.nan, math.nan),  # never judged
])
SENSITIVE = parse_constraints({"val_sensitivity": ">= 0.9"}, "s.yaml")


def test_the_front_feasibility_and_the_chosen_configuration() -> None:
    front = collect_front(RUNS, ["val_auroc", "val_sensitivity"], MAXMAX, SENSITIVE)
    table = front.table.set_index("lr")
    assert table.loc[0.1, "val_auroc"] == pytest.approx(0.96)  # the seed-mean
    assert table.loc[0.2, "val_sensitivity"] == pytest.approx(0.93)
    assert table["n_seeds"].to_dict() == {0.1: 2, 0.2: 2, 0.3: 1, 0.4: 1}
    assert table["feasible"].to_dict() == {0.1: False, 0.2: True, 0.3: True, 0.4: True}
    assert table.loc[0.1, "violation"] == pytest.approx(0.15)
    # a dominates b on AUROC but is infeasible: the front is that of the feasible ones
    assert table["pareto"].to_dict() == {0.1: False, 0.2: True, 0.3: True, 0.4: False}
    assert front.any_feasible and front.table.loc[front.chosen, "lr"] == 0.2
    assert front.key == (0.2,)
    best = best_configuration(RUNS, "val_auroc", "max", chosen=front.key)
    assert best["trial_ids"] == ["b"] and best["config"]["lr"] == 0.2
    # without the rule, the first objective alone would pick the infeasible a
    assert best_configuration(RUNS, "val_auroc", "max")["trial_ids"] == ["a"]
    record = selection_record(front)
    assert record == {"objectives": {"val_auroc": "max", "val_sensitivity": "max"},
                      "constraints": ["val_sensitivity >= 0.9"], "rule": RULE,
                      "feasible": True, "pareto_size": 2}


def test_none_feasible_chooses_the_least_violating() -> None:
    strict = parse_constraints({"val_sensitivity": ">= 0.999", "val_auroc": "> 0.5"}, "s.yaml")
    front = collect_front(RUNS, ["val_auroc", "val_sensitivity"], MAXMAX, strict)
    assert not front.any_feasible and not front.table["feasible"].any()
    assert front.table.loc[front.chosen, "lr"] == 0.3  # 0.99: the smallest shortfall
    # with none feasible, the front is that of all configurations
    assert front.table.set_index("lr")["pareto"].to_dict() == {
        0.1: True, 0.2: True, 0.3: True, 0.4: False}
    assert selection_record(front)["rule"] == NONE_FEASIBLE
    lines = "\n".join(pareto_section(front, {}))
    assert "none feasible, so the front of all" in lines and "total shortfall 0.009" in lines


def test_one_objective_with_a_constraint_and_minimised_objectives() -> None:
    front = collect_front(RUNS, ["val_auroc"], ["max"], SENSITIVE)
    assert front.table.loc[front.chosen, "lr"] == 0.2  # the best AUROC among the feasible
    assert front.table["pareto"].sum() == 1
    front = collect_front(RUNS, ["val_auroc", "val_sensitivity"], ["min", "max"])
    assert front.table.set_index("lr")["pareto"].to_dict() == {
        0.1: False, 0.2: False, 0.3: True, 0.4: True}
    assert front.table.loc[front.chosen, "lr"] == 0.4  # the lowest AUROC on the front


def test_the_leaderboard_is_marked_per_run() -> None:
    front = collect_front(RUNS, ["val_auroc", "val_sensitivity"], MAXMAX, SENSITIVE)
    board = RUNS.drop(columns=["val_sensitivity"])
    marked = mark_leaderboard(board, RUNS, front).set_index(["trial_id", "seed"])
    assert marked.loc[("b", 1), "val_sensitivity"] == 0.94  # the objective it lacked
    assert marked["pareto"].to_dict() == {
        ("a", 0): False, ("a", 1): False, ("b", 0): True, ("b", 1): True, ("c", 0): True,
        ("d", 0): False, ("e", 0): False}
    feasible = marked["feasible"]
    assert [bool(v) for v in feasible.iloc[:6]] == [False, False, True, True, True, True]
    assert pd.isna(feasible.loc[("e", 0)])  # diverged: not judged


def test_the_report_section_and_the_figure() -> None:
    front = collect_front(RUNS, ["val_auroc", "val_sensitivity"], MAXMAX, SENSITIVE)
    lines = pareto_section(front, {"pareto_front.png": "the front"})
    text = "\n".join(lines)
    assert "Objectives: val_auroc (max), val_sensitivity (max); constraints: " \
        "val_sensitivity >= 0.9" in text
    assert "judged the first objective, val_auroc, only" in text
    assert "The front (2 of 4 configurations):" in text
    rows = [line for line in lines if line.startswith("| 0.")]
    assert rows == ["| 0.2 | 0.89 | 0.93 | yes | 2 | b | **chosen** |",
                    "| 0.3 | 0.8 | 0.99 | yes | 1 | c |  |"]
    assert f"Chosen by the rule: {RULE}." in text
    assert "This configuration (b): val_auroc 0.89, val_sensitivity 0.93; it meets " in text
    assert "![the front](figures/pareto_front.png)" in text
    assert pareto_section(None, {}) == []
    fig, ax = plt.subplots()
    plot_pareto(front, ax=ax)
    colours = [tuple(c.get_facecolor()[0][:3]) for c in ax.collections]
    offsets = [len(c.get_offsets()) for c in ax.collections]
    assert offsets == [1, 1, 1]  # infeasible (grey), feasible off the front, the chosen star
    assert colours[0] == pytest.approx((0.7, 0.7, 0.7))
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "Pareto front"]
    assert list(line.get_xdata()) == pytest.approx([0.8, 0.89])
    assert [ln.get_ydata()[0] for ln in ax.get_lines() if ln.get_linestyle() == "--"] == [0.9]
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    assert buffer.getvalue()[:4] == b"\x89PNG"


def test_objectives_are_read_from_study_json() -> None:
    assert objectives_of({"space": {"metric": "val_auroc"}}, "study.json") is None
    assert objectives_of({}, "study.json") is None
    metrics, modes, constraints = objectives_of(
        {"space": {"metric": ["val_auroc", "val_loss"],
                   "constraints": {"val_sensitivity": "> 0.5"}}}, "study.json")
    assert (metrics, modes, [str(c) for c in constraints]) == (
        ["val_auroc", "val_loss"], ["max", "min"], ["val_sensitivity > 0.5"])
    with pytest.raises(StudyError, match="study.json: space: metric must be one of .*'test_"):
        objectives_of({"space": {"metric": ["val_auroc", "test_auroc"]}}, "study.json")


def test_brute_force_helper_can_fail() -> None:
    # the reference itself: a point dominated in one objective and tied in the other is off
    assert brute_front([(1.0, 1.0), (1.0, 0.5)], MAXMAX) == {0}
    assert brute_front([(1.0, 0.5), (0.5, 1.0)], MAXMAX) == {0, 1}
