"""The vocabulary every layer shares: the experiment's file names and the trials' statuses.

A leaf module (standard library only): the engine writes these files and statuses, analysis/
reads them back from disk, so both spell them from here.
"""

from __future__ import annotations

from enum import Enum

# --- the experiment folder (Ray Tune's files and the study's own) ------------------------------
META_FILE = "study.json"  # the study's own record beside Ray's files
STATE_PREFIX = "experiment_state-"  # Ray's experiment state, one file per driver session
STATE_GLOB = f"{STATE_PREFIX}*.json"
TUNER_FILE = "tuner.pkl"  # Ray's pickled Tuner, which `Tuner.restore` loads
# --search optuna: the live Optuna study, an Optuna journal file (optuna-dashboard reads it).
# Journal rather than SQLite: each epoch's report is an appended line, not an SQL transaction
# (a seventh of the driver's time per Optuna call, which the trials wait on every epoch).
OPTUNA_JOURNAL = "optuna_journal.log"
OPTUNA_DB = "optuna.db"  # SQLite: the summary's Optuna study, and older experiments' live one
PARAMS_FILE = "params.json"  # a trial folder's configuration, written by Ray Tune
RESULT_FILE = "result.json"  # a trial folder's reported results, one JSON line per report
TRIAL_STATE_FILE = "state.pt"  # a trial checkpoint's training state (torch, weights only)
# The final checkpoint's per-image test predictions of each seed's kept weights (numpy .npz, no
# pickle): `prob` (K, N) float16, `predicted` (K, N) uint8, `labels` (N,) uint8, `seeds` (K,).
PREDICTIONS_FILE = "test_predictions.npz"

# --- a trained run (`study train --out`, a trial's export) -------------------------------------
MODEL_FILE = "model.pt"  # weights and the config that built them (torch, weights only)
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
RUN_FILES = (CONFIG_FILE, HISTORY_FILE, METRICS_FILE, MODEL_FILE)

# --- summary/, written by `study report` -------------------------------------------------------
SUMMARY_DIR = "summary"
FIGURES_DIR = "figures"
LEADERBOARD = "leaderboard.csv"
BEST_CONFIG_JSON = "best_config.json"
BEST_CONFIG_YAML = "best_config.yaml"
HOMEWORK_CSV = "homework.csv"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"


class TrialStatus(str, Enum):
    """Ray Tune's status of a trial, as its experiment state stores it."""

    __hash__ = str.__hash__  # equal to its text, so it hashes as the text (sets, dict keys)

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    TERMINATED = "TERMINATED"
    ERROR = "ERROR"

    def __str__(self) -> str:
        return self.value


FINISHED = (TrialStatus.TERMINATED, TrialStatus.ERROR)  # Ray runs these no further


class RunStatus(str, Enum):
    """How one run (a seed of a trial) ended, as the analysis tables and the report say it."""

    __hash__ = str.__hash__

    COMPLETED = "completed"  # every planned epoch
    STOPPED = "stopped"  # stopped early by the scheduler
    DIVERGED = "diverged"  # its loss became NaN or inf
    ERROR = "error"  # the trial raised
    UNFINISHED = "unfinished"  # the study was interrupted during it
    RUNNING = "running"
    PENDING = "pending"
    PAUSED = "paused"
    NO_RESULTS = "no_results"  # a trial folder without one reported epoch: it never trained

    def __str__(self) -> str:
        return self.value


# Runs still under way (or cut off) when the experiment was read: no final score yet.
IN_PROGRESS = (RunStatus.RUNNING, RunStatus.PENDING, RunStatus.PAUSED, RunStatus.UNFINISHED)

# `--sampler`: Optuna's TPESampler, GPSampler, RandomSampler (study.search.searcher builds them)
SAMPLERS = ("tpe", "gp", "random")
