"""What `study run` was asked for: `RunOptions`, its defaults and its checks (no torch, no Ray).

Every default of a study is decided here, once: `resolved` turns the options a caller gave
(None where left out) into the ones the study runs with, so the command line and
`run_study(RunOptions(...))` get the same searcher, scheduler and sample count.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from datetime import datetime

from study.core.names import SAMPLERS
from study.core.secrets import has_password, redact
from study.core.threshold import parse_threshold
from study.errors import StudyError
from study.search.seed_rule import AUTO, DEFAULT_MAX_REPEATS, Rule

SEARCHES = ("optuna", "random", "grid")
SCHEDULERS = ("asha", "hyperband", "median", "pbt", "fifo")
DEFAULT_SAMPLES = 20  # configurations an optuna or random search tries


NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems

@dataclass(frozen=True)
class RunOptions:
    """Everything `study run` was asked for (the CLI's flags, checked by `check_options`).

    None means "the default", decided by `resolved` from the other options.
    """

    space: str = "default"  # a YAML file, or the name of a shipped space
    data: str = "synthetic"  # a data spec (study.training.data)
    search: str | None = None  # optuna; random under PBT (PBT takes no searcher)
    sampler: str = "tpe"  # Optuna's sampler under --search optuna: tpe, gp or random
    threshold: str = "0.5"  # the report's operating threshold rule (study.core.threshold)
    scheduler: str | None = None  # asha; fifo for grid (its arms must all train to the end)
    num_samples: int | None = None  # 20 for optuna/random, 1 pass for grid
    max_epochs: int | None = None  # overrides the space's epochs
    image_size: int | None = None  # overrides the space's image size
    repeats: int | str = 1  # seeds each configuration trains with; "auto": seeds on demand
    target_ci: float | None = None  # --repeats auto: an arm is done at this CI half-width
    max_repeats: int = DEFAULT_MAX_REPEATS  # --repeats auto: seeds per configuration at most
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # fractions pack several trials on one GPU
    max_concurrent: int | None = None  # None: as many as the cluster holds
    address: str | None = None  # None: a local Ray on 127.0.0.1
    storage_path: str = "./results"  # a folder, or a URI such as s3://bucket/path
    shared_storage: bool = False  # a local storage path every node mounts (NFS)
    name: str | None = None  # the experiment folder; None: study-<date>-<time>
    resume: bool = False
    seed: int = 0  # search seed and first trial seed
    max_failures: int = 0  # retries of a failed trial from its last checkpoint
    checkpoint_every: int = 5  # epochs between checkpoints (0: only at the end)
    num_cpus: int | None = None  # local Ray only: CPUs to offer (None: all)
    verbose: int = 1  # 0: final summary only; 1: progress display; 2: Ray's table, trial logs
    wandb: str | None = None  # a Weights & Biases project: one W&B run per trial
    mlflow: str | None = None  # an MLflow tracking URI (or a local .db file / folder)


def default_name() -> str:
    """`--name` when none is given: study-<date>-<time>."""
    return datetime.now().strftime("study-%Y%m%d-%H%M%S")


def resolved(opts: RunOptions) -> RunOptions:
    """Return `opts` with every default decided: search, scheduler, sample count and name."""
    search = opts.search or ("grid" if opts.repeats == AUTO
                             else "random" if opts.scheduler == "pbt" else "optuna")
    # Grid arms and repeats must all train to the end to be compared.
    scheduler = opts.scheduler or ("fifo" if search == "grid" else "asha")
    num_samples = opts.num_samples
    if num_samples is None:
        num_samples = 1 if search == "grid" else DEFAULT_SAMPLES
    return replace(opts, search=search, scheduler=scheduler, num_samples=num_samples,
                   name=opts.name or default_name())


def run_arguments(opts: RunOptions) -> list[str]:
    """The `study run` arguments that ask for `opts`: a flag for each option not at its
    default (for a shell, `shlex.join` them)."""
    words: list[str] = []
    for f in fields(RunOptions):
        value = getattr(opts, f.name)
        if f.name == "verbose":
            words += ["--quiet"] if value == 0 else ["--verbose"] if value > 1 else []
        elif value is True:
            words.append(f"--{f.name.replace('_', '-')}")
        elif value != f.default and value is not False:
            words += [f"--{f.name.replace('_', '-')}", str(value)]
    return words


def command_line(opts: RunOptions) -> str:
    """The `study run` command that asks for `opts` (for callers that have no argv)."""
    return " ".join(["study", "run", *run_arguments(opts)])


def check_options(opts: RunOptions) -> None:
    """Refuse impossible requests with one line naming the flag and the value."""
    if opts.search is not None and opts.search not in SEARCHES:
        raise StudyError(f"--search must be one of {', '.join(SEARCHES)}, got {opts.search!r}")
    if opts.sampler not in SAMPLERS:
        raise StudyError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {opts.sampler!r}")
    search = opts.search or resolved(opts).search
    if opts.sampler != "tpe" and search != "optuna":
        raise StudyError(f"--sampler {opts.sampler} is Optuna's, so it needs --search optuna; "
                         f"this study searches with {search}")
    try:
        parse_threshold(opts.threshold)
    except ValueError as exc:
        raise StudyError(f"--threshold {exc}") from None
    if opts.scheduler is not None and opts.scheduler not in SCHEDULERS:
        raise StudyError(
            f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {opts.scheduler!r}"
        )
    if opts.scheduler == "pbt" and opts.search in ("grid", "optuna"):
        raise StudyError(
            f"--scheduler pbt cannot be combined with --search {opts.search}: PBT evolves a "
            "randomly sampled population itself; use --search random (the default under PBT)"
        )
    _check_repeats(opts)
    for flag, value, low in (("--num-samples", opts.num_samples, 1),
                             ("--max-epochs", opts.max_epochs, 1),
                             ("--image-size", opts.image_size, 1),
                             ("--max-concurrent", opts.max_concurrent, 1),
                             ("--max-failures", opts.max_failures, 0),
                             ("--checkpoint-every", opts.checkpoint_every, 0),
                             ("--seed", opts.seed, 0),
                             ("--num-cpus", opts.num_cpus, 0)):
        if value is not None and value < low:
            raise StudyError(f"{flag} must be >= {low}, got {value}")
    for flag, value in (("--cpus-per-trial", opts.cpus_per_trial),
                        ("--gpus-per-trial", opts.gpus_per_trial)):
        if not math.isfinite(value) or value < 0:
            raise StudyError(f"{flag} must be a number >= 0, got {value:g}")
    if opts.cpus_per_trial == 0 and opts.gpus_per_trial == 0:
        raise StudyError("--cpus-per-trial and --gpus-per-trial are both 0: a trial needs one")
    if opts.name is not None and (not opts.name or "/" in opts.name or "\\" in opts.name
                                  or opts.name in (".", "..")):
        raise StudyError(f"--name must be a plain folder name without path separators, "
                         f"got {opts.name!r}")
    if opts.name is not None and ("\0" in opts.name or len(os.fsencode(opts.name)) > NAME_MAX):
        raise StudyError(f"--name must be a folder name of at most {NAME_MAX} bytes without NUL, "
                         f"got {len(os.fsencode(opts.name))} bytes ({opts.name[:40]!r}...)")
    if opts.resume and not opts.name:
        raise StudyError("--resume needs --name: the experiment to continue")
    for flag, text in (("--storage-path", opts.storage_path), ("--name", opts.name or "")):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # bytes of another encoding, as os.fsdecode keeps them
            raise StudyError(
                f"{flag} {text!r}: not UTF-8 (byte 0x{ord(text[exc.start]) - 0xDC00:02x} at "
                f"{exc.start}); Ray takes only UTF-8 paths: rename the folder or choose another"
            ) from None
    if has_password(opts.storage_path):
        raise StudyError(
            f"--storage-path {redact(opts.storage_path)}: a password in the storage URI would "
            "be saved in Ray's experiment files; give it the storage's own way (for S3: "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) and the URI without it"
        )
    from study.engine.tracking import check_tracking

    check_tracking(opts.wandb, opts.mlflow)


def _check_repeats(opts: RunOptions) -> None:
    """`--repeats N` (N >= 1), or `--repeats auto` with its target on a grid that trains every
    seed to the end."""
    if opts.repeats != AUTO:
        if not isinstance(opts.repeats, int) or opts.repeats < 1:
            raise StudyError(f"--repeats must be >= 1 or 'auto', got {opts.repeats!r}")
        if opts.target_ci is not None:
            raise StudyError(f"--target-ci {opts.target_ci:g} needs --repeats auto (it says "
                             "when to stop adding seeds)")
        return
    if opts.target_ci is None:
        raise StudyError("--repeats auto needs --target-ci W: the 95 % CI half-width, in "
                         "points, at which a configuration has seeds enough")
    Rule(opts.target_ci, opts.max_repeats)  # refuses a target <= 0 and a cap below 2
    if opts.search not in (None, "grid"):
        raise StudyError(f"--repeats auto works with --search grid (it adds seeds to a grid's "
                         f"configurations), got --search {opts.search}")
    if opts.scheduler not in (None, "fifo"):
        raise StudyError(f"--repeats auto needs every seed trained to the end (--scheduler "
                         f"fifo, the grid's default), got --scheduler {opts.scheduler}")
    if opts.num_samples not in (None, 1):
        raise StudyError(f"--repeats auto runs the grid once, adding seeds; --num-samples "
                         f"must be 1, got {opts.num_samples}")
