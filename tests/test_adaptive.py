"""Seeds on demand: the stopping rule, the searcher driven by hand, and the searcher in a real
Ray Tune run (a tiny trainable whose score is a fixed function of its configuration and seed)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
from ray import tune
from ray.tune.search import Searcher

from analysis.stats import mean_ci
from study.errors import StudyError
from study.search.adaptive import SeedsUntilNarrow, grid_configs
from study.search.seed_rule import Rule, half_width

# Per arm, the score of seed s: "steady" barely moves, "noisy" moves a lot, "flat" not at all.
SCORES = {"steady": [80.0, 80.4, 79.8, 80.2, 80.1, 79.9, 80.3, 80.0, 79.7, 80.2],
          "noisy": [70.0, 78.0, 62.0, 74.0, 66.0, 71.0, 69.0, 77.0, 63.0, 72.0],
          "flat": [50.0] * 10}
CONFIGS = [{"arm": name} for name in SCORES]


def test_half_width_is_the_reports_ci() -> None:
    for values in ([1.0, 2.0, 4.0], SCORES["noisy"], SCORES["steady"][:2]):
        assert half_width(values) == pytest.approx(mean_ci(values).half_width)
    assert math.isnan(half_width([1.0]))


def test_rule_decisions_by_hand() -> None:
    rule = Rule(target_ci=1.0, max_repeats=5)
    assert rule.decide([], 0, 0) == (True, "starting: 0 of 3 first seeds")
    assert rule.decide([80.0], 1, 2)[0] is False  # started 3: wait for the running two
    wants, why = rule.decide([80.0, 80.4, 79.8], 3, 0)  # half-width 0.76
    assert not wants and why == "stopped: half-width 0.76 <= target 1 at 3 seeds"
    wants, why = rule.decide([70.0, 78.0, 62.0], 3, 0)
    assert wants and why == "adding a seed: half-width 19.87 > target 1"
    wants, why = rule.decide([70.0, 78.0, 62.0, 74.0], 5, 0)  # one seed failed
    assert not wants and why.startswith("stopped at the cap of 5 seeds (half-width ")
    assert why.endswith("> target 1; 1 failed)")
    assert rule.decide([50.0, 50.0, 50.0], 3, 0)[1].startswith("stopped: every one of its 3")
    with pytest.raises(StudyError, match="--target-ci must be a number > 0, got 0"):
        Rule(target_ci=0.0)
    with pytest.raises(StudyError, match="--max-repeats must be >= 2"):
        Rule(target_ci=1.0, max_repeats=1)


def _finish(searcher: SeedsUntilNarrow, trial_id: str, config: dict[str, Any]) -> None:
    score = SCORES[config["arm"]][config["seed"]]
    searcher.on_trial_complete(trial_id, {"test_accuracy": score, "seed": config["seed"]})


def test_searcher_driven_by_hand_stops_each_arm_by_the_rule(tmp_path: Path) -> None:
    searcher = SeedsUntilNarrow(CONFIGS, Rule(target_ci=1.0, max_repeats=6))
    # first round: three seeds per arm, handed out before any finishes
    first = {f"t{i}": searcher.suggest(f"t{i}") for i in range(9)}
    assert sorted((c["arm"], c["seed"]) for c in first.values()) == sorted(
        (arm, s) for arm in SCORES for s in range(3))
    assert searcher.suggest("t9") is None  # every arm is waiting for its running seeds
    # the state survives a save and a restore in another searcher (JSON, no pickle)
    path = tmp_path / "state.json"
    searcher.save(str(path))
    assert json.loads(path.read_text())["rule"]["target_ci"] == 1.0
    searcher = SeedsUntilNarrow(CONFIGS, Rule(target_ci=5.0))
    searcher.restore(str(path))
    assert searcher.rule == Rule(target_ci=1.0, max_repeats=6)
    for trial_id, config in first.items():
        _finish(searcher, trial_id, config)
    handed = []
    for i in range(100):
        config = searcher.suggest(f"n{i}")
        if config == Searcher.FINISHED:
            break
        assert isinstance(config, dict)
        handed.append((config["arm"], config["seed"]))
        _finish(searcher, f"n{i}", config)
    else:
        pytest.fail("the searcher never finished")
    # steady and flat were done after three seeds; noisy got one seed at a time up to the cap
    assert handed == [("noisy", 3), ("noisy", 4), ("noisy", 5)]
    rows = {r["config"]["arm"]: r for r in searcher.standings()}
    assert rows["steady"]["n"] == 3 and rows["steady"]["half_width"] <= 1.0
    assert rows["flat"]["why"].startswith("stopped: every one of its 3 seeds scored the same")
    assert rows["noisy"]["n"] == 6 and rows["noisy"]["half_width"] > 1.0
    assert rows["noisy"]["why"].startswith("stopped at the cap of 6 seeds")
    assert all(r["done"] for r in rows.values())


def test_failed_and_diverged_seeds_count_towards_the_cap() -> None:
    searcher = SeedsUntilNarrow([{"arm": "noisy"}], Rule(target_ci=1.0, max_repeats=4))
    outcomes = iter([{"error": True}, {"diverged": True}, {"result": 70.0}, {"result": 78.0},
                     {"result": 62.0}])
    seen = 0
    while (config := searcher.suggest(f"t{seen}")) != Searcher.FINISHED:
        assert isinstance(config, dict)
        outcome = next(outcomes)
        result = {"test_accuracy": outcome.get("result", 75.0), "diverged": outcome.get(
            "diverged", False)}
        searcher.on_trial_complete(f"t{seen}", result, error=outcome.get("error", False))
        seen += 1
    (row,) = searcher.standings()
    assert seen == 4 and row["tries"] == 4 and row["n"] == 2
    assert row["why"].endswith("; 2 failed)")


def test_stacked_trials_carry_the_first_seeds_together_and_are_read_per_seed() -> None:
    searcher = SeedsUntilNarrow([{"arm": "noisy", "repeats": 5}], Rule(target_ci=1.0),
                                first_seed=10, stacked=True)
    first = searcher.suggest("t0")
    assert first == {"arm": "noisy", "seed": 10, "repeats": 3}
    assert searcher.suggest("t1") is None
    # as Ray hands it to searchers: flattened; the seed at index 1 diverged
    searcher.on_trial_complete("t0", {"test_accuracy": 70.0, "diverged": 1 / 3,
                                      "seed_metrics/test_accuracy": [70.0, 55.0, 62.0],
                                      "seed_metrics/diverged": [0.0, 1.0, 0.0]})
    assert searcher.arms[0].values == {10: 70.0, 12: 62.0} and searcher.arms[0].failed == [11]
    assert searcher.suggest("t2") == {"arm": "noisy", "seed": 13, "repeats": 1}
    searcher.on_trial_complete("t2", {"seed_metrics": {"test_accuracy": [74.0],
                                                       "diverged": [0.0]}})
    assert searcher.arms[0].values[13] == 74.0


def test_restore_refuses_a_state_that_is_not_ours(tmp_path: Path) -> None:
    path = tmp_path / "searcher-state-x.json"
    path.write_text(json.dumps({"version": 1, "arms": "nonsense"}))
    searcher = SeedsUntilNarrow(CONFIGS, Rule(target_ci=1.0))
    with pytest.raises(StudyError, match="not a seeds-on-demand state"):
        searcher.restore(str(path))
    path.write_bytes(b"\x80\x04pickle")
    with pytest.raises(StudyError, match="cannot be read as JSON"):
        searcher.restore(str(path))


def test_grid_configs_resolve_grid_search_and_sample_from() -> None:
    space = {"loss": tune.grid_search(["bce", "ce"]), "depth": tune.grid_search([3, 5]),
             "width": tune.sample_from(lambda config: 16 * config["depth"]), "lr": 1e-3}
    configs = grid_configs(space)
    assert sorted((c["loss"], c["depth"], c["width"]) for c in configs) == [
        ("bce", 3, 48), ("bce", 5, 80), ("ce", 3, 48), ("ce", 5, 80)]
    assert all(c["lr"] == 1e-3 for c in configs)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    # Ray's workers import this module to run `_score`
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                         os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


def _score(config: dict[str, Any]) -> None:
    score = SCORES[config["arm"]][config["seed"]]
    tune.report({"test_accuracy": score, "val_accuracy": score, "epoch": 1})


@pytest.mark.slow
def test_searcher_in_a_ray_tune_run_stops_by_its_rule(ray_cluster: None, tmp_path: Path) -> None:
    rule = Rule(target_ci=2.0, max_repeats=7)
    searcher = SeedsUntilNarrow(CONFIGS, rule, metric="val_accuracy", mode="max")
    tuner = tune.Tuner(
        _score,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="auto", verbose=0),
    )
    results = tuner.fit()
    seen: dict[str, dict[int, float]] = {}
    for result in results:
        config = result.config
        seen.setdefault(config["arm"], {})[config["seed"]] = result.metrics["test_accuracy"]
    # each arm got consecutive seeds from 0, no seed twice
    for seeds in seen.values():
        assert sorted(seeds) == list(range(len(seeds)))
    # and stopped by the rule: half-width <= target, or the cap reached with it still wider
    for arm, values in seen.items():
        hw = half_width(list(values.values()))
        assert hw <= rule.target_ci or len(values) == rule.max_repeats, (arm, hw)
        assert len(values) == 3 or half_width(list(values.values())[:-1]) > rule.target_ci
    assert len(seen["steady"]) == 3 and len(seen["flat"]) == 3
    assert len(seen["noisy"]) == 7 and half_width(SCORES["noisy"][:7]) > 2.0
    # the saved searcher state is JSON and knows the same
    state_file = max((tmp_path / "auto").glob("searcher-state-*.json"))
    state = json.loads(state_file.read_text())
    assert {a["config"]["arm"]: len(a["values"]) for a in state["arms"]} == {
        arm: len(v) for arm, v in seen.items()}
    assert np.isclose(state["rule"]["target_ci"], 2.0)


def test_parse_repeats_and_the_rule_record() -> None:
    from study.search.seed_rule import parse_repeats

    assert parse_repeats("3") == 3 and parse_repeats("auto") == "auto"
    assert parse_repeats(" AUTO ") == "auto"
    with pytest.raises(StudyError, match="--repeats must be a whole number or 'auto', got 'x'"):
        parse_repeats("x")
    assert Rule(1.5, 8).to_dict() == {"target_ci": 1.5, "max_repeats": 8, "first_seeds": 3,
                                      "metric": "test_accuracy"}
    # the rule reads back what it wrote, and an older record without first_seeds
    assert Rule.from_dict(Rule(1.5, 8, 4).to_dict()) == Rule(1.5, 8, 4)
    assert Rule.from_dict({"target_ci": 2, "max_repeats": 5}) == Rule(2.0, 5, 3)


AUTO_SPACE = """\
metric: val_accuracy
mode: max
params:
  loss: {choice: [bce, ce]}
  batch_size: {choice: [16, 128]}
