"""`study run` end to end on one real Ray instance: every search and scheduler, repeats, PBT
restores, resume after a kill, and the exports (best_config.yaml, model.pt) used again.

Tiny data (16x16 synthetic images) and 2-6 epochs; what takes the time is Ray starting trial
workers, so each study is kept to a handful of trials.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest

from study.cli import main as cli
from study.search.optuna_space import optuna_space
from study.search.searcher import StudyOptunaSearch
from study.search.space import parse_space
from study.training.config import TrialConfig

DATA = "synthetic:size=16,n=200,n_test=40"
LEADERBOARD_COLUMNS = ["trial_id", "status", "epochs", "seed", "node_id", "val_accuracy",
                       "val_loss", "val_auroc"]



def write_space(path: Path, params: dict[str, Any], fixed: dict[str, Any],
                metric: str = "val_accuracy", mode: str = "max") -> Path:
    """Write a search space (JSON is YAML) and return its path."""
    path.write_text(json.dumps({"metric": metric, "mode": mode, "params": params,
                                "fixed": fixed}, indent=1))
    return path


SMALL_NET = {"batch_size": 16, "depth": 1, "width": 16}


def study(tmp_path: Path, name: str, space: Path | str, *args: str) -> Path:
    """Run `study run` in this process (on the module's Ray); return the experiment folder."""
    status = cli.main(["run", "--space", str(space), "--data", DATA, "--storage-path",
                       str(tmp_path), "--name", name, "--quiet", *args])
    assert status == 0
    return tmp_path / name


def board(exp: Path) -> pd.DataFrame:
    """summary/leaderboard.csv, after checking its documented columns and one row per run
    (a trial and one of its seeds)."""
    df = pd.read_csv(exp / "summary" / "leaderboard.csv", dtype={"trial_id": str})
    assert list(df.columns[:5]) == LEADERBOARD_COLUMNS[:5]
    assert set(LEADERBOARD_COLUMNS) <= set(df.columns)
    assert not df.duplicated(["trial_id", "seed"]).any()
    for name in json.loads((exp / "study.json").read_text())["searched"]:
        assert name in df.columns
    assert df["node_id"].notna().all() and df["val_accuracy"].between(0, 100).all()
    return df


def results(trial_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()
            if line.strip()]


# --- the searcher: early-stopped trials are PRUNED for Optuna (no Ray cluster) -----------


def searcher(params: dict[str, Any], fixed: dict[str, Any]) -> StudyOptunaSearch:
    space = parse_space({"metric": "val_accuracy", "mode": "max", "params": params,
                         "fixed": fixed})
    return StudyOptunaSearch(space=optuna_space(space), metric="val_accuracy", mode="max",
                             sampler=optuna.samplers.TPESampler(seed=0))


def ot_trial(search: StudyOptunaSearch, number: int) -> optuna.trial.FrozenTrial:
    return search._ot_study.get_trials(deepcopy=False)[number]


def completion(metric: float, epoch: int, config: dict[str, Any], flat: bool) -> dict[str, Any]:
    """A last result as Ray hands it to searchers: flattened (`config/epochs`), or nested."""
    if flat:
        return {"val_accuracy": metric, "epoch": epoch,
                **{f"config/{k}": v for k, v in config.items()}}
    return {"val_accuracy": metric, "epoch": epoch, "config": config}


@pytest.mark.parametrize("flat", [True, False])
def test_searcher_tells_optuna_early_stopped_trials_pruned(flat: bool) -> None:
    search = searcher({"lr": {"loguniform": [1e-4, 1e-2]}}, {"epochs": 3})
    configs = {tid: search.suggest(tid) for tid in ("stopped", "full", "nan", "error")}
    assert all(c["epochs"] == 3 and 1e-4 <= c["lr"] <= 1e-2 for c in configs.values())
    for epoch, acc in ((1, 55.0), (2, 60.0)):
        for tid in configs:
            search.on_trial_result(tid, {"val_accuracy": acc, "training_iteration": epoch,
                                         "epoch": epoch})
    # ASHA stopped it after 2 of 3 epochs: PRUNED, with its intermediate values kept.
    search.on_trial_complete("stopped", completion(60.0, 2, configs["stopped"], flat))
    search.on_trial_complete("full", completion(75.0, 3, configs["full"], flat))
    search.on_trial_complete("nan", completion(math.nan, 3, configs["nan"], flat))
    search.on_trial_complete("error", None, error=True)
    State = optuna.trial.TrialState
    stopped, full, nan, error = (ot_trial(search, i) for i in range(4))
    assert stopped.state == State.PRUNED and stopped.intermediate_values == {1: 55.0, 2: 60.0}
    assert full.state == State.COMPLETE and full.value == 75.0
    assert nan.state == State.FAIL
    assert error.state == State.FAIL
    # Each told once: a late duplicate completion changes nothing.
    search.on_trial_complete("stopped", completion(99.0, 3, configs["stopped"], flat))
    assert ot_trial(search, 0).state == State.PRUNED


def test_searcher_judges_a_stacked_trial_by_its_seed_mean() -> None:
    # A trial stacking 3 seeds reports their mean: Optuna is told it. One diverged seed makes
    # the trial's `diverged` 1/3 and its mean NaN: FAIL, as a diverged single seed is.
    search = searcher({"dropout": {"uniform": [0.0, 0.5]}}, {"epochs": 2})
    good, bad = search.suggest("good"), search.suggest("bad")
    per_seed = {"val_accuracy": [70.0, 74.0, 72.0]}
    search.on_trial_complete("good", {"val_accuracy": 72.0, "epoch": 2, "seeds": [0, 1, 2],
                                      "seed_metrics": per_seed, "config": good})
    search.on_trial_complete("bad", {"val_accuracy": math.nan, "epoch": 1, "diverged": 1 / 3,
                                     "config": bad})
    assert ot_trial(search, 0).state == optuna.trial.TrialState.COMPLETE
    assert ot_trial(search, 0).value == 72.0
    assert ot_trial(search, 1).state == optuna.trial.TrialState.FAIL


def test_searcher_suggests_config_keys_only() -> None:
    # Per-layer widths are Optuna parameters width_0, width_1, ...; the trial config must hold
    # them as one `width` list, or the trainable refuses the unknown keys.
    search = searcher({"depth": {"int": [1, 3]}, "width": {"per_layer": {"choice": [8, 16]}},
                       "lr": {"loguniform": [1e-4, 1e-2]}}, {"epochs": 2})
    for i in range(8):
        config = search.suggest(f"t{i}")
        assert set(config) == {"depth", "width", "lr", "epochs"}
        assert len(config["width"]) == config["depth"]
        TrialConfig.from_dict(config)
        search.on_trial_complete(f"t{i}", {"val_accuracy": 50.0 + i, "epoch": 2,
                                           "config": config})
    search = searcher({"width": {"choice": [[8, 8], [16, 4]]}}, {"depth": 2})
    config = search.suggest("x")
    assert set(config) == {"width", "depth"} and config["width"] in ([8, 8], [16, 4])


def test_searcher_state_round_trip(tmp_path: Path) -> None:
    # Ray saves the searcher with the experiment (resume); the define-by-run space goes too.
    search = searcher({"depth": {"int": [1, 3]}, "width": {"per_layer": {"choice": [8, 16]}}},
                      {"epochs": 2})
    config = search.suggest("a")
    search.on_trial_complete("a", {"val_accuracy": 70.0, "epoch": 2, "config": config})
    search.save(str(tmp_path / "searcher.pkl"))
    restored = searcher({"lr": {"uniform": [0.1, 0.2]}}, {"epochs": 9})
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert len(restored._ot_study.trials) == 1
    again = restored.suggest("b")
    assert set(again) == {"depth", "width", "epochs"} and again["epochs"] == 2


def test_driver_imports_run_in_background_and_skip_what_fails() -> None:
    import importlib.util

    from study.engine.run import DRIVER_IMPORTS, _import_in_background

    assert all(importlib.util.find_spec(name) for name in DRIVER_IMPORTS), DRIVER_IMPORTS
    assert "tabnanny" not in sys.modules
    thread = _import_in_background(("study_no_such_module", "tabnanny"))
    thread.join(timeout=60)
    assert not thread.is_alive() and "tabnanny" in sys.modules


# --- studies on one Ray ------------------------------------------------------------------


@pytest.mark.slow
def test_a_study_worker_has_warmed_up_pytorch_before_its_first_trial(ray_cluster: None) -> None:
    # First on this Ray: an actor gets a worker of its own that has run nothing yet. Only the
    # worker set-up hook imports PyTorch there, and trains a step (which loads torch._dynamo).
    import ray

    @ray.remote(num_cpus=0)
    class Probe:
        def loaded(self) -> list[str]:
            return sorted({"torch", "torch._dynamo", "study.training.loop"} & set(sys.modules))

    probe = Probe.remote()
    assert ray.get(probe.loaded.remote(), timeout=120) == ["study.training.loop", "torch",
                                                           "torch._dynamo"]
    ray.kill(probe)


@pytest.mark.slow
def test_optuna_asha_stops_poor_trials_early(ray_cluster: None, tmp_path: Path) -> None:
    # Half the learning rates cannot learn in 6 epochs: ASHA (grace 1 epoch, rungs at 1 and 3)
    # stops such trials at a rung. Per-layer widths also exercise Optuna's define-by-run space.
    space = write_space(tmp_path / "asha.yaml",
                        {"lr": {"choice": [1.0e-7, 3.0e-3]},
                         "depth": {"int": [1, 2]},
                         "width": {"per_layer": {"choice": [8, 16]}}},
                        {"batch_size": 16, "epochs": 20})
    exp = study(tmp_path, "asha", space, "--search", "optuna", "--scheduler", "asha",
                "--num-samples", "8", "--max-epochs", "6")
    meta = json.loads((exp / "study.json").read_text())
    assert (meta["metric"], meta["mode"], meta["search"], meta["scheduler"]) == (
        "val_accuracy", "max", "optuna", "asha")
    assert meta["epochs"] == 6 and meta["expected_trials"] == 8
    df = board(exp)
    assert len(df) == 8
    assert set(df["status"]) <= {"completed", "stopped"}
    stopped = df[df["status"] == "stopped"]
    assert len(stopped) >= 1 and (stopped["epochs"] < 6).all()
    assert (df.loc[df["status"] == "completed", "epochs"] == 6).all()
    assert (df["planned_epochs"] == 6).all()
    for width, depth in zip(df["width"], df["depth"], strict=True):
        assert len(json.loads(width)) == depth
    # Optuna was told the stopped trials as PRUNED and the finished ones as COMPLETE.
    states = sorted(exp.glob("searcher-state-*.pkl"))
    assert states
    with open(states[-1], "rb") as f:
        saved = pickle.load(f)  # our own file, written by Ray moments ago
    ot_study = _find_optuna_study(saved)
    counts = pd.Series([t.state.name for t in ot_study.trials]).value_counts().to_dict()
    assert counts.get("PRUNED", 0) == len(stopped)
    assert counts.get("COMPLETE", 0) == len(df) - len(stopped)
    # TPE as recorded, every setting written out, and the sampler that ran
    assert meta["sampler"] == {"sampler": "TPESampler", "seed": 0, "n_startup_trials": 4,
                               "multivariate": True, "group": True, "constant_liar": True,
                               "n_ei_candidates": 24, "optuna": optuna.__version__}
    assert isinstance(ot_study.sampler, optuna.samplers.TPESampler)
    assert "- Sampler: Optuna " in (exp / "summary" / "report.md").read_text()


def test_the_gp_sampler_searches_and_is_recorded(ray_cluster: None, tmp_path: Path) -> None:
    space = write_space(tmp_path / "gp.yaml", {"lr": {"loguniform": [1.0e-4, 1.0e-2]},
                                               "depth": {"int": [1, 2]}},
                        {"batch_size": 16, "width": 8, "epochs": 2})
    exp = study(tmp_path, "gp", space, "--sampler", "gp", "--scheduler", "fifo",
                "--num-samples", "6", "--max-concurrent", "1")
    meta = json.loads((exp / "study.json").read_text())
    assert meta["options"]["sampler"] == "gp" and meta["search"] == "optuna"
    assert meta["sampler"]["sampler"] == "GPSampler"
    assert meta["sampler"]["n_startup_trials"] == 4  # so the last two trials came from the GP
    with open(sorted(exp.glob("searcher-state-*.pkl"))[-1], "rb") as f:
        ot_study = _find_optuna_study(pickle.load(f))  # our own file, written by Ray
    assert isinstance(ot_study.sampler, optuna.samplers.GPSampler)
    assert [t.state.name for t in ot_study.trials] == ["COMPLETE"] * 6
    assert len(board(exp)) == 6
    report = (exp / "summary" / "report.md").read_text()
    assert f"- Sampler: Optuna {optuna.__version__} GPSampler (seed=0, n_startup_trials=4" \
        in report


def _find_optuna_study(obj: Any, depth: int = 0) -> optuna.Study:
    """The Optuna study inside a saved searcher state (ConcurrencyLimiter wraps the searcher)."""
    if isinstance(obj, optuna.Study):
        return obj
    if depth < 4:
        values = obj.values() if isinstance(obj, dict) else getattr(obj, "__dict__", {}).values()
        for value in values:
            try:
                return _find_optuna_study(value, depth + 1)
            except LookupError:
                continue
    raise LookupError("no optuna.Study in the searcher state")


@pytest.mark.slow
def test_optuna_hyperband(ray_cluster: None, tmp_path: Path) -> None:
    space = write_space(tmp_path / "hb.yaml", {"lr": {"loguniform": [1.0e-6, 1.0e-2]}},
                        SMALL_NET)
    # 6 trials cannot fill Hyperband's brackets for 9 epochs (9 + 5 + 3 trials): no trial may
    # be left paused at a milestone when the study ends.
    exp = study(tmp_path, "hb", space, "--search", "optuna", "--scheduler", "hyperband",
                "--num-samples", "6", "--max-epochs", "9")
    df = board(exp)
    assert len(df) == 6
    assert set(df["status"]) <= {"completed", "stopped"}
    assert (df["epochs"] <= 9).all() and (df["epochs"] >= 1).all()
    assert (df.loc[df["status"] == "completed", "epochs"] == 9).all()
    assert (df.loc[df["status"] == "stopped", "epochs"] < 9).all()
    meta = json.loads((exp / "study.json").read_text())
    assert (meta["search"], meta["scheduler"]) == ("optuna", "hyperband")
    # A trial paused by HyperBand and resumed never reports an epoch twice or skips one.
    for trial_dir in exp.glob("train_trial_*"):
        epochs = [r["epoch"] for r in results(trial_dir)]
        assert epochs == list(range(1, len(epochs) + 1)), trial_dir.name


@pytest.mark.slow
def test_random_pbt_restores_from_checkpoints(ray_cluster: None, tmp_path: Path) -> None:
    space = write_space(tmp_path / "pbt.yaml", {"lr": {"loguniform": [1.0e-6, 1.0e-2]},
                                                "dropout": {"uniform": [0.0, 0.6]}},
                        SMALL_NET)
    # Two seeds stacked per trial: PBT exploits a whole configuration, every seed of the
    # donor's checkpoint.
    exp = study(tmp_path, "pbt", space, "--scheduler", "pbt", "--num-samples", "4",
                "--max-epochs", "4", "--repeats", "2")
    meta = json.loads((exp / "study.json").read_text())
    assert (meta["search"], meta["scheduler"]) == ("random", "pbt")
    df = board(exp)
    assert len(df) == 8 and (df.groupby("trial_id")["seed"].apply(sorted) == [[0, 1]] * 4).all()
    # PBT never stops a trial: every one trains to the end, and result.json keeps every epoch
    # (Ray would copy a stale result.json back over it each time a trial restarts).
    assert (df["status"] == "completed").all() and (df["epochs"] == 4).all()
    # pbt_global.txt: one line per exploit, [target, donor, target's iteration, donor's
    # iteration, old config, new config]; the target restarts from the donor's checkpoint.
    exploits: dict[str, set[int]] = {}
    for line in (exp / "pbt_global.txt").read_text().splitlines():
        target, _donor, _target_iter, donor_iter, _old, _new = json.loads(line)
        exploits.setdefault(target.split("_")[0].zfill(5), set()).add(donor_iter)
    assert exploits and list(exp.glob("pbt_policy_*.txt"))
    restored = 0
    for trial_dir in exp.glob("train_trial_*"):
        index = trial_dir.name.split("_")[3]
        rows = results(trial_dir)
        assert rows[0]["epoch"] == 1 and rows[-1]["epoch"] == 4
        for prev, row in zip(rows, rows[1:], strict=False):
            # The next epoch, none lost; or, after an exploit, the epoch after the donor's
            # checkpoint (an exploit may repeat an epoch, and a perturbation clipped to a
            # bound can leave lr as it was, so the lr alone does not tell an exploit).
            if row["epoch"] != prev["epoch"] + 1:
                assert row["epoch"] - 1 in exploits.get(index, ()), trial_dir.name
        for row in rows:
            assert row["seeds"] == [0, 1] and len(row["seed_metrics"]["val_loss"]) == 2
            # The epoch comes from the checkpoint's training state, so it continues Ray's
            # iteration count after a restore instead of starting again at 1.
            assert row["epoch"] == row["training_iteration"]
            restored += row["iterations_since_restore"] < row["training_iteration"]
            # Perturbations stay inside the search space (dropout * 1.2 is clipped).
            assert 0.0 <= row["config"]["dropout"] <= 0.6
            assert 1e-6 <= row["config"]["lr"] <= 1e-2
    assert restored >= 1


@pytest.mark.slow
def test_grid_median_repeats_three_seeds_per_configuration(ray_cluster: None,
                                                           tmp_path: Path) -> None:
    space = write_space(tmp_path / "grid.yaml", {"loss": {"choice": ["bce", "ce"]}},
                        SMALL_NET)
    exp = study(tmp_path, "grid", space, "--search", "grid", "--scheduler", "median",
                "--repeats", "3", "--max-epochs", "3")
    meta = json.loads((exp / "study.json").read_text())
    assert (meta["search"], meta["scheduler"], meta["repeats"]) == ("grid", "median", 3)
    assert meta["expected_trials"] == 2  # one trial per configuration, 3 seeds stacked in it
    assert len(list(exp.glob("*/params.json"))) == 2
    df = board(exp)
    assert len(df) == 6  # one row per run
    assert set(df["status"]) <= {"completed", "stopped"}
    for loss, group in df.groupby("loss"):
        assert sorted(group["seed"]) == [0, 1, 2], loss
    assert set(df["loss"]) == {"bce", "ce"}
    best = json.loads((exp / "summary" / "best_config.json").read_text())
    assert best["seeds"] == [0, 1, 2] or best["n_seeds"] >= 1


@pytest.mark.slow
def test_random_fifo_exports_are_usable(ray_cluster: None, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    space = write_space(tmp_path / "fifo.yaml", {"lr": {"loguniform": [1.0e-3, 1.0e-2]},
                                                 "loss": {"choice": ["bce", "ce"]}},
                        SMALL_NET)
    exp = study(tmp_path, "fifo", space, "--search", "random", "--scheduler", "fifo",
                "--num-samples", "3", "--max-epochs", "2")
    meta = json.loads((exp / "study.json").read_text())
    assert (meta["metric"], meta["mode"], meta["search"], meta["scheduler"]) == (
        "val_accuracy", "max", "random", "fifo")
    assert meta["searched"] == ["lr", "loss"]
    df = board(exp)
    assert len(df) == 3
    assert (df["status"] == "completed").all() and (df["epochs"] == 2).all()
    assert (df["seed"] == 0).all() and df["lr"].between(1e-3, 1e-2).all()
    summary = exp / "summary"
    best = json.loads((summary / "best_config.json").read_text())
    assert best["config"]["lr"] == pytest.approx(df["lr"].iloc[0])
    assert best["metrics"]["val_accuracy"] == pytest.approx(df["val_accuracy"].max())
    capsys.readouterr()

    assert cli.main(["train", "--config", str(summary / "best_config.yaml"), "--data", DATA,
                     "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "Test accuracy is" in out and f"'lr': {best['config']['lr']}" in out

    assert cli.main(["evaluate", "--checkpoint", str(summary / "model.pt"), "--data",
                     DATA]) == 0
    out = capsys.readouterr().out
    assert "Test accuracy is" in out


@pytest.mark.slow
def test_bad_requests_stop_before_any_trial(ray_cluster: None, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    space = write_space(tmp_path / "u.yaml", {"dropout": {"uniform": [0.0, 0.5]}}, SMALL_NET)
    assert cli.main(["run", "--space", str(space), "--data", DATA, "--search", "grid",
                     "--storage-path", str(tmp_path), "--name", "g", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "params.dropout: grid search needs a choice or an int range" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g").exists()
    assert cli.main(["run", "--space", str(space), "--data", DATA, "--search", "grid",
                     "--scheduler", "pbt", "--storage-path", str(tmp_path), "--quiet"]) == 2
    assert "--scheduler pbt cannot be combined with --search grid" in capsys.readouterr().err


# --- resume after a kill -------------------------------------------------------------------


def _process_tree(root: int) -> set[int]:
    """Live processes in `root`'s process group and their descendants (Ray's workers set up
    process groups of their own, so the parent links are followed too)."""
    stats: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        if fields[0] != "Z":
            stats[int(entry.name)] = (int(fields[1]), int(fields[2]))
    tree = {pid for pid, (_, pgid) in stats.items() if pgid == root} | {root}
    while True:
        children = {pid for pid, (ppid, _) in stats.items() if ppid in tree} - tree
        if not children:
            return tree & set(stats)
        tree |= children


def _kill(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_killed_study_resumes_with_every_trial_once(ray_cluster: None, tmp_path: Path) -> None:
    # Trials of a few seconds each (batch size 2), so the study can be killed halfway.
    space = write_space(tmp_path / "resume.yaml", {"lr": {"loguniform": [1.0e-4, 1.0e-2]}},
                        {"batch_size": 2, "depth": 1, "width": 16})
    data = "synthetic:size=32,n=500,n_test=20"
    args = ["run", "--space", str(space), "--data", data, "--search", "optuna", "--scheduler",
            "fifo", "--num-samples", "6", "--max-epochs", "2", "--storage-path", str(tmp_path),
            "--name", "r", "--quiet"]
    exp = tmp_path / "r"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = open(tmp_path / "killed.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "study", *args, "--num-cpus", "2"],
                            stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        # A trial's only checkpoint is written at its end: two of them, two trials done.
        while len(list(exp.glob("*/checkpoint_*"))) < 2:
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial finished within 240 s"
            seen |= _process_tree(proc.pid)
            time.sleep(0.2)
        assert proc.poll() is None, "the study finished before it could be interrupted"
    finally:
        seen |= _process_tree(proc.pid)
        _kill(seen)
        proc.wait(timeout=60)
        log.close()
        _kill({pid for pid in seen if Path(f"/proc/{pid}").exists()})
    assert proc.returncode == -signal.SIGKILL
    states = sorted(exp.glob("experiment_state-*.json"))
    assert states, "Ray saved no experiment state before the kill"
    before = {json.loads(t[0])["trial_id"]: json.loads(t[0])["status"]
              for t in json.loads(states[-1].read_text())["trial_data"]}
    assert len(before) < 6 or any(s != "TERMINATED" for s in before.values())

    # Resume on the module's Ray (a new cluster, as after a real crash).
    assert cli.main([*args, "--resume"]) == 0
    df = board(exp)
    assert len(df) == 6 and df["trial_id"].is_unique
    assert (df["status"] == "completed").all() and (df["epochs"] == 2).all()
    finished = {tid for tid, status in before.items() if status == "TERMINATED"}
    assert finished <= set(df["trial_id"])
    for trial_dir in exp.glob("train_trial_*"):
        if (trial_dir / "result.json").exists():
            epochs = [r["epoch"] for r in results(trial_dir)]
            assert epochs[-1] == 2
