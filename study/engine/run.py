"""Runs (or resumes) a Ray Tune study: `run_study` and the pieces it puts together.

Only this module (called from the CLI) starts Ray, through `ray_session`. What the study
runs with comes from `options` (defaults), `builders` (space, searcher,
scheduler), `resume` (the checks before Ray restores) and `experiment` (the
folder and its study.json); Ray's private names stay in `study.core.ray_compat`.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from study.core.files import read_trial_states
from study.core.names import FINISHED, STATE_GLOB, TrialStatus
from study.engine.builders import (
    budget_epochs,
    build_search,
    expected_trials,
    make_scheduler,
    pbt_interval,
    prepared_space,
)
from study.engine.cluster import check_address, is_local_path
from study.engine.experiment import (
    META_FILE,
    OPTUNA_JOURNAL,
    check_writable,
    live_optuna_file,
    remove_unstarted,
    resume_command,
    storage_root,
    study_record,
)
from study.engine.journal import (
    begin_extension,
    checked_journal,
    only_this_process,
    settle_extension,
)
from study.engine.options import RunOptions, check_options, command_line, resolved
from study.engine.resume import check_resumable
from study.engine.signals import sigterm_as_interrupt
from study.engine.tracking import take_credentials
from study.errors import StudyError
from study.search.space import SearchSpace, fit_image_size
from study.training.data import Dataset, load_data, resolve_spec

RAY_ADDRESS_ENV = "RAY_ADDRESS"  # the cluster ray.init joins when given no address
# What the driver imports once Ray is up, imported while it starts (the driver mostly waits
# then; on 2 cores these are about 3 s of a study's start): Ray Tune; tensorboardX, for Ray's
# TensorBoard logger (it imports PyTorch when installed); Optuna's storages; and the
# integrations that Ray Tune's fit() imports to count callbacks for its usage statistics
# (MLflow's and W&B's import their whole SDKs when installed).
DRIVER_IMPORTS = ("ray.tune", "tensorboardX", "optuna.storages", "ray.air.integrations.comet",
                  "ray.air.integrations.mlflow", "ray.air.integrations.wandb",
                  "ray.tune.logger.aim")


@dataclass(frozen=True)
class StudyRun:
    """A finished (or interrupted) study: where it lives and how its trials ended."""

    path: Path  # the experiment folder: Ray's files plus study.json and summary/
    num_trials: int
    num_errors: int
    interrupted: bool
    nothing_new: bool = False  # a finished study resumed without asking for more trials


def run_study(opts: RunOptions, command: str | None = None) -> StudyRun:
    """Run (or resume) a study and return where its results are.

    `command` is what study.json records as the command that started the study (default:
    the `study run` command that asks for `opts`).
    """
    if opts.address is None and os.environ.get(RAY_ADDRESS_ENV):
        # ray.init would connect there by itself: it is this study's --address, checked as one.
        opts = replace(opts, address=os.environ[RAY_ADDRESS_ENV])
    # A password in --mlflow goes into MLflow's environment; only the masked URI goes on.
    opts = replace(opts, mlflow=take_credentials(opts.mlflow))
    check_options(opts)
    opts = resolved(opts)
    check_address(opts.address)  # an unreachable --address fails before data or Ray load
    space = prepared_space(opts)
    epochs = budget_epochs(space)  # a searched epochs is refused before anything is written
    root = storage_root(opts.storage_path)
    local = is_local_path(opts.storage_path)
    exp_dir = Path(root) / opts.name
    data_spec = resolve_spec(opts.data)
    if local:
        _check_experiment_folder(opts, exp_dir, space, data_spec)
    # One process at a time continues an experiment (a new one is claimed by its mkdir).
    with only_this_process(exp_dir) if local and opts.resume else nullcontext():
        extra = 0
        if local and opts.resume:
            checked_journal(exp_dir, exp_dir.name)  # before anything is appended to it
            extra, finished = _resume_plan(opts, exp_dir)
            if finished is not None:
                return finished
        try:
            return _run_claimed(Plan(opts, space, epochs, root, local, exp_dir, data_spec,
                                     command, extra))
        except BaseException:
            if local and not opts.resume:
                remove_unstarted(exp_dir)  # so that the same command can simply be run again
            raise


@dataclass(frozen=True)
class Plan:
    """A study's run once its options are checked and its experiment folder is its own."""

    opts: RunOptions  # resolved: every default filled in
    space: SearchSpace
    epochs: int  # each trial's planned epochs
    root: str  # the storage path as Ray gets it (a local path absolute, a URI as given)
    local: bool  # the storage path is on this machine's file system
    exp_dir: Path
    data_spec: str
    command: str | None  # what study.json records as the command that started the study
    extra: int = 0  # trials added to a finished study (`--resume --num-samples`)


