"""A search space as Optuna's define-by-run function, and the names Optuna gives its parameters.

Optuna's categorical values must be None/bool/int/float/str, so a choice among width lists is
suggested as an index (`width_index`); per-layer widths are one parameter per layer
(`width_0`, `width_1`, ...). `index_name` and `layer_name` spell those names everywhere.
"""

from __future__ import annotations

from typing import Any

from study.search.space import Param, SearchSpace
from study.training.config import TrialConfig


def index_name(name: str) -> str:
    """Optuna's parameter for a choice among lists (tuples): the index of the chosen one."""
    return f"{name}_index"


def layer_name(name: str, layer: int) -> str:
    """Optuna's parameter for hidden layer `layer`'s value of a per-layer parameter."""
    return f"{name}_{layer}"


def _suggest(trial: Any, name: str, p: Param) -> Any:
    if p.kind == "choice":
        if any(isinstance(v, tuple) for v in p.values):
            index = trial.suggest_categorical(index_name(name), list(range(len(p.values))))
            return list(p.values[index])
        return trial.suggest_categorical(name, list(p.values))
    if p.kind == "int":
        return trial.suggest_int(name, int(p.low), int(p.high), step=p.step, log=p.log)
    return trial.suggest_float(name, p.low, p.high, log=p.log)


class OptunaSpace:
    """A define-by-run function for `OptunaSearch(space=...)` (a class, so Ray can pickle it).

    Plain parameters are suggested by name; per-layer widths are suggested after the depth
    (`width_0`, `width_1`, ...); fixed and by-depth values are returned as constants. The
    returned dict is the whole trial config: Ray merges it over Optuna's own parameter names,
    and `StudyOptunaSearch` drops those that are not config keys (`width_0`, `width_index`).
    """

    def __init__(self, space: SearchSpace) -> None:
        self.params = {**space.params, **space.fixed}

    def __call__(self, trial: Any) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        constants: dict[str, Any] = {}
        for name, p in self.params.items():
            if p.kind in ("choice", "int", "uniform", "loguniform"):
                chosen[name] = _suggest(trial, name, p)
            elif p.kind == "fixed":
                constants[name] = list(p.value) if isinstance(p.value, tuple) else p.value
        depth = chosen.get("depth", constants.get("depth", TrialConfig().depth))
        for name, p in self.params.items():
            if p.kind == "per_layer":
                assert p.inner is not None
                constants[name] = [_suggest(trial, layer_name(name, i), p.inner)
                                   for i in range(depth)]
            elif p.kind == "by_depth":
                value = dict(p.table)[depth]
                constants[name] = list(value) if isinstance(value, tuple) else value
        return {**chosen, **constants}


def optuna_space(space: SearchSpace) -> OptunaSpace:
    """Return the define-by-run function of `space` for `OptunaSearch`."""
    return OptunaSpace(space)