fixed:
  width: 16
  dropout: 0.2
  lr: 3.0e-3
  epochs: 4
"""


@pytest.mark.slow
def test_study_run_repeats_auto_stops_every_configuration_by_its_rule(tmp_path: Path) -> None:
    """`study run --repeats auto` on tiny synthetic data, in a subprocess (its own Ray)."""
    import subprocess
    import sys

    from analysis.results import collect_runs

    space = tmp_path / "space.yaml"
    space.write_text(AUTO_SPACE)
    target, cap = 4.0, 6
    cmd = [sys.executable, "-m", "study", "run", "--space", str(space), "--repeats", "auto",
           "--target-ci", str(target), "--max-repeats", str(cap), "--seed", "7",
           "--data", "synthetic:size=16,n=100,n_test=60", "--storage-path",
           str(tmp_path / "results"), "--name", "auto", "--num-cpus", "2", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    exp = tmp_path / "results" / "auto"
    runs = collect_runs(exp)
    assert set(runs["status"]) == {"completed"} and not runs["duplicate"].any()
    arms = {}
    for (loss, batch), group in runs.groupby(["loss", "batch_size"]):
        arms[loss, batch] = group.sort_values("seed")
        # seeds 7, 8, ... without gaps; the first three trained together as one trial
        assert list(group.sort_values("seed")["seed"]) == list(range(7, 7 + len(group)))
        first = group[group["seed"] == 7].iloc[0]
        assert (group["trial_id"] == first["trial_id"]).sum() == 3
    assert len(arms) == 4
    report = (exp / "summary" / "report.md").read_text()
    assert "**Stopping rule:** every configuration started with 3 seeds" in report
    for (loss, batch), group in arms.items():
        values = list(group["test_accuracy"])
        hw = half_width(values)
        # stopped by the rule: narrow enough, or at the cap; and not a seed later than needed
        assert hw <= target or len(values) == cap, (loss, batch, values)
        assert len(values) == 3 or half_width(values[:-1]) > target, (loss, batch, values)
        row = next(line for line in report.splitlines()
                   if line.startswith(f"| loss={loss}, batch_size={batch} | {len(values)} |"))
        why = ("stopped at the cap" if hw > target else "stopped: every one" if hw == 0
               else f"stopped: half-width {hw:.2f} <= target 4")
        assert why in row, row
    state = json.loads(max(exp.glob("searcher-state-*.json")).read_text())
    assert {(a["config"]["loss"], a["config"]["batch_size"]): len(a["values"])
            for a in state["arms"]} == {k: len(v) for k, v in arms.items()}
    meta = json.loads((exp / "study.json").read_text())
    assert meta["seeds_on_demand"] == {"target_ci": target, "max_repeats": cap,
                                       "first_seeds": 3, "metric": "test_accuracy"}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_interrupted_repeats_auto_study_resumes_where_it_stopped(tmp_path: Path) -> None:
    """Ctrl-C after the first finished trial, then `--resume`: the searcher's JSON state
    carries on, no seed trains twice, and every configuration still stops by the rule."""
    import signal

    from _proc import finished_trials, run_study_process, study_process, wait_for

    from analysis.results import collect_runs

    space = tmp_path / "space.yaml"
    space.write_text(AUTO_SPACE.replace("batch_size: {choice: [16, 128]}",
                                        "batch_size: {choice: [16]}")
                     .replace("epochs: 4", "epochs: 12"))
    storage, target, cap = tmp_path / "results", 3.0, 5
    args = ["run", "--space", str(space), "--repeats", "auto", "--target-ci", str(target),
            "--max-repeats", str(cap), "--data", "synthetic:size=16,n=100,n_test=60",
            "--storage-path", str(storage), "--name", "auto", "--num-cpus", "2",
            "--checkpoint-every", "1", "--quiet"]
    exp = storage / "auto"
    with study_process(args, tmp_path / "logs") as study:
        def first_done() -> bool:
            study.tree()
            assert study.proc.poll() is None, study.output()
            return len(finished_trials(exp)) >= 1

        wait_for(first_done, 300, interval=0.2, what="a finished trial")
        os.kill(study.pid, signal.SIGINT)
        assert study.wait(180) == 130, study.output()
    before = json.loads(max(exp.glob("searcher-state-*.json")).read_text())
    assert sum(len(a["values"]) for a in before["arms"]) >= 3
    status, resumed = run_study_process(["run", "--resume", "--name", "auto", "--storage-path",
                                         str(storage), "--quiet"], tmp_path / "logs", 600,
                                        tag="resume")
    assert status == 0, resumed.output()
    runs = collect_runs(exp)
    assert not runs["duplicate"].any() and set(runs["status"]) == {"completed"}
    for _, group in runs.groupby("loss"):
        values = list(group.sort_values("seed")["test_accuracy"])
        assert list(group.sort_values("seed")["seed"]) == list(range(len(values)))
        assert half_width(values) <= target or len(values) == cap, values
        assert len(values) == 3 or half_width(values[:-1]) > target, values
    after = json.loads(max(exp.glob("searcher-state-*.json")).read_text())
    for old, new in zip(before["arms"], after["arms"], strict=True):
        assert old["values"].items() <= new["values"].items()  # nothing finished was redone
