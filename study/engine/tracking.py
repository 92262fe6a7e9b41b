"""Where trials' metrics go besides result.json: TensorBoard always, W&B and MLflow on request.

All of them are Ray Tune's own logger callbacks; this module picks them, checks the optional
packages before Ray starts, and turns local MLflow paths into the URIs MLflow expects.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from study.errors import StudyError

EXTRAS = {"wandb": ("--wandb", "wandb"), "mlflow": ("--mlflow", "mlflow")}


def check_tracking(wandb: str | None, mlflow: str | None) -> None:
    """Refuse `--wandb` / `--mlflow` with one line when the package is not installed."""
    for value, package in ((wandb, "wandb"), (mlflow, "mlflow")):
        if value is None:
            continue
        flag = EXTRAS[package][0]
        if not value.strip():
            raise StudyError(f"{flag} needs a value, got {value!r}")
        if importlib.util.find_spec(package) is None:
            raise StudyError(
                f"{flag} {value}: the {package} package is not installed; install it with "
                f"pip install 'xray-study[{package}]' (or pip install {package})"
            )
    if wandb is not None and not wandb_credentials():
        raise StudyError(
            f"--wandb {wandb}: no W&B API key found; set WANDB_API_KEY, run `wandb login`, or "
            "set WANDB_MODE=offline to keep the runs local (`wandb sync` uploads them later)"
        )


def wandb_credentials() -> bool:
    """True if W&B can log: offline or disabled mode, an API key in the environment, or a
    `wandb login` (W&B keeps its key in ~/.netrc), as Ray's W&B callback looks for them."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return True
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", "~/.netrc")).expanduser()
    try:
        return "api.wandb.ai" in netrc.read_text(errors="replace")
    except OSError:
        return False


def mlflow_uri(value: str) -> str:
    """An MLflow tracking URI: URIs (http://, sqlite:///, file:, databricks) as given; a local
    `*.db` file becomes an absolute sqlite:/// URI (MLflow's recommended local store), any other
    local path an absolute file: URI (MLflow 3 wants MLFLOW_ALLOW_FILE_STORE=true for those)."""
    if "://" in value or value.startswith(("file:", "databricks")):
        return value
    path = Path(value).expanduser().resolve()
    return f"sqlite:///{path}" if path.suffix == ".db" else path.as_uri()


def tensorboard_result(result: dict[str, Any]) -> dict[str, Any]:
    """A trial's result as TensorBoard should get it: each seed's value of each metric as a
    scalar of its own (`seed_3/val_accuracy`) when the trial trains several seeds, and no
    per-seed lists, which Ray's logger would draw as a histogram per metric and epoch
    (unreadable, and most of the driver's time spent logging)."""
    out = {k: v for k, v in result.items() if k not in ("seeds", "seed_metrics")}
    seeds = result.get("seeds") or []
    if len(seeds) > 1:
        for name, values in (result.get("seed_metrics") or {}).items():
            for seed, value in zip(seeds, values, strict=True):
                out[f"seed_{seed}/{name}"] = value
    return out


def tracking_callbacks(name: str, exp_dir: Path | None = None, wandb: str | None = None,
                       mlflow: str | None = None) -> list[Any]:
    """Ray Tune's TensorBoard logger, plus its W&B and MLflow loggers when asked for.

    TensorBoard event files go into each trial's folder (`tensorboard --logdir <experiment>`).
    W&B runs are grouped by the study's name (one run per trial) and keep their local files in
    `<experiment>/wandb/` (`exp_dir`, a local experiment folder); MLflow gets one experiment
    named after the study, one run per trial, its configuration as parameters and its epochs
    as metrics.
    """
    from ray.tune.logger import TBXLoggerCallback

    class StudyTBXLoggerCallback(TBXLoggerCallback):
        """Ray's TensorBoard logger, given `tensorboard_result`'s per-seed scalars."""

        def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
            super().log_trial_result(iteration, trial, tensorboard_result(result))

    callbacks: list[Any] = [StudyTBXLoggerCallback()]
    if wandb is not None:
        from ray.air.integrations.wandb import WandbLoggerCallback

        class QuietWandbLoggerCallback(WandbLoggerCallback):
            """Ray's callback, whose __del__ fails at interpreter exit (Ray's module is gone
            by then) with a traceback after the study's summary."""

            def __del__(self) -> None:
                try:
                    super().__del__()
                except Exception:  # only at exit: its actors are gone with Ray already
                    pass

        kwargs: dict[str, Any] = {}
        # Ray forwards only the API key to its logging actors; the driver's WANDB_MODE
        # (offline, disabled) must reach them too, whichever node they run on.
        if os.environ.get("WANDB_MODE"):
            kwargs["mode"] = os.environ["WANDB_MODE"]
        if exp_dir is not None:
            # Written straight into the experiment folder: a trial's own folder is a staging
            # copy that Ray may sync before W&B has flushed its run file.
            exp_dir.mkdir(parents=True, exist_ok=True)
            kwargs["dir"] = str(exp_dir)
        callbacks.append(QuietWandbLoggerCallback(project=wandb, group=name, **kwargs))
    if mlflow is not None:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(MLflowLoggerCallback(tracking_uri=mlflow_uri(mlflow),
                                              experiment_name=name))
    return callbacks