def _run_claimed(plan: Plan) -> StudyRun:
    """`run_study` once the experiment folder is this run's (created, or checked to resume)."""
    opts = plan.opts
    check_local_gpus(opts)
    importing = _import_in_background(DRIVER_IMPORTS)
    data = load_data(plan.data_spec)
    plan = replace(plan, space=fit_image_size(plan.space, data.image_size))

    from study.core.atomic_fs import failed_writes
    from study.core.ray_compat import (
        keep_starting_workers,
        safe_checkpoint_deletion,
        shutdown_ray,
        wandb_key_kept_from_runtime_env,
    )
    from study.engine.ray_session import init_ray
    from study.engine.storage_faults import refused_write, storage_fault

    started = init_ray(opts)
    importing.join()
    try:
        tuner = _tuner(plan, data)
        refused_before = len(failed_writes())
        with safe_checkpoint_deletion(), keep_starting_workers(), \
                wandb_key_kept_from_runtime_env() if opts.wandb else nullcontext():
            results = _fit(tuner)
        fault = storage_fault(refused_before, plan.exp_dir, _resume(plan))
        if fault is not None:
            raise fault
        statuses = ({k: v["status"] for k, v in read_trial_states(plan.exp_dir).items()}
                    if plan.local else {})
        if plan.local:
            settle_extension(plan.exp_dir, len(statuses))
        unfinished = sum(1 for s in statuses.values() if s not in FINISHED)
        return StudyRun(plan.exp_dir, len(results), len(results.errors), interrupted=(
            unfinished > 0 or len(statuses) < expected_trials(opts, plan.space)))
    except OSError as exc:
        # One of the study's own files (study.json, the Optuna journal) refused: the same
        # line as for Ray's, where the file is in the experiment folder.
        if plan.local and exc.filename and _inside(exc.filename, plan.exp_dir):
            raise refused_write(plan.exp_dir, str(exc.filename), exc, _resume(plan)) from None
        raise
    finally:
        if started:
            shutdown_ray()


def _resume(plan: Plan) -> str | None:
    """The command that continues the study, or None where Ray saved nothing to continue."""
    if plan.opts.resume or any(plan.exp_dir.glob(STATE_GLOB)):
        return resume_command(plan.exp_dir.name, plan.root)
    return None


def _inside(path: str | os.PathLike[str], folder: Path) -> bool:
    """Whether `path` lies in `folder` (both made absolute, links left as they are)."""
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))


def _import_in_background(modules: tuple[str, ...]) -> threading.Thread:
    """Start importing `modules` in a thread, while the driver loads data and waits for Ray to
    start. Written by hand: no library warms a process's imports. A module that fails here is
    imported again where it is used, and fails there as it would have."""

    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001, S110 - raised again at its real import
                pass

    thread = threading.Thread(target=run, name="study-imports", daemon=True)
    thread.start()
    return thread


