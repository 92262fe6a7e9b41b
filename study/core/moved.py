"""The package's modules under the flat names they had before the subpackages, for pickles.

Ray pickles the searcher, the scheduler, the callbacks and the trainable of a study into its
experiment folder (tuner.pkl, searcher-state-*.pkl), by module path. An experiment made when
the package was one flat folder names `study.searcher`, `study.space`, `study.progress`, ...;
`--resume` and `study report` unpickle those. An import hook (written by hand: importlib has
none that aliases a module under a second name) answers each old name with a module whose
attributes are those of the modules that now hold its code, imported only when asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

# Old module path -> the modules that now hold what it held (a name is looked up in order).
MOVED: dict[str, tuple[str, ...]] = {
    "study.io": ("study.core.files",),
    "study.display": ("study.core.display",),
    "study.ray_compat": ("study.core.ray_compat",),
    "study.atomic_fs": ("study.core.atomic_fs",),
    "study.config": ("study.training.config",),
    "study.data": ("study.training.data",),
    "study.synthetic": ("study.training.synthetic",),
    "study.model": ("study.training.model",),
    "study.losses": ("study.training.losses",),
    "study.metrics": ("study.training.metrics",),
    "study.cuda_graph": ("study.training.cuda_graph",),
    "study.checkpoint": ("study.training.checkpoint",),
    "study.train": ("study.training.loop",),
    "study.space": ("study.search.space", "study.search.optuna_space", "study.search.tune_space"),
    "study.searcher": ("study.search.searcher",),
    "study.adaptive": ("study.search.adaptive",),
    "study.seed_rule": ("study.search.seed_rule",),
    "study.options": ("study.engine.options",),
    "study.resume": ("study.engine.resume",),
    "study.experiment": ("study.engine.experiment",),
    "study.cluster": ("study.engine.cluster",),
    "study.ray_session": ("study.engine.ray_session",),
    "study.trainable": ("study.engine.trainable",),
    "study.tracking": ("study.engine.tracking",),
    "study.progress": ("study.engine.progress",),
    "study.builders": ("study.engine.builders",),
    "study.cli_commands": ("study.cli.commands",),
    "study.api": ("study.cli.api",),
}


class OldPath(ModuleType):
    """An old module path: each attribute is looked up in the modules that now hold it."""

    def __init__(self, name: str, targets: tuple[str, ...]) -> None:
        super().__init__(name, f"moved to {', '.join(targets)}")
        self.__targets = targets

    def __getattr__(self, attr: str) -> object:
        if attr.startswith("__"):
            raise AttributeError(attr)
        for target in self.__targets:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} (now {', '.join(self.__targets)}) has "
                             f"no attribute {attr!r}")


class _Alias(importlib.abc.Loader):
    def __init__(self, targets: tuple[str, ...]) -> None:
        self.targets = targets

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return OldPath(spec.name, self.targets)

    def exec_module(self, module: ModuleType) -> None:
        pass  # nothing to run: attributes come from the new modules when asked for


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
