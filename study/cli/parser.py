"""The command line's parser: `study train | evaluate | run | report | slurm | kuberay`, flags.

Flags show their real defaults (argparse's ArgumentDefaultsHelpFormatter); `given_flags` says
which a user typed, so `--resume` and `--config` fill in the rest. Importing this module loads
neither torch nor Ray, so `study --help` is quick.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from study.core.names import SAMPLERS
from study.core.threshold import RULE_HELP
from study.engine.options import SCHEDULERS, SEARCHES, RunOptions
from study.errors import StudyError
from study.search.seed_rule import parse_repeats


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's own "(default: ...)" after each help, except for switches and where the
    default is None (decided from other flags; the help says how)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.nargs == 0:  # decided later, or a switch
            return action.help
        return super()._get_help_string(action)


class _Given(argparse.Action):
    """argparse's plain store, also noting that the flag was given (in `given_flags`).

    Flags show their real defaults; `study run --resume` and `study train --config` still
    take a value from the study or the file for every flag left out.
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.given_flags = {*getattr(namespace, "given_flags", ()), self.dest}


def given_flags(args: argparse.Namespace) -> set[str]:
    """The destinations of the flags given on the command line (not left to their default)."""
    return set(getattr(args, "given_flags", ()))


def _subparser(sub: argparse._SubParsersAction, name: str, **kwargs: str
               ) -> argparse.ArgumentParser:
    p = sub.add_parser(name, formatter_class=_HelpFormatter, **kwargs)
    p.register("action", None, _Given)  # every flag without its own action records itself
    p.register("action", "store", _Given)
    return p


def _repeats(text: str) -> int | str:
    """argparse's view of `parse_repeats`: bad input is a usage error (one line, status 2)."""
    try:
        return parse_repeats(text)
    except StudyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# `study run` flags that a Slurm or KubeRay job decides itself: the cluster's address, resuming
# (the job resumes on its own when requeued or retried) and the local Ray's CPUs.
JOB_DECIDES = ("address", "resume", "resume_or_start", "num_cpus")
# A job's --max-failures: a trial whose node is preempted or lost is retried from its last
# checkpoint instead of ending as an error.
JOB_MAX_FAILURES = 3


