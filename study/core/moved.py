"""The package's modules under the flat names they had before the subpackages, for pickles.

Ray pickles the searcher, the scheduler, the callbacks and the trainable of a study into its
experiment folder (tuner.pkl, searcher-state-*.pkl), by module path. An experiment made when
the package was one flat folder names `study.searcher`, `study.space`, `study.progress`, ...;
`--resume` and `study report` unpickle those. An import hook (written by hand: importlib has
none that aliases a module under a second name) makes each old name the new module itself,
imported only when something asks for it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

# Old module path -> where that module lives now.
MOVED = {
    "study.io": "study.core.files",
    "study.display": "study.core.display",
    "study.ray_compat": "study.core.ray_compat",
    "study.atomic_fs": "study.core.atomic_fs",
    "study.config": "study.training.config",
    "study.data": "study.training.data",
    "study.synthetic": "study.training.synthetic",
    "study.model": "study.training.model",
    "study.losses": "study.training.losses",
    "study.metrics": "study.training.metrics",
    "study.cuda_graph": "study.training.cuda_graph",
    "study.checkpoint": "study.training.checkpoint",
    "study.train": "study.training.loop",
    "study.space": "study.search.space",
    "study.searcher": "study.search.searcher",
    "study.adaptive": "study.search.adaptive",
    "study.seed_rule": "study.search.seed_rule",
    "study.options": "study.engine.options",
    "study.resume": "study.engine.resume",
    "study.experiment": "study.engine.experiment",
    "study.cluster": "study.engine.cluster",
    "study.ray_session": "study.engine.ray_session",
    "study.trainable": "study.engine.trainable",
    "study.tracking": "study.engine.tracking",
    "study.progress": "study.engine.progress",
    "study.builders": "study.engine.builders",
    "study.cli_commands": "study.cli.commands",
    "study.api": "study.cli.api",
}


class _Alias(importlib.abc.Loader):
    """Loads an old name as the module that now holds its code (the same object)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self.spec = module.__spec__  # importlib sets the alias's spec on it; put it back
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.spec  # already executed under its new name


class MovedModules(importlib.abc.MetaPathFinder):
    """Finds the old flat names of `MOVED` and nothing else."""

    def find_spec(self, name: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if name not in MOVED:
            return None
        return importlib.util.spec_from_loader(name, _Alias(MOVED[name]))


def install() -> None:
    """Put the finder on `sys.meta_path` once (after the normal finders: a real module of
    the old name, were one ever added back, wins)."""
    if not any(isinstance(f, MovedModules) for f in sys.meta_path):
        sys.meta_path.append(MovedModules())
