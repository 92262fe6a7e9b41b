"""Where trials' metrics go besides result.json: TensorBoard always, W&B and MLflow on request.

All of them are Ray Tune's own logger callbacks; this module picks them, checks the optional
packages before Ray starts, and turns local MLflow paths into the URIs MLflow expects.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from study.core.secrets import MASK, has_password, redact, split_credentials
from study.errors import StudyError

MLFLOW_USER_ENV, MLFLOW_PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
EXTRAS = {"wandb": ("--wandb", "wandb"), "mlflow": ("--mlflow", "mlflow")}


def check_tracking(wandb: str | None, mlflow: str | None) -> None:
    """Refuse `--wandb` / `--mlflow` with one line when the package is not installed, the
    W&B project name is malformed, or the MLflow store cannot be reached or written."""
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
    if wandb is not None:
        check_wandb_project(wandb)
    if mlflow is not None:
        check_mlflow_store(mlflow_uri(mlflow), mlflow)


WANDB_PROJECT_MAX, WANDB_PROJECT_NOT = 128, "/\\#?%:"  # W&B's rule for a project's name


def check_wandb_project(project: str) -> None:
    """Refuse a project name W&B would refuse in each trial's logger (`team/proj`), before
    Ray starts. W&B's own rule (wandb.Settings.validate_project), by hand: the driver must not
    import wandb (or mlflow) before Ray starts, or the report's forked workers die later."""
    bad = sorted({c for c in WANDB_PROJECT_NOT if c in project})
    if bad or len(project) > WANDB_PROJECT_MAX:
        reason = (f"it holds {', '.join(repr(c) for c in bad)}" if bad
                  else f"{len(project)} characters, over {WANDB_PROJECT_MAX}")
        raise StudyError(f"--wandb {project}: not a W&B project name ({reason}); give the "
                         "project alone and set WANDB_ENTITY for its team")


def check_mlflow_store(uri: str, given: str) -> None:
    """Refuse, in one line and within seconds, an MLflow store the study could not log to:
    an http(s) server that does not answer, a file store MLflow 3 refuses (without
    MLFLOW_ALLOW_FILE_STORE=true), or a local store that cannot be written."""
    from urllib.parse import urlsplit

    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https"):
        _check_answers(uri, given)
        return
    if scheme == "file":
        from urllib.request import url2pathname

        # MLflow's own rule for its boolean variables, read without importing mlflow here
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
            raise StudyError(
                f"--mlflow {given}: MLflow 3 refuses a file store ({uri}) unless "
                "MLFLOW_ALLOW_FILE_STORE=true is set; set it, or pass a .db file (sqlite)"
            )
        _check_writable(Path(url2pathname(urlsplit(uri).path)), given)
    elif scheme == "sqlite" and uri.startswith("sqlite:///"):
        _check_writable(Path(uri[len("sqlite:///"):]).parent, given)


MLFLOW_TIMEOUT_S = 5.0  # an MLflow server answers its first request within this, or is down


def _check_answers(uri: str, given: str) -> None:
    """Any HTTP answer will do (MLflow's own requests say more); none is one line."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=MLFLOW_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return  # it answered (an auth proxy's 401, an older server's 404)
    except (OSError, ValueError) as exc:  # URLError, a timeout, a malformed host or port
        reason = getattr(exc, "reason", exc)
        raise StudyError(
            f"--mlflow {given}: no MLflow server answers at {uri} within "
            f"{MLFLOW_TIMEOUT_S:g} s ({reason}); start it (mlflow server --port ...) or fix "
            "the URI"
        ) from None


def _check_writable(folder: Path, given: str) -> None:
    """The store's folder (or the nearest that exists) takes a new file."""
    import tempfile

    existing = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise StudyError(f"--mlflow {given}: {existing} cannot be written ({exc.strerror}); "
                         "pass an MLflow store in a folder you can write") from None


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
    """An MLflow tracking URI: URIs (http://, sqlite:///, file:, databricks) as given, less
    any user and password (`take_credentials` put them where MLflow reads them); a local
    `*.db` file becomes an absolute sqlite:/// URI (MLflow's recommended local store), any other
    local path an absolute file: URI (MLflow 3 wants MLFLOW_ALLOW_FILE_STORE=true for those)."""
    if "://" in value or value.startswith(("file:", "databricks")):
        return split_credentials(value)[0]
    path = Path(value).expanduser().resolve()
    return f"sqlite:///{path}" if path.suffix == ".db" else path.as_uri()


def take_credentials(mlflow: str | None) -> str | None:
    """`--mlflow` as the study records it: a password in the URI is moved into the
    environment MLflow reads (MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD) and
    replaced by *** (`http://user:***@host`), so it never reaches study.json, the reports,
    Ray's tuner.pkl or a printed line. A URI already masked (pasted from a study's record)
    needs the password in the environment again."""
    if not has_password(mlflow):
        return mlflow
    assert mlflow is not None
    _, user, password = split_credentials(mlflow)
    if password == MASK:
        if not os.environ.get(MLFLOW_PASSWORD_ENV):
            raise StudyError(
                f"--mlflow {mlflow}: the password is not recorded; give it again in the URI "
                f"or set {MLFLOW_USER_ENV} and {MLFLOW_PASSWORD_ENV}"
            )
        return mlflow
    os.environ[MLFLOW_USER_ENV] = user or ""
    os.environ[MLFLOW_PASSWORD_ENV] = password or ""
    return redact(mlflow)


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