def _resume_plan(opts: RunOptions, exp_dir: Path) -> tuple[int, StudyRun | None]:
    """(trials to add, None) for `--resume`; (0, a StudyRun) when there is nothing to do.

    `--num-samples` above the study's count adds trials to a finished study (Ray's
    `Tuner.restore` cannot add trials: a restored search keeps its sample count); a study
    still unfinished resumes as it is first.
    """
    from study.engine.resume import read_study_meta

    meta = read_study_meta(exp_dir)
    before = meta["options"].get("num_samples")
    statuses = read_trial_states(exp_dir)
    finished = (bool(statuses) and len(statuses) >= int(meta.get("expected_trials") or 0)
                and all(s["status"] in FINISHED for s in statuses.values()))
    extra = opts.num_samples - before if isinstance(before, int) else 0
    if extra > 0 and not finished:
        raise StudyError(
            f"--resume --num-samples {opts.num_samples}: {exp_dir} has unfinished trials; "
            "resume it without --num-samples first, then add trials"
        )
    if extra > 0 and not live_optuna_file(exp_dir).is_file():
        raise StudyError(
            f"--resume --num-samples {opts.num_samples}: {exp_dir} has no {OPTUNA_JOURNAL} "
            "(its search was not kept as it ran), so its search cannot continue"
        )
    if extra <= 0 and finished:
        settle_extension(exp_dir, len(statuses))  # an extension that never began is dropped
        errors = sum(1 for s in statuses.values() if s["status"] == TrialStatus.ERROR)
        return 0, StudyRun(exp_dir, len(statuses), errors, interrupted=False, nothing_new=True)
    return max(extra, 0), None


def _check_experiment_folder(opts: RunOptions, exp_dir: Path, space: SearchSpace,
                             data_spec: str) -> None:
    """Refuse a local experiment folder this run cannot write, resume or start in."""
    check_writable(exp_dir.parent)
    if opts.resume:
        check_resumable(exp_dir, space, data_spec)
        return
    try:
        # Claimed by creating it: of two runs started together with one --name, one wins.
        exp_dir.mkdir()
    except FileExistsError:
        raise StudyError(
            f"--name {opts.name}: {exp_dir} already exists; pass --resume to continue it or "
            "choose another --name (nothing was overwritten)"
        ) from None
    except OSError as exc:
        raise StudyError(f"--name {opts.name}: {exp_dir} cannot be created "
                         f"({exc.strerror})") from None


def check_local_gpus(opts: RunOptions) -> None:
    """For a local Ray, refuse more GPUs per trial than PyTorch sees, before Ray starts.

    A trial trains on CUDA only where PyTorch sees it, so that is the machine's count.
    (On a cluster, `check_trial_resources` asks Ray once connected.)
    """
    if opts.address is not None or opts.gpus_per_trial <= 0:
        return
    import torch

    visible = torch.cuda.device_count()
    if opts.gpus_per_trial > visible:
        raise StudyError(
            f"--gpus-per-trial {opts.gpus_per_trial:g} is more than the {visible} GPU(s) "
            "PyTorch sees on this machine, so no trial could start; lower it (0 trains on "
            "CPUs) or pass the --address of a Ray cluster with GPUs"
        )


