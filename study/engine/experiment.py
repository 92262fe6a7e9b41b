"""The experiment folder on disk: where it is, the study's record in it, and its cleanup."""

from __future__ import annotations

import shlex
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from study.core.names import META_FILE, OPTUNA_DB, OPTUNA_JOURNAL, STATE_GLOB, TUNER_FILE
from study.core.secrets import redacted
from study.engine.cluster import is_local_path
from study.engine.options import RunOptions
from study.errors import StudyError
from study.search.seed_rule import AUTO, SEEDS_ON_DEMAND, Rule


def live_optuna_file(exp_dir: Path) -> Path:
    """The file of an experiment's live Optuna study: its optuna.db if it has one (made
    before the journal), else its journal."""
    older = exp_dir / OPTUNA_DB
    return older if older.is_file() else exp_dir / OPTUNA_JOURNAL


def storage_root(storage_path: str) -> str:
    """Return the storage path as Ray should get it: URIs as they are, local paths absolute."""
    if not is_local_path(storage_path):
        return storage_path
    path = storage_path[len("file://"):] if storage_path.startswith("file://") else storage_path
    return str(Path(path).expanduser().resolve())


def resume_command(name: str, storage: str | Path) -> str:
    """The `study run --resume` command, quoted so that it can be pasted into a shell."""
    return shlex.join(["study", "run", "--resume", "--name", name, "--storage-path",
                       str(storage)])


def experiment_dir(opts: RunOptions) -> Path | None:
    """The experiment folder of `opts` (None for a remote --storage-path or no --name)."""
    if not opts.name or not is_local_path(opts.storage_path):
        return None
    return Path(storage_root(opts.storage_path)) / opts.name


def check_writable(root: Path) -> None:
    """Fail before any trial starts if results cannot be written under `root`."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-check-{uuid.uuid4().hex}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise StudyError(
            f"--storage-path {root}: results cannot be written there ({exc.strerror})"
        ) from None


def study_record(opts: RunOptions, space: Any, data: Any, epochs: int, expected: int,
                 command: str, ray_version: str) -> dict[str, Any]:
    """The content of study.json: how the study was started, on what, and what it expects.

    `space` is the prepared SearchSpace and `data` the loaded Dataset.
    """
    from dataclasses import asdict

    from study.engine.builders import sampler_of

    return redacted({  # no password of a URI (a command, an option) is ever recorded
        "command": command,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "options": asdict(opts),
        "search": opts.search,
        "sampler": sampler_of(opts),  # every setting, written out (None: no Optuna)
        "scheduler": opts.scheduler,
        "space_file": space.source,
        "space": space.raw,
        "searched": space.searched,
        "metric": space.metric,
        "mode": space.mode,
        "epochs": epochs,
        "repeats": opts.repeats,
        "expected_trials": expected,
        "data": data.source,
        "data_image_size": data.image_size,
        "data_sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "ray_version": ray_version,
        **({SEEDS_ON_DEMAND: Rule(opts.target_ci, opts.max_repeats).to_dict()}
           if opts.repeats == AUTO and opts.target_ci is not None else {}),
    })


def remove_unstarted(exp_dir: Path) -> None:
    """Remove a folder this run created if interrupted before Ray saved any experiment state.

    Only the files written before the first snapshot are expected there; anything else keeps
    the folder, so nothing a user made is ever deleted.
    """
    if not exp_dir.is_dir() or any(exp_dir.glob(STATE_GLOB)):
        return
    expected = (META_FILE, TUNER_FILE, OPTUNA_JOURNAL, f"{OPTUNA_JOURNAL}.lock", OPTUNA_DB,
                ".validate_storage_marker", "search_gen_state-*", "searcher-state-*")
    if all(any(p.match(pattern) for pattern in expected) for p in exp_dir.iterdir()):
        shutil.rmtree(exp_dir, ignore_errors=True)
