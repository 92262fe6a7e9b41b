"""`study run --resume`: the options a study continues with, and the checks before Ray restores.

Ray restores its searcher, scheduler, sample count and failure policy from the experiment
folder, and the space and data must stay those the study began with, so those options come
from study.json. Ray's saved state is pickled: it is restored only from the user's own files.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from study.core.names import META_FILE, STATE_GLOB, TUNER_FILE
from study.engine.experiment import experiment_dir, remove_unstarted
from study.engine.options import RunOptions, check_options
from study.errors import StudyError

# Options fixed when a study starts: `--resume` takes them from study.json; a different value
# given with it is refused.
FIXED_ON_RESUME = ("space", "data", "search", "sampler", "scheduler", "num_samples",
                   "max_epochs", "image_size", "repeats", "seed", "max_concurrent",
                   "max_failures", "target_ci", "max_repeats")
# Options a resumed study takes from study.json unless given again (they may change).
INHERITED_ON_RESUME = ("cpus_per_trial", "gpus_per_trial", "checkpoint_every", "num_cpus")


def read_study_meta(exp_dir: Path) -> dict[str, Any]:
    """Return the study.json of an experiment to resume; StudyError if absent or unreadable."""
    if not exp_dir.is_dir():
        raise StudyError(f"--resume --name {exp_dir.name}: no experiment at {exp_dir}")
    meta_path = exp_dir / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise StudyError(
            f"--resume: {meta_path} is missing, so {exp_dir} is not a study that `study run` "
            "can continue"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StudyError(
            f"--resume: {meta_path} is corrupted ({type(exc).__name__}); {exp_dir} cannot be "
            "resumed"
        ) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("options"), dict):
        raise StudyError(
            f"--resume: {meta_path} is corrupted (no options recorded); {exp_dir} cannot be "
            "resumed"
        )
    return meta


def found_experiment(name: str, storage_path: str) -> bool:
    """`study run --resume-or-start`: whether the experiment `name` exists in `storage_path`
    (then the run resumes it) or not (then it starts).

    A local experiment exists once it has its study.json. One stopped before Ray saved any
    state holds nothing to resume: it is removed (only if it holds nothing but the files a
    starting study writes, see `remove_unstarted`) and the study starts again. In a bucket,
    the experiment is what Ray can restore (`Tuner.can_restore`).
    """
    probe = RunOptions(name=name, storage_path=storage_path)
    check_options(probe)
    exp_dir = experiment_dir(probe)
    if exp_dir is None:
        from ray import tune

        return bool(tune.Tuner.can_restore(f"{storage_path.rstrip('/')}/{name}"))
    if not (exp_dir / META_FILE).is_file():
        return False  # nothing, or a folder that is not a study: starting says which
    if any(exp_dir.glob(STATE_GLOB)):
        return True
    remove_unstarted(exp_dir)
    return exp_dir.exists()  # something else is there: --resume says what is wrong with it


def resume_options(given: dict[str, Any]) -> RunOptions:
    """Return the options of `study run --resume`: the study's own, from its study.json.

    `given` maps RunOptions fields to the values given on the command line, None where a flag
    was left out. Options fixed when the study started (FIXED_ON_RESUME) come from study.json;
    one given with a different value is refused, since Ray would ignore it. The space and data
    are compared by content and source in `check_resumable`. INHERITED_ON_RESUME options come
    from study.json unless given; the rest (address, storage, verbosity) are this run's.
    """
    defaults = RunOptions()
    if not given.get("name"):
        raise StudyError("--resume needs --name: the experiment to continue")
    probe = RunOptions(name=given["name"],
                       storage_path=given.get("storage_path") or defaults.storage_path)
    check_options(probe)
    exp_dir = experiment_dir(probe)
    meta = read_study_meta(exp_dir) if exp_dir is not None else {"options": {}}
    stored = dict(meta["options"])
    if meta.get("space_file"):
        stored["space"] = meta["space_file"]  # absolute: the study may have run elsewhere
    if meta.get("data"):
        stored["data"] = meta["data"]
    values: dict[str, Any] = {}
    for f in fields(RunOptions):
        value = given.get(f.name)
        if (f.name == "num_samples" and value is not None
                and isinstance(stored.get("num_samples"), int) and value > stored["num_samples"]):
            check_extendable(stored)  # more trials for a study whose search can go on
        elif f.name in FIXED_ON_RESUME or f.name in INHERITED_ON_RESUME:
            if value is None and f.name in stored:
                value = stored[f.name]
            elif (f.name in FIXED_ON_RESUME and f.name not in ("space", "data")
                  and f.name in stored and value != stored[f.name]):
                raise StudyError(
                    f"--resume: --{f.name.replace('_', '-')} {value} differs from the study's "
                    f"{stored[f.name]}; a study keeps the options it started with (leave the "
                    "flag out)"
                )
        values[f.name] = getattr(defaults, f.name) if value is None else value
    values["resume"] = True
    return RunOptions(**values)


def check_extendable(stored: dict[str, Any]) -> None:
    """Refuse `--resume --num-samples N` (N larger) where the search cannot take more trials.

    An Optuna search continues from its live Optuna study, every earlier trial seen by TPE; a
    random or grid search would draw the same configurations again, and PBT's population is
    fixed when it starts.
    """
    if stored.get("search") != "optuna":
        raise StudyError(
            f"--resume: --num-samples can grow only a study searched by optuna (its "
            f"live Optuna study holds what the search learned); this one was searched by "
            f"{stored.get('search')}, so it keeps its {stored.get('num_samples')} samples"
        )


def check_resumable(exp_dir: Path, space: Any, data_spec: str) -> None:
    """Refuse `--resume` of a missing, damaged, foreign or different experiment.

    `space` is the prepared SearchSpace of this run, `data_spec` its resolved `--data`.
    """
    meta = read_study_meta(exp_dir)
    states = sorted(exp_dir.glob(STATE_GLOB))
    if not states:
        raise StudyError(
            f"--resume: {exp_dir} holds no Ray Tune experiment state ({STATE_GLOB}); "
            "it was stopped before its first trial or is damaged, and cannot be resumed"
        )
    try:
        json.loads(states[-1].read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StudyError(
            f"--resume: {states[-1]} is corrupted ({type(exc).__name__}); {exp_dir} cannot be "
            "resumed"
        ) from None
    if not (exp_dir / TUNER_FILE).is_file():
        raise StudyError(f"--resume: {exp_dir} holds no {TUNER_FILE}, so Ray cannot restore it")
    check_trusted(exp_dir)
    # JSON turns integer keys (width.by_depth) into strings: compare the space as stored.
    if meta.get("space") != json.loads(json.dumps(space.raw)):
        raise StudyError(
            f"--resume: the search space {space.source} differs from the one the study "
            f"started with ({meta.get('space_file')}); resume with the same --space, or leave "
            "--space out"
        )
    if meta.get("data") is not None and data_spec != meta["data"]:
        raise StudyError(
            f"--resume: --data {data_spec} differs from the data the study started with "
            f"({meta['data']}); resume with the same --data, or leave --data out"
        )


def restore_pickles(exp_dir: Path) -> list[Path]:
    """The files in `exp_dir` that Ray would unpickle to restore it (see
    `ray_compat.restore_pickle_globs`), sorted."""
    from study.core.ray_compat import restore_pickle_globs

    return sorted({p for pattern in restore_pickle_globs() for p in exp_dir.glob(pattern)})


def check_trusted(exp_dir: Path) -> None:
    """Refuse to restore Ray's pickled state if another user could have written it.

    Ray's tuner.pkl, experiment state, search state and trial errors are pickles, which run
    code when loaded; a study resumes only from files (and folders holding them) that this
    user (or root) owns and others cannot write.
    """
    uid = os.getuid() if hasattr(os, "getuid") else None
    pickled = restore_pickles(exp_dir)
    folders = sorted({p.parent for p in pickled} - {exp_dir})
    for path in (exp_dir, *folders, *pickled):
        # A link inside the experiment is judged as a link: its target could be anyone's.
        st = path.stat() if path == exp_dir else path.lstat()
        if st.st_mode & 0o002 or (uid is not None and st.st_uid not in (uid, 0)):
            raise StudyError(
                f"--resume: {path} is writable by other users, owned by another user or a "
                f"link (mode {st.st_mode & 0o777:o}, owner uid {st.st_uid}); Ray's saved state "
                "is pickled and runs code when loaded, so only your own experiments are resumed"
            )

