"""A search space as Ray Tune domains (random search) or a grid (`--search grid`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from study.errors import StudyError
from study.search.space import Param, SearchSpace, int_values
from study.training.config import TrialConfig


def _depth_lookup(p: Param) -> Callable[[Any], Any]:
    table = {d: list(v) if isinstance(v, tuple) else v for d, v in p.table}
    default_depth = TrialConfig().depth

    def lookup(config: Any) -> Any:
        depth = config.get("depth", default_depth)
        if depth not in table:
            # Not a KeyError: Ray would retry a KeyError with its old spec-dict form, whose
            # missing "depth" falls back to the default depth's value without a word.
            raise ValueError(f"{p.name}.by_depth has no value for depth {depth}")
        return table[depth]

    return lookup


def _stepped_int(p: Param) -> Any:
    """A Ray domain drawing uniformly from low, low + step, ..., high.

    Written here because Ray's `qrandint` rounds to multiples of the step (2 and 4 for
    [1, 5] step 2), which leaves the range's own grid (1, 3, 5).
    """
    from ray.tune.search.sample import Integer, Sampler

    class _OnGrid(Sampler):
        def sample(self, domain: Any, config: Any = None, size: int = 1,
                   random_state: Any = None) -> Any:
            index = Integer(0, len(values)).sample(config, size, random_state)
            if size > 1:
                return [values[int(i)] for i in index]
            return values[int(index)]

    values = int_values(p)
    domain = Integer(values[0], values[-1] + 1)
    domain.set_sampler(_OnGrid())
    return domain


def tune_space(space: SearchSpace) -> dict[str, Any]:
    """Return Ray Tune domains for random search (BasicVariantGenerator)."""
    import random

    from ray import tune

    out: dict[str, Any] = {}
    everything = {**space.params, **space.fixed}
    for name, p in everything.items():
        if p.kind == "choice":
            out[name] = tune.choice([list(v) if isinstance(v, tuple) else v for v in p.values])
        elif p.kind == "int":
            high = int(p.high) + 1  # tune's randint excludes the upper bound
            # With a step, draw from the grid low, low + step, ... (Ray's qrandint rounds to
            # multiples of the step instead, which can leave the range's own grid).
            out[name] = (tune.lograndint(int(p.low), high) if p.log
                         else _stepped_int(p) if p.step > 1
                         else tune.randint(int(p.low), high))
        elif p.kind == "uniform":
            out[name] = tune.uniform(p.low, p.high)
        elif p.kind == "loguniform":
            out[name] = tune.loguniform(p.low, p.high)
        elif p.kind == "fixed":
            out[name] = list(p.value) if isinstance(p.value, tuple) else p.value
        elif p.kind == "by_depth":
            out[name] = tune.sample_from(_depth_lookup(p))
        elif p.kind == "per_layer":
            inner = p.inner
            assert inner is not None

            def layers(config: Any, inner: Param = inner) -> list[int]:
                depth = config.get("depth", TrialConfig().depth)
                if inner.kind == "choice":
                    return [random.choice(inner.values) for _ in range(depth)]
                values = int_values(inner)
                return [values[random.randrange(len(values))] for _ in range(depth)]

            out[name] = tune.sample_from(layers)
    return out


def grid_space(space: SearchSpace) -> dict[str, Any]:
    """Return a grid (`tune.grid_search` for every searched parameter) for `--search grid`."""
    from ray import tune

    out: dict[str, Any] = {}
    everything = {**space.params, **space.fixed}
    for name, p in everything.items():
        if p.kind == "choice":
            out[name] = tune.grid_search(
                [list(v) if isinstance(v, tuple) else v for v in p.values]
            )
        elif p.kind == "int" and not p.log:
            out[name] = tune.grid_search(list(int_values(p)))
        elif p.kind == "fixed":
            out[name] = list(p.value) if isinstance(p.value, tuple) else p.value
        elif p.kind == "by_depth":
            out[name] = tune.sample_from(_depth_lookup(p))
        else:
            raise StudyError(
                f"{space.source}: params.{name}: grid search needs a choice or an int range, "
                f"got {p.kind}"
            )
    return out


def grid_size(space: SearchSpace) -> int:
    """Number of grid points of `grid_space(space)`."""
    size = 1
    for p in space.params.values():
        if p.kind == "choice":
            size *= len(p.values)
        elif p.kind == "int":
            size *= len(int_values(p))
    return size
