"""The package's layers, as import-linter checks them, and the module paths of earlier
experiments' pickles (the flat `study.*` names before the subpackages)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from study.core.moved import MOVED

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold() -> None:
    """Every contract of pyproject.toml's [tool.importlinter] is kept: the layers, training
    without Ray, analysis without the engine, a core that names no layer above it, no cycles."""
    lint = Path(sys.executable).parent / "lint-imports"  # installed with the dev extra
    done = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "Contracts: 5 kept, 0 broken." in done.stdout, done.stdout[-2000:]


def test_the_top_of_the_package_is_its_face() -> None:
    """study/ holds the package face, `python -m study` and the error type; the rest lives in
    its layers' subpackages."""
    top = sorted(p.name for p in (ROOT / "study").glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "errors.py"]
    packages = sorted(p.parent.name for p in (ROOT / "study").glob("*/__init__.py"))
    assert packages == ["cli", "core", "engine", "search", "training"]


@pytest.mark.parametrize("root", ["study", "analysis", "bench"])
def test_no_module_is_a_house_of_its_own(root: str) -> None:
    """Every module at most 450 lines, and opening with a docstring that says what it is for."""
    for path in sorted((ROOT / root).rglob("*.py")):
        lines = path.read_text().splitlines()
        where = path.relative_to(ROOT)
        assert len(lines) <= 450, f"{where}: {len(lines)} lines"
        if path.name != "__init__.py" or lines:
            assert lines and lines[0].startswith('"""') and len(lines[0]) > 10, where


# A pickle names each class and function by module path. An object of each kind Ray pickles
# into an experiment (tuner.pkl, searcher-state-*.pkl) is pickled here under the old flat path,
# then unpickled in a fresh interpreter that has never imported the new modules.
OLD_NAMES = {
    "study.searcher": "StudyOptunaSearch",
    "study.space": "OptunaSpace",
    "study.progress": "StudyProgress",
    "study.trainable": "train_trial",
    "study.builders": "ClipToBounds",
    "study.adaptive": "SeedsUntilNarrow",
    "study.tracking": "tracking_callbacks",
    "study.config": "TrialConfig",
    "study.data": "Dataset",
}

UNPICKLE = """
import pickle, sys
objects = pickle.loads(sys.stdin.buffer.read())
space = objects.pop("define-by-run")
import optuna
trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
config = space(trial)
print(sorted(config), config["epochs"])
for old, obj in objects.items():
    print(old, obj.__module__, obj.__qualname__)
"""


def _old_path_pickle() -> bytes:
    """OLD_NAMES' objects (and a define-by-run space) pickled, each class or function named
    under its old module path."""
    code = f"""
import pickle, sys
import study.core.moved as moved
from study.search.optuna_space import OptunaSpace
from study.search.space import parse_space
import importlib
NAMES = {OLD_NAMES!r}
objects = {{}}
for old, name in NAMES.items():
    module = importlib.import_module(moved.MOVED[old][0] if name != "OptunaSpace"
                                     else "study.search.optuna_space")
    obj = getattr(module, name)
    obj.__module__ = old  # as the flat package named it
    objects[old] = obj
space = parse_space({{"metric": "val_accuracy", "mode": "max", "fixed": {{"epochs": 3}},
                      "params": {{"lr": {{"loguniform": [1e-4, 1e-2]}}}}}})
objects["define-by-run"] = OptunaSpace(space)
data = pickle.dumps(objects)
for old in NAMES:
    assert old.encode() in data, old
sys.stdout.buffer.write(data)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout


def test_pickles_naming_the_old_module_paths_load() -> None:
    data = _old_path_pickle()
    done = subprocess.run([sys.executable, "-c", UNPICKLE], input=data, capture_output=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    lines = done.stdout.decode().splitlines()
    assert lines[0] == "['epochs', 'lr'] 3"  # the old define-by-run object still runs
    found = {old: (module, name) for old, module, name in (line.split() for line in lines[1:])}
    for old, name in OLD_NAMES.items():
        module, qualname = found[old]
        assert qualname == name
        expected = MOVED[old]
        assert module in expected, (old, module, expected)  # the object of the new module


def test_every_old_path_resolves_each_of_its_public_names() -> None:
    import importlib

    for old, targets in MOVED.items():
        alias = importlib.import_module(old)
        for target in targets:
            new = importlib.import_module(target)
            for name in (n for n in vars(new) if not n.startswith("_")):
                assert getattr(alias, name) is getattr(new, name), (old, name)
    with pytest.raises(AttributeError, match="study.space"):
        _ = importlib.import_module("study.space").no_such_name


def test_pickle_of_the_old_module_is_the_new_objects() -> None:
    from study.engine.progress import StudyProgress

    assert pickle.loads(b"cstudy.progress\nStudyProgress\n.") is StudyProgress