def _tuner(plan: Plan, data: Dataset) -> Any:
    """Check the connected cluster, then return the Tuner: restored, or new with study.json.

    With `plan.extra` > 0, a new Tuner in the same experiment folder runs that many more
    trials, its Optuna searcher continuing the study kept in its live Optuna file.
    """
    opts, space, epochs, root = plan.opts, plan.space, plan.epochs, plan.root
    exp_dir, local, command, extra = plan.exp_dir, plan.local, plan.command, plan.extra
    import ray
    from ray import tune

    from study.core.atomic_fs import atomic_local_filesystem
    from study.core.files import write_json_atomic
    from study.core.ray_compat import fresh_json_logger
    from study.engine.cluster import check_storage_path, check_trial_resources, reachable_resources
    from study.engine.progress import StudyProgress, earlier_sessions
    from study.engine.ray_session import trial_slots
    from study.engine.storage_faults import StorageFaultStopper
    from study.engine.tracking import tracking_callbacks
    from study.engine.trainable import train_trial

    check_trial_resources(opts.cpus_per_trial, opts.gpus_per_trial, reachable_resources())
    check_storage_path(root, ray.nodes(), opts.shared_storage)
    checkpoint_every = pbt_interval(epochs) if opts.scheduler == "pbt" else opts.checkpoint_every
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, data=data, data_key=uuid.uuid4().hex,
                             checkpoint_every=checkpoint_every,
                             threads=max(1, int(opts.cpus_per_trial))),
        {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial},
    )
    # Locally, every file Ray writes to the storage path appears whole or not at all, so
    # a driver killed mid-sync leaves the last experiment state and result.json intact.
    storage_fs = atomic_local_filesystem() if local else None
    if opts.resume and not extra:
        try:
            return tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_errored=False,
                                      storage_filesystem=storage_fs)
        except Exception as exc:  # Ray raises many kinds for a damaged experiment folder
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise StudyError(f"--resume: {exp_dir} cannot be restored ({first})") from None
    this_run = replace(opts, num_samples=extra) if extra else opts
    slots = trial_slots(opts.cpus_per_trial, opts.gpus_per_trial)
    # Under --search optuna the Optuna study lives in the experiment folder as it runs, so
    # optuna-dashboard shows it live (a remote storage path keeps it in memory).
    live_file = live_optuna_file(exp_dir) if local else None
    if local:
        exp_dir.mkdir(parents=True, exist_ok=True)
    search_alg, param_space, num_samples = build_search(this_run, space, slots, live_file)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, search_alg=search_alg,
            scheduler=make_scheduler(opts, space, epochs), num_samples=num_samples,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=opts.name,
            storage_path=root,
            storage_filesystem=storage_fs,
            # A refused write to the storage path stops the study as Ctrl-C would.
            stop=StorageFaultStopper() if local else None,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            progress_reporter=_reporter(space),
            # Ray's own table only with --verbose; otherwise the progress display (or nothing).
            verbose=1 if opts.verbose > 1 else 0,
            callbacks=[fresh_json_logger(),
                       *tracking_callbacks(opts.name, exp_dir if local else None, opts.wandb,
                                           opts.mlflow),
                       *([StudyProgress(expected_trials(opts, space), epochs,
                                        space.metric, space.mode,
                                        earlier=earlier_sessions(exp_dir) if extra else (0, 0))]
                         if opts.verbose == 1 else [])],
        ),
    )
    if local and extra:
        # study.json keeps how the study began; the trials added count once Ray's saved state
        # holds them (settle_extension), so an extension stopped before it began is undone.
        begin_extension(exp_dir, opts.num_samples, expected_trials(opts, space),
                        command or command_line(opts))
    elif local:
        record = study_record(opts, space, data, epochs, expected_trials(opts, space),
                              command or command_line(opts), ray.__version__)
        write_json_atomic(exp_dir / META_FILE, record)
    return tuner


def _fit(tuner: Any) -> Any:
    """`tuner.fit()` without Ray's "Tuner.restore(...)" hint (the CLI prints `--resume`)."""
    from study.core.ray_compat import fault_logs
    from study.engine.storage_faults import TrialStorageFaults

    hint, faults = _NoRestoreHint(), TrialStorageFaults()
    logging.getLogger("ray.tune.tune").addFilter(hint)
    for name in fault_logs():
        logging.getLogger(name).addFilter(faults)
    try:
        # On Ctrl-C, Ray stops the trials, saves the experiment state and returns. SIGTERM
        # is taken back from the handler ray.init installed, and handled the same way.
        with sigterm_as_interrupt(during_fit=True):
            return tuner.fit()
    finally:
        logging.getLogger("ray.tune.tune").removeFilter(hint)
        for name in fault_logs():
            logging.getLogger(name).removeFilter(faults)


def _reporter(space: SearchSpace) -> Any:
    from ray.tune import CLIReporter

    return CLIReporter(
        metric_columns={"epoch": "epoch", "val_accuracy": "val acc", "val_loss": "val loss",
                        "val_auroc": "val AUROC"},
        parameter_columns=space.searched,
        max_progress_rows=12, max_error_rows=3, max_report_frequency=15,
        sort_by_metric=True,
    )


class _NoRestoreHint(logging.Filter):
    """Drops Ray's "Resume experiment with: Tuner.restore(...)": the CLI prints `study run
    --resume ...` instead, which is what a user of this tool runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()
