"""Small file helpers: atomic writes, so a crash never leaves half a file."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` that also reads `1e-5` as a float, as YAML 1.2 does.

    PyYAML follows YAML 1.1, where a float needs a dot (`1.0e-5`), so `lr: 1e-5` would load
    as a string and be refused with a puzzling message.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """Parse YAML safely (no object construction); `1e-5` is a float. Raises yaml.YAMLError."""
    return yaml.load(text, Loader=_Loader)  # safe: _Loader is a SafeLoader


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, value: Any) -> None:
    """Write `value` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def read_trial_states(exp_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Return trial_id -> {status, dir, failures, run} from Ray's experiment states.

    Ray writes one `experiment_state-<time>.json` per driver session; a resumed session's
    holds every trial it restored, and a session that added trials to a finished study holds
    only its own. So every state is read, oldest first, and a later one's word on a trial
    wins; `run` is the index (in time order) of the first session that named the trial.
    Reads only the JSON parts (never the pickled fields); missing or unreadable states are
    skipped (none readable gives {}).
    """
    out: dict[str, dict[str, Any]] = {}
    for run, state in enumerate(sorted(Path(exp_dir).glob("experiment_state-*.json"))):
        try:
            raw = json.loads(state.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for entry in raw.get("trial_data", []):
            try:
                trial = json.loads(entry[0]) if isinstance(entry, list) else entry
                runtime = (json.loads(entry[1]) if isinstance(entry, list) and len(entry) > 1
                           else {})
            except (TypeError, json.JSONDecodeError):
                continue
            if isinstance(trial, dict) and "trial_id" in trial:
                first = out.get(trial["trial_id"], {}).get("run", run)
                out[trial["trial_id"]] = {"status": trial.get("status", ""),
                                          "dir": trial.get("relative_logdir"),
                                          "failures": (runtime or {}).get("num_failures", 0),
                                          "run": first}
    return out
