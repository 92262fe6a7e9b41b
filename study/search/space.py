"""YAML search spaces: their schema, read and checked into a `SearchSpace` (no Optuna, no Ray).

`search.optuna_space` turns one into Optuna's define-by-run function, `search.tune_space` into
Ray Tune domains or a grid.

Schema (read by `study.core.files.load_yaml`, a safe loader that reads `1e-5` as a number):

    metric: val_accuracy          # what selection maximises or minimises (validation only)
    mode: max                     # several objectives: metric: [val_auroc, val_sensitivity]
    #                               with mode: [max, max] (Optuna's multi-objective search)
    constraints:                  # optional: bounds a configuration must meet to be chosen
      val_sensitivity: ">= 0.90"  # >=, <=, > or < and a number
    params:                       # searched
      loss: {choice: [bce, ce]}
      depth: {int: [1, 5]}        # inclusive; `log: true` and `step: N` allowed
      dropout: {uniform: [0.0, 0.7]}
      lr: {loguniform: [1.0e-5, 1.0e-1]}
      width: {per_layer: {choice: [32, 64, 128]}}   # one value per hidden layer, after depth
      optimizer: adam             # a plain value is fixed
    fixed:                        # held constant
      epochs: 15
      width: {by_depth: {3: 64, 5: [256, 128, 64, 64, 64]}}   # a value chosen by depth

Parameter names are `TrialConfig` fields; every value is checked against it when loaded.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from study.core.files import load_yaml
from study.errors import StudyError
from study.training.config import TrialConfig, check_cnn_fits

# What a trial reports on validation each epoch (its sensitivity and specificity at the 0.5
# threshold); only these select, never a test metric.
METRICS = ("val_accuracy", "val_loss", "val_auroc", "val_sensitivity", "val_specificity")
OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_BOUND = re.compile(r"\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*")
MODES = ("max", "min")
KINDS = ("choice", "int", "uniform", "loguniform", "per_layer", "by_depth")
PARAM_NAMES = tuple(f.name for f in fields(TrialConfig))
# The shipped spaces (`--space default`, `--space homework`): package data, which in a checkout
# is the repository's search_spaces/ (study/search_spaces links to it).
SPACES_DIR = resources.files("study") / "search_spaces"


@dataclass(frozen=True)
class Param:
    """One parameter: `kind` in KINDS or `fixed`, and its arguments."""

    name: str
    kind: str
    values: tuple[Any, ...] = ()  # choice values
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: int = 1
    inner: Param | None = None  # per_layer: the distribution of each layer's value
    table: tuple[tuple[int, Any], ...] = ()  # by_depth: (depth, value) pairs
    value: Any = None  # fixed


@dataclass(frozen=True)
class Constraint:
    """A bound on a reported metric, `metric op bound` (e.g. val_sensitivity >= 0.9)."""

    metric: str
    op: str  # a key of OPERATORS
    bound: float

    def holds(self, value: float) -> bool:
        """Whether `value` meets the bound (a NaN never does)."""
        return math.isfinite(value) and OPERATORS[self.op](value, self.bound)

    def violation(self, value: float) -> float:
        """Optuna's constraint value: <= 0 when met, else how far off (inf for NaN)."""
        if not math.isfinite(value):
            return math.inf
        return self.bound - value if self.op in (">=", ">") else value - self.bound

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


@dataclass(frozen=True)
class SearchSpace:
    """A loaded, checked search space."""

    metric: str  # the (first) objective: what Ray Tune's schedulers and progress judge
    mode: str
    params: dict[str, Param]  # searched (and fixed values written under params)
    fixed: dict[str, Param]
    source: str  # file path, for messages and reports
    raw: dict[str, Any]  # the YAML as loaded, kept in the study's metadata
    objectives: tuple[tuple[str, str], ...] = ()  # (metric, mode) each; () means (metric, mode)
    constraints: tuple[Constraint, ...] = ()

    @property
    def metrics(self) -> list[str]:
        """Every objective's metric, the first one first."""
        return [m for m, _ in self.objectives] or [self.metric]

    @property
    def modes(self) -> list[str]:
        """Every objective's mode, in the order of `metrics`."""
        return [m for _, m in self.objectives] or [self.mode]

    def with_fixed(self, **overrides: Any) -> SearchSpace:
        """Return a copy with `overrides` fixed (e.g. `--max-epochs`), no longer searched."""
        params = {k: v for k, v in self.params.items() if k not in overrides}
        fixed = dict(self.fixed)
        for name, value in overrides.items():
            _check_value(name, value, f"override {name}")
            fixed[name] = Param(name, "fixed", value=value)
        return replace(self, params=params, fixed=fixed)

    @property
    def searched(self) -> list[str]:
        """Names of the parameters that vary between trials."""
        return [n for n, p in self.params.items() if p.kind != "fixed"]