def add_run_flags(p: argparse.ArgumentParser, job: bool = False) -> None:
    """Add the flags of `study run` to `p`: all of them, or with `job` those a job passes on to
    the `study run` it runs (not JOB_DECIDES)."""
    def add(*names: str, **kwargs: object) -> None:
        dest = str(kwargs.get("dest") or names[-1].lstrip("-").replace("-", "_"))
        if not (job and dest in JOB_DECIDES):
            p.add_argument(*names, **kwargs)

    # The defaults shown are RunOptions' (set below); those that are None are decided by
    # study.engine.options.resolved from the other flags, as the help says.
    add("--space", help="search space YAML, or a shipped one: default, homework")
    add("--data", help="data spec")
    add("--search", choices=SEARCHES,
        help="optuna (TPE; the default), random (the default under --scheduler pbt or with "
        "--repeats auto: grid), or grid (Ray's variant generator)")
    add("--sampler", choices=SAMPLERS,
        help="Optuna's sampler under --search optuna: tpe (multivariate, constant liar; the "
        "default), gp (Gaussian process) or random; study.json records its every setting")
    add("--threshold", help=f"the report's operating threshold on P(pneumonia): {RULE_HELP}; "
        "a rule is applied to each run's validation scores (default 0.5, the trials' own)")
    add("--scheduler", choices=SCHEDULERS,
        help="early stopping / population scheduler: asha by default, fifo for --search grid, "
        "whose arms and repeats must all train to the end")
    add("--num-samples", type=int,
        help="configurations to try: 20 by default; for grid, passes over the grid, 1 by "
        "default")
    add("--max-epochs", type=int, help="override the space's epochs")
    add("--image-size", type=int, help="override the space's image size")
    add("--repeats", type=_repeats,
        help="train every configuration with this many seeds (seed, seed+1, ...), stacked in "
        "one trial that reports their mean, or 'auto': on a grid, add seeds to each "
        "configuration until its 95 %% CI half-width is at most --target-ci points or it has "
        "--max-repeats seeds")
    add("--target-ci", type=float,
        help="--repeats auto: the CI half-width, in points of test accuracy, at which a "
        "configuration has seeds enough")
    add("--max-repeats", type=int, help="--repeats auto: seeds per configuration at most")
    add("--cpus-per-trial", type=float, help="CPUs per trial")
    add("--gpus-per-trial", type=float,
        help="GPUs per trial, fractions allowed (0.25 packs 4 trials on a GPU)")
    add("--max-concurrent", type=int, help="at most this many trials at once")
    add("--address", help="Ray cluster: auto, host:port or ray://host:port "
        "(default: a local Ray on 127.0.0.1, dashboard off)")
    add("--storage-path",
        help="where experiments go: a folder or a URI such as s3://bucket/path")
    add("--shared-storage", action="store_true",
        help="declare a local --storage-path shared by all nodes (an NFS mount)")
    add("--name", help="experiment name (default: study-<date>-<time>)")
    add("--resume", action="store_true",
        help="continue the experiment --name (in --storage-path) with the options it started "
        "with; finished trials are kept, unfinished ones continue from their last checkpoint")
    add("--resume-or-start", action="store_true",
        help="continue the experiment --name if it exists in --storage-path, as --resume "
        "does, else start it with these flags (what a requeued or retried job runs)")
    add("--seed", type=int, help="search seed and first trial seed")
    add("--max-failures", type=int,
        help="retry a failed trial this many times from its last checkpoint")
    add("--checkpoint-every", type=int,
        help="checkpoint every N epochs, and at the end (0: only at the end)")
    add("--num-cpus", type=int, help="CPUs a local Ray may use (default: all)")
    add("--quiet", action="store_true",
        help="print only the final summary (no progress display)")
    add("-v", "--verbose", dest="run_verbose", action="store_true",
        help="Ray's own status table and the trials' log lines instead of the progress "
        "display")
    add("--wandb", metavar="PROJECT",
        help="also log every trial to this Weights & Biases project (pip install "
        "'xray-study[wandb]'; WANDB_MODE=offline keeps it local)")
    add("--mlflow", metavar="URI",
        help="also log every trial to this MLflow tracking URI, e.g. sqlite:///mlflow.db or "
        "http://host:5000 (pip install 'xray-study[mlflow]')")
    p.set_defaults(**{f.name: f.default for f in fields(RunOptions)
                      if f.default is not None and f.default is not False
                      and f.name != "verbose"  # `study -v` stays the logging switch
                      and p.get_default(f.name) is None
                      and not (job and f.name in JOB_DECIDES)})
    if job:
        p.set_defaults(max_failures=JOB_MAX_FAILURES)


def _add_run_parser(sub: argparse._SubParsersAction) -> None:
    p = _subparser(
        sub, "run",
        help="run a hyperparameter study (the main job)",
        description="Run a Ray Tune study: Optuna TPE + ASHA over search_spaces/default.yaml on "
        "synthetic data by default, on a local Ray. Writes summary/ into the experiment folder.",
    )
    add_run_flags(p)


