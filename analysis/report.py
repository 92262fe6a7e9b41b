"""`study report`: write summary/ (best config, leaderboard, model, figures, report) from disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from analysis.results import check_experiment
from analysis.summary import summarise
from study.io import write_json_atomic, write_text_atomic


def export_best_model(exp_dir: Path, best: dict[str, Any], out: Path) -> Path | None:
    """Copy the best trial's kept weights (best validation loss) to out/model.pt."""
    import torch

    from study.checkpoint import MODEL_FILE, save_model
    from study.config import TrialConfig

    trial_dir = exp_dir / best["trial_dir"]
    checkpoints = sorted(trial_dir.glob("checkpoint_*/state.pt"))
    if not checkpoints:
        return None
    state = torch.load(checkpoints[-1], map_location="cpu", weights_only=True)
    config = TrialConfig.from_dict(state["config"], where=str(checkpoints[-1]))
    weights = state["best_model"] or state["model"]
    first = next(v for k, v in weights.items() if k.endswith("weight"))
    image_size = int(round(first.shape[1] ** 0.5))
    save_model(out / MODEL_FILE, weights, config, image_size)
    return out / MODEL_FILE


def write_report(exp_dir: Path, out: Path | None = None) -> dict[str, Any]:
    """Write summary/ for an experiment folder and return what was written.

    Every file is written atomically, so an interrupted report never leaves half a file.
    """
    exp_dir = Path(exp_dir)
    check_experiment(exp_dir)
    out = Path(out) if out is not None else exp_dir / "summary"
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(exp_dir)
    write_text_atomic(out / "leaderboard.csv", summary["leaderboard"].to_csv(index=False))
    missing = []
    best = summary["best"]
    if best is not None:
        record = {
            "experiment": summary["experiment"],
            "metric": summary["metric"],
            "mode": summary["mode"],
            "command": summary["meta"].get("command"),
            "config": best["config"],
            "metrics": best["metrics"],
            "ci95": best["ci95"],
            "n_seeds": best["n_seeds"],
            "seeds": best["seeds"],
            "trial_ids": best["trial_ids"],
        }
        write_json_atomic(out / "best_config.json", record)
        write_text_atomic(out / "best_config.yaml", yaml.safe_dump(record, sort_keys=False))
        if export_best_model(exp_dir, best, out) is None:
            missing.append("no checkpoint of the best trial; summary/model.pt not written")
    else:
        missing.append("no trial reported a validation score; no best configuration yet")
    trials = summary["trials"]
    unfinished = trials[~trials["status"].isin(["completed", "stopped", "diverged", "error"])]
    if len(unfinished):
        missing.append(f"{len(unfinished)} trial(s) did not finish")
    expected = summary["meta"].get("expected_trials")
    if expected and len(trials) < expected:
        missing.append(f"{expected - len(trials)} of {expected} requested trials never started")
    return {**summary, "out": out, "missing": missing}