def _check_value(name: str, value: Any, where: str) -> None:
    if name not in PARAM_NAMES:
        raise StudyError(f"{where}: unknown parameter {name!r}; known: {', '.join(PARAM_NAMES)}")
    if isinstance(value, list):
        value = tuple(value)
    values = {name: value}
    if name == "width" and isinstance(value, tuple):
        values["depth"] = len(value)
    try:
        TrialConfig(**values)
    except StudyError as exc:
        raise StudyError(f"{where}: {exc}") from None
    except TypeError as exc:
        raise StudyError(f"{where}: invalid value {value!r} ({exc})") from None


def _number(value: Any, where: str, integer: bool = False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or (not integer and not math.isfinite(value)):
        kind = "an integer" if integer else "a finite number"
        raise StudyError(f"{where}: bound must be {kind}, got {value!r}")
    return value


def _parse_param(name: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict):
        _check_value(name, spec, where)
        return Param(name, "fixed", value=tuple(spec) if isinstance(spec, list) else spec)
    kinds = [k for k in spec if k in KINDS]
    extra = sorted(set(spec) - set(KINDS) - {"log", "step"})
    if len(kinds) != 1 or extra:
        raise StudyError(
            f"{where}: expected exactly one of {', '.join(KINDS)}, got keys {sorted(spec)}"
        )
    kind = kinds[0]
    arg = spec[kind]
    for option in ("log", "step"):
        if option in spec and kind not in (("int", "uniform") if option == "log" else ("int",)):
            raise StudyError(f"{where}.{option}: not allowed with {kind}, got {spec[option]!r}")
    if "log" in spec and not isinstance(spec["log"], bool):
        raise StudyError(f"{where}.log: must be true or false, got {spec['log']!r}")
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise StudyError(f"{where}.choice: must be a non-empty list, got {arg!r}")
        for value in arg:
            _check_value(name, value, f"{where}.choice")
        return Param(name, kind, values=tuple(tuple(v) if isinstance(v, list) else v for v in arg))
    if kind == "per_layer":
        if name != "width":
            raise StudyError(f"{where}: per_layer applies to width only, not {name!r}")
        inner = _parse_param(name, arg, f"{where}.per_layer")
        if inner.kind not in ("choice", "int"):
            raise StudyError(f"{where}.per_layer: must be a choice or int range, got {inner.kind}")
        return Param(name, kind, inner=inner)
    if kind == "by_depth":
        if not isinstance(arg, dict) or not arg:
            raise StudyError(f"{where}.by_depth: must map depths to values, got {arg!r}")
        table = []
        for depth, value in arg.items():
            _number(depth, f"{where}.by_depth key", integer=True)
            if name == "width" and isinstance(value, list) and len(value) != depth:
                raise StudyError(
                    f"{where}.by_depth.{depth}: needs {depth} widths, got {value!r}"
                )
            _check_value(name, value, f"{where}.by_depth.{depth}")
            table.append((depth, tuple(value) if isinstance(value, list) else value))
        return Param(name, kind, table=tuple(sorted(table)))
    if not isinstance(arg, list) or len(arg) != 2:
        raise StudyError(f"{where}.{kind}: must be [low, high], got {arg!r}")
    low = _number(arg[0], f"{where}.{kind}", integer=kind == "int")
    high = _number(arg[1], f"{where}.{kind}", integer=kind == "int")
    if low > high:
        raise StudyError(f"{where}.{kind}: low <= high must hold, got low={low}, high={high}")
    log = kind == "loguniform" or bool(spec.get("log", False))
    if log and low <= 0:
        raise StudyError(f"{where}.{kind}: log bounds must be > 0, got low={low}")
    step = spec.get("step", 1)
    if kind == "int" and (not isinstance(step, int) or isinstance(step, bool) or step < 1):
        raise StudyError(f"{where}.step: must be an integer >= 1, got {step!r}")
    if log and step > 1:
        # Optuna's suggest_int has no log scale with a step; Ray's has none either.
        raise StudyError(f"{where}: log: true cannot be combined with step: {step} (step must "
                         "be 1 on a log scale)")
    for bound in (low, high):
        _check_value(name, int(bound) if kind == "int" else float(bound), f"{where}.{kind}")
    return Param(name, kind, low=low, high=high, log=log, step=step)


def parse_space(raw: Any, source: str = "<space>") -> SearchSpace:
    """Check a loaded YAML document and return the SearchSpace."""
    if not isinstance(raw, dict):
        raise StudyError(f"{source}: a search space must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - {"metric", "mode", "params", "fixed", "constraints"})
    if unknown:
        raise StudyError(f"{source}: unknown top-level key {unknown[0]!r}; expected metric, mode, "
                         "params, fixed, constraints")
    objectives = parse_objectives(raw, source)
    constraints = parse_constraints(raw.get("constraints"), source)
    sections: dict[str, dict[str, Param]] = {}
    for section in ("params", "fixed"):
        body = raw.get(section) or {}
        if not isinstance(body, dict):
            raise StudyError(f"{source}: {section} must be a mapping, got {body!r}")
        parsed = {}
        for name, spec in body.items():
            where = f"{source}: {section}.{name}"
            if name not in PARAM_NAMES:
                raise StudyError(
                    f"{where}: unknown parameter {name!r}; known: {', '.join(PARAM_NAMES)}"
                )
            param = _parse_param(name, spec, where)
            if section == "fixed" and param.kind not in ("fixed", "by_depth"):
                raise StudyError(f"{where}: fixed values cannot be {param.kind} ranges")
            parsed[name] = param
        sections[section] = parsed
    both = sorted(set(sections["params"]) & set(sections["fixed"]))
    if both:
        raise StudyError(f"{source}: {both[0]!r} is both searched (params) and fixed")
    (metric, mode), several = objectives[0], len(objectives) > 1
    space = SearchSpace(metric, mode, sections["params"], sections["fixed"], source, raw,
                        objectives if several else (), constraints)
    _check_depth_rules(space)
    return space


def parse_objectives(raw: dict[str, Any], source: str) -> tuple[tuple[str, str], ...]:
    """The (metric, mode) pairs of a space's `metric:` and `mode:` (`raw`: the YAML as loaded),
    each a name or a list of names."""
    metric = raw.get("metric", "val_accuracy")
    several = isinstance(metric, list)
    metrics = metric if several else [metric]
    if not metrics or len(set(map(str, metrics))) != len(metrics):
        raise StudyError(f"{source}: metric must list distinct metrics, got {metric!r}")
    for name in metrics:
        if name not in METRICS:
            raise StudyError(f"{source}: metric must be one of {', '.join(METRICS)}, got "
                             f"{name!r}")
    default = ["min" if m == "val_loss" else "max" for m in metrics]
    mode = raw.get("mode", default if several else default[0])
    modes = mode if isinstance(mode, list) else [mode]
    if isinstance(mode, list) != several or len(modes) != len(metrics):
        raise StudyError(f"{source}: mode must give one mode per metric ({len(metrics)} for "
                         f"metric {metric!r}), got {mode!r}")
    for value in modes:
        if value not in MODES:
            raise StudyError(f"{source}: mode must be max or min, got {value!r}")
    return tuple(zip(metrics, modes, strict=True))


def parse_constraints(body: Any, source: str) -> tuple[Constraint, ...]:
    """A space's `constraints: {metric: ">= 0.9", ...}` (`body`; None: none) as Constraints."""
    if body is None:
        return ()
    if not isinstance(body, dict):
        raise StudyError(f"{source}: constraints must map metrics to bounds such as \">= 0.9\", "
                         f"got {body!r}")
    out = []
    for name, bound in body.items():
        if name not in METRICS:
            raise StudyError(f"{source}: constraints.{name}: unknown metric {name!r}; known: "
                             f"{', '.join(METRICS)}")
        match = _BOUND.fullmatch(bound) if isinstance(bound, str) else None
        if match is None or not math.isfinite(float(match.group(2))):
            raise StudyError(f"{source}: constraints.{name}: bound must be an operator (>=, <=, "
                             f"> or <) and a number such as \">= 0.9\", got {bound!r}")
        out.append(Constraint(name, match.group(1), float(match.group(2))))
    return tuple(out)


def _check_depth_rules(space: SearchSpace) -> None:
    everything = {**space.params, **space.fixed}
    depth = everything.get("depth")
    depths: Any = set()  # a range for int depths: checked lazily, never built
    if depth is None:
        depths = {TrialConfig().depth}
    elif depth.kind == "fixed":
        depths = {depth.value}
    elif depth.kind == "choice":
        depths = set(depth.values)
    elif depth.kind == "int":
        depths = int_values(depth)
    for param in everything.values():
        if param.kind == "by_depth":
            table = {d for d, _ in param.table}
            ordered = sorted(depths) if isinstance(depths, set) else depths
            missing = next((d for d in ordered if d not in table), None)
            if missing is not None:
                raise StudyError(
                    f"{space.source}: {param.name}.by_depth has no value for depth {missing}"
                )
    width = everything.get("width")
    if width is not None and width.kind in ("fixed", "choice"):
        lists = [v for v in (width.values or (width.value,)) if isinstance(v, tuple)]
        if lists and (depth is not None and depth.kind != "fixed"):
            raise StudyError(
                f"{space.source}: width lists fix the depth; use width.by_depth or per_layer "
                "when depth is searched"
            )


def space_path(space: str) -> Path:
    """Resolve `--space`: a file, or the name of a shipped space (`default`, `homework`)."""
    path = Path(space).expanduser()
    shipped = SPACES_DIR / f"{space}.yaml"
    if not path.exists() and shipped.is_file():
        with resources.as_file(shipped) as file:  # the file itself: the package is a folder
            path = file
    return path.resolve() if path.exists() else path


def load_space(path: str | Path) -> SearchSpace:
    """Read and check a YAML search space file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise StudyError(f"--space {path}: cannot be read ({exc.strerror})") from None
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StudyError(f"--space {path}: not valid YAML{at} ({problem})") from None
    return parse_space(raw, source=str(path))


def int_values(p: Param) -> range:
    """The values an int range takes: low, low + step, ... up to high (inclusive)."""
    return range(int(p.low), int(p.high) + 1, p.step)


def _values(space: SearchSpace, name: str) -> list[Any]:
    """Every value `name` can take in `space` (its default where the space leaves it out)."""
    p = space.params.get(name) or space.fixed.get(name)
    if p is None:
        return [getattr(TrialConfig(), name)]
    if p.kind == "fixed":
        return [p.value]
    if p.kind == "choice":
        return list(p.values)
    if p.kind == "int":
        return [int(p.low), int(p.high)]
    return []  # continuous or per-layer: not a model family, depth or image size


def check_cnn_depth(space: SearchSpace, data_size: int) -> None:
    """Raise StudyError where `space` can draw a CNN deeper than its smallest images allow
    (each conv block halves them)."""
    if "cnn" not in _values(space, "model"):
        return
    sizes = [data_size if v is None else min(int(v), data_size)
             for v in _values(space, "image_size")]
    depths = [v for v in _values(space, "depth") if isinstance(v, int)]
    if not depths or not sizes:
        return
    section = "params" if "depth" in space.params else "fixed"
    check_cnn_fits(max(depths), min(sizes), where=f"{space.source}: {section}.depth")


def fit_image_size(space: SearchSpace, data_size: int) -> SearchSpace:
    """Return `space` with image sizes the data cannot provide collapsed to its own size.

    Images are never upsampled, so on 28x28 data the choices 32 and 64 would both train at 28:
    searching them would only add a dimension that changes nothing. Choices at or above the
    data's size become one value (the data's size); if one value is left, it is fixed. Raises
    StudyError where the space can draw a CNN deeper than the data's images allow.
    """
    check_cnn_depth(space, data_size)
    p = space.params.get("image_size")
    if p is None or p.kind not in ("choice", "int"):
        return space
    if p.kind == "choice":
        values = sorted({min(int(v), data_size) for v in p.values})
    else:
        values = sorted({min(v, data_size) for v in range(int(p.low), int(p.high) + 1, p.step)})
    if len(values) == 1:
        return space.with_fixed(image_size=values[0])
    params = dict(space.params)
    params["image_size"] = Param("image_size", "choice", values=tuple(values))
    return replace(space, params=params)