def _add_report_parser(sub: argparse._SubParsersAction) -> None:
    p = _subparser(
        sub, "report",
        help="figures, leaderboard and best-config exports from results on disk",
        description="Read a finished, partial or copied experiment folder (no Ray needed) and "
        "write summary/: best_config.json/.yaml, leaderboard.csv, report.md, figures/.",
    )
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="the experiment folder")
    p.add_argument("--out", help="where to write (by default RESULTS_DIR/summary)")
    p.add_argument("--threshold", help=f"the operating threshold: {RULE_HELP} (by default the "
                   "study's --threshold)")


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    from study.training.config import TrialConfig

    p = _subparser(
        sub, "train",
        help="train one configuration without Ray (same code path as a trial)",
        description="Train one configuration, without Ray. Defaults are the homework lab's.",
    )
    p.add_argument("--config", help="YAML or JSON file of config keys (flags override it)")
    # Defaults shown are TrialConfig's; a flag left out keeps the --config file's value.
    p.add_argument("--data", default="synthetic", help="data spec")
    p.add_argument("--model", help="mlp (the homework's) or cnn")
    p.add_argument("--loss", help="bce or ce")
    p.add_argument("--batch-size", type=int, help="examples per step")
    p.add_argument("--depth", type=int, help="hidden layers")
    p.add_argument("--width", type=int, nargs="+", help="one width, or one per layer")
    p.add_argument("--dropout", type=float, help="dropout after each hidden layer")
    p.add_argument("--no-batchnorm", dest="batchnorm", action="store_const", const=False,
                   help="leave out BatchNorm1d")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--weight-decay", type=float, help="L2 weight decay")
    p.add_argument("--optimizer", help="adam or sgd")
    p.add_argument("--schedule", help="learning-rate schedule: none or cosine")
    p.add_argument("--epochs", type=int, help="epochs to train")
    p.add_argument("--seed", type=int, help="model init and batch order")
    p.add_argument("--repeats", type=int,
                   help="train seeds seed, seed+1, ... together, stacked in one model")
    p.add_argument("--image-size", type=int,
                   help="downsample to this side (never upsamples; by default the data's size)")
    p.add_argument("--kernel-size", type=int, help="CNN: convolution kernel side (odd)")
    p.add_argument("--pool", help="CNN: max or avg pooling after each block")
    p.add_argument("--augment", help="training images: none, light or strong (hflip: --config)")
    p.add_argument("--class-weight", help="none, or balanced by the training split's counts")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", help="folder for config.json, history.csv, metrics.json, model.pt")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.set_defaults(**{f.name: f.default for f in fields(TrialConfig)
                      if f.name != "batchnorm" and f.default is not None})


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = _subparser(
        sub, "evaluate",
        help="score a trained model on a data set's test split",
        description="Score a saved model (study train --out, or a study's best model) on the "
        "test split of --data, correctly for both losses.",
    )
    p.add_argument("--checkpoint", required=True, help="model.pt or the folder holding it")
    p.add_argument("--data", default="synthetic", help="data spec")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")


def _add_job_flags(p: argparse.ArgumentParser) -> None:
    """The flags `study slurm` and `study kuberay` share. Counts and sizes are read as text and
    checked by study.engine.jobs, so bad ones are one line (exit 2) like every other error."""
    p.add_argument("--ray-args", default="",
                   help="more `ray start` options for every Ray node, as one string after "
                   "'=', e.g. --ray-args='--object-store-memory 4000000000'")
    p.add_argument("--out", metavar="FILE",
                   help="write the job to FILE (only once every check passed) instead of "
                   "standard output")


def _add_slurm_parser(sub: argparse._SubParsersAction) -> None:
    p = _subparser(
        sub, "slurm",
        help="write an sbatch script that runs the study on a Slurm allocation",
        description="Write a complete sbatch script: one Ray node per Slurm node (the head and "
        "the study's driver on the first), ports chosen from the job id, token authentication, "
        "results on a --storage-path every node reaches. Requeued (preemption, or --stop-before "
        "the time limit) it resumes the study. Takes every `study run` flag but --address, "
        "--resume and --num-cpus. Submit with: study slurm ... > job.sbatch && sbatch job.sbatch",
    )
    add_run_flags(p, job=True)
    g = p.add_argument_group("Slurm")
    g.add_argument("--nodes", default="1", help="Slurm nodes, one Ray node each")
    g.add_argument("--cpus-per-node", default="4", help="CPUs of each node for Ray")
    g.add_argument("--gpus-per-node", default="0", help="GPUs of each node for Ray")
    g.add_argument("--mem-per-node", help="memory of each node, e.g. 32G (default: the "
                   "partition's)")
    g.add_argument("--partition", help="Slurm partition (default: the cluster's)")
    g.add_argument("--account", help="Slurm account to charge")
    g.add_argument("--time", default="1:00:00",
                   help="time limit: MINUTES, HH:MM:SS, D-HH or D-HH:MM:SS")
    g.add_argument("--stop-before", default="300",
                   help="seconds before the time limit at which the study is stopped, saved "
                   "and the job requeued to resume it")
    g.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="a shell line the job runs first, e.g. 'module load cuda' (repeatable; "
                   "default: put this environment's bin folder first on PATH)")
    _add_job_flags(p)


