"""The report's output folder: built aside, swapped in whole, and only ever replacing its own.

A report is written into a fresh staging folder beside its destination and swapped in at once
(Linux `renameat2(RENAME_EXCHANGE)`, else two renames), so an interrupted report leaves the
previous one whole. The manifest (.study-report.json) records each file a report wrote with its
SHA-256: the next report replaces exactly those that are unchanged and carries every other file
(added or edited by someone else) over into the new folder.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from study.core.files import write_json_atomic
from study.core.names import (
    BEST_CONFIG_JSON,
    BEST_CONFIG_YAML,
    FIGURES_DIR,
    HOMEWORK_CSV,
    LEADERBOARD,
    MODEL_FILE,
    OPTUNA_DB,
    REPORT_HTML,
    REPORT_MD,
)
from study.errors import StudyError

MANIFEST = ".study-report.json"  # what a report wrote into its folder, with each file's SHA-256
# What a report writes at the top of its folder: a summary/ without a manifest (written by a
# version before manifests) that holds only these (and figures/) is taken for a report's own.
_OWN_NAMES = (LEADERBOARD, BEST_CONFIG_JSON, BEST_CONFIG_YAML, MODEL_FILE, HOMEWORK_CSV,
              OPTUNA_DB, REPORT_MD, REPORT_HTML)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> dict[str, Path]:
    """Relative name -> path of every file and link under `folder` (hidden ones too)."""
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_symlink() or not p.is_dir()}


def _legacy_own(rel: str) -> bool:
    """A name only a report of a version without manifests wrote into summary/."""
    name = rel.rsplit("/", 1)[-1]
    if name.startswith(".") and name.endswith(".tmp"):
        return True  # a temporary file of an interrupted atomic write
    if rel.startswith(f"{FIGURES_DIR}/") and rel.count("/") == 1:
        return name.endswith(".png") and name.startswith(("hpo_", "homework_"))
    return rel in _OWN_NAMES


def user_files(out: Path, exp_dir: Path, default: bool) -> dict[str, Path]:
    """Return the files in `out` the tool did not write (they are kept); raise StudyError where
    `out` cannot be used: not a folder, the experiment itself, or a foreign folder."""
    label = f"{out}" if default else f"--out {out}"
    if out.is_symlink() and not out.exists():
        raise StudyError(f"{label}: a broken symbolic link")
    if not out.exists():
        return {}
    if not out.is_dir():
        raise StudyError(f"{label}: exists and is not a folder")
    here, experiment = out.resolve(), exp_dir.resolve()
    if here == experiment or here in experiment.parents:
        raise StudyError(f"{label}: is the experiment folder or holds it; choose a folder of "
                         "its own")
    files = _files(out)
    manifest = files.pop(MANIFEST, None)
    if manifest is not None:
        try:
            written = json.loads(manifest.read_text())["files"]
            assert isinstance(written, dict)
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            raise StudyError(f"{manifest}: is corrupted; move {out} aside and run the report "
                             "again") from None
    elif not files:
        written = {}
    elif default and all(_legacy_own(rel) for rel in files):
        written = dict.fromkeys(files)  # summary/ of a version that wrote no manifest
    else:
        raise StudyError(f"{label}: holds files that study report did not write (e.g. "
                         f"{next(iter(files))}); nothing was changed; choose a new or empty "
                         "folder")
    user = {}
    for rel, path in files.items():
        if rel in written:
            digest = written[rel]
            if digest is None:
                continue  # a legacy file: ours by its name
            if not path.is_symlink() and path.is_file() and _sha256(path) == digest:
                continue  # ours, unchanged since
        user[rel] = path  # added or changed by someone else: kept
    return user


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux renameat2 RENAME_EXCHANGE); False if unsupported.

    Written by hand: neither os nor shutil exposes an atomic exchange of two names.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def _swap_in(staging: Path, out: Path) -> None:
    """Put `staging` at `out`, replacing an existing `out` as a whole, then delete the old."""
    if not out.exists():
        os.rename(staging, out)
        return
    if not _exchange(staging, out):
        aside = staging.with_name(staging.name + ".old")
        os.rename(out, aside)
        os.rename(staging, out)
        staging = aside
    shutil.rmtree(staging)  # the previous report (user files were linked into the new one)


def new_staging(out: Path) -> Path:
    """Create and return an empty staging folder beside `out` (hidden, with the permissions a
    new folder gets); raise StudyError where it cannot be created."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as exc:
        raise StudyError(f"{out}: cannot be created ({exc.strerror})") from None
    try:
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes it 0o700, private to this user
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def install(staging: Path, out: Path, user: dict[str, Path]) -> None:
    """Record what the report wrote into `staging` (the manifest), link the `user` files kept
    from the previous `out` into it, and swap it in at `out`."""
    ours = {rel: _sha256(path) for rel, path in _files(staging).items()}
    for rel, path in user.items():
        if rel in ours:
            raise StudyError(f"{path}: was not written by study report (or was changed "
                             "since) and this report writes a file of that name; move it "
                             "away and run again")
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target, follow_symlinks=False)
    write_json_atomic(staging / MANIFEST, {"files": ours})
    _swap_in(staging, out)