def _add_kuberay_parser(sub: argparse._SubParsersAction) -> None:
    p = _subparser(
        sub, "kuberay",
        help="write a KubeRay RayJob manifest that runs the study on Kubernetes",
        description="Write a KubeRay RayJob (ray.io/v1): a Ray cluster of a head and --workers "
        "worker pods, token authentication from a Secret, results on a PVC or an s3:// path, "
        "and an entrypoint that resumes the experiment on a retried submission. Takes every "
        "`study run` flag but --address, --resume and --num-cpus. Submit with: "
        "study kuberay ... > rayjob.yaml && kubectl apply -f rayjob.yaml",
    )
    add_run_flags(p, job=True)
    g = p.add_argument_group("Kubernetes")
    g.add_argument("--image", help="container image with xray-study and Ray 2.60 installed "
                   "(required)")
    g.add_argument("--workers", default="1", help="worker pods, one Ray node each")
    g.add_argument("--cpus-per-worker", default="4", help="CPUs of each worker pod")
    g.add_argument("--gpus-per-worker", default="0", help="GPUs (nvidia.com/gpu) of each "
                   "worker pod")
    g.add_argument("--memory-per-worker", default="16Gi", help="memory of each worker pod")
    g.add_argument("--head-cpus", default="2", help="CPUs of the head pod (it runs the "
                   "study's driver, no trials)")
    g.add_argument("--head-memory", default="8Gi", help="memory of the head pod")
    g.add_argument("--pvc", metavar="CLAIM", help="a ReadWriteMany PersistentVolumeClaim "
                   "mounted on every pod for the results")
    g.add_argument("--pvc-mount", default="/mnt/studies",
                   help="where --pvc is mounted; the default --storage-path with --pvc")
    g.add_argument("--token-secret", metavar="SECRET",
                   help="Secret whose key auth_token holds the Ray token (default: "
                   "NAME-ray-token)")
    g.add_argument("--env-secret", metavar="SECRET",
                   help="Secret whose keys become environment variables of every pod, e.g. "
                   "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for s3://")
    g.add_argument("--service-account", help="service account of the pods (e.g. one with "
                   "bucket access)")
    g.add_argument("--namespace", help="namespace of the RayJob (default: kubectl's)")
    g.add_argument("--queue", help="Kueue LocalQueue: adds the kueue.x-k8s.io/queue-name label")
    g.add_argument("--backoff-limit", default="3",
                   help="retries of the whole RayJob (each on a new Ray cluster, resuming the "
                   "study)")
    g.add_argument("--ttl", default="300",
                   help="seconds the finished Ray cluster is kept (ttlSecondsAfterFinished)")
    _add_job_flags(p)


def build_parser() -> argparse.ArgumentParser:
    """Return the `study` argument parser with all subcommands."""
    parser = argparse.ArgumentParser(
        prog="study",
        description="Hyperparameter studies of a PyTorch MLP on chest X-rays, with Ray Tune "
        "and Optuna.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_parser(sub)
    _add_train_parser(sub)
    _add_evaluate_parser(sub)
    _add_report_parser(sub)
    _add_slurm_parser(sub)
    _add_kuberay_parser(sub)
    return parser
