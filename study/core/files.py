"""Small file helpers: atomic writes, so a crash never leaves half a file."""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import yaml

from study.errors import StudyError

MAX_YAML_NODES = 100_000  # values a document may expand to, aliases counted each time used
MAX_YAML_CHARS = 10_000_000  # characters of scalars, likewise (a search space is a few hundred)


class _Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` that also reads `1e-5` as a float, as YAML 1.2 does, and refuses a key
    repeated in one mapping.

    PyYAML follows YAML 1.1, where a float needs a dot (`1.0e-5`), so `lr: 1e-5` would load
    as a string and be refused with a puzzling message; and it keeps the last of two equal
    keys without a word.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            # Only the keys written in this mapping: one may override a merged (`<<: *base`) one.
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    repeated = key in seen
                    seen.add(key)
                except TypeError:
                    continue  # an unhashable key: construct_mapping refuses it below
                if repeated:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice in one mapping",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _check_expansion(root: yaml.Node) -> None:
    """Raise yaml.YAMLError if the document, its aliases expanded, exceeds the bounds.

    Aliases share one node, so the parsed document stays small, but anything that walks or
    writes it (json.dumps into study.json) expands every use: a few hundred bytes of nested
    aliases become gigabytes. Sizes are counted per node once (memoised), so this is linear
    in the file, not in the expansion. A node that contains itself is refused too.
    """
    sizes: dict[int, tuple[int, int]] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> tuple[int, int]:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise yaml.composer.ComposerError(None, None, "an alias refers to a value that "
                                              "contains it (a recursive document)",
                                              node.start_mark)
        active.add(key)
        nodes, chars = 1, 0
        if isinstance(node, yaml.ScalarNode):
            chars = len(node.value)
        else:
            children = (node.value if isinstance(node, yaml.SequenceNode)
                        else [n for pair in node.value for n in pair])
            for child in children:
                n, c = size(child)
                nodes, chars = nodes + n, chars + c
        active.discard(key)
        sizes[key] = nodes, chars
        if nodes > MAX_YAML_NODES or chars > MAX_YAML_CHARS:
            raise yaml.composer.ComposerError(
                None, None, f"aliases expand to more than {MAX_YAML_NODES} values or "
                f"{MAX_YAML_CHARS} characters (found at least {nodes} values, {chars} "
                "characters)", node.start_mark)
        return nodes, chars

    size(root)


def load_yaml(text: str) -> Any:
    """Parse YAML safely (no object construction); `1e-5` is a float. Raises yaml.YAMLError
    for bad YAML, a key repeated in a mapping, and aliases that expand past a small bound."""
    loader = _Loader(text)  # a SafeLoader: constructs plain values only
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except RecursionError:
        raise yaml.YAMLError("values nested too deeply") from None
    finally:
        loader.dispose()


TMP_PREFIX = ".study-tmp-"  # a dot file: no glob of Ray's or ours (`*.json`, ...) matches it


class AtomicWriter:
    """A binary file that appears at `path` whole, or not at all, when closed.

    It is written under a temporary name beside `path`, flushed to the disk (fsync) and
    renamed over `path` on `close`; `abort` (or leaving a `with` block by an exception)
    removes it and leaves any previous file as it was. The file gets the permissions a plain
    `open(path, "w")` would give a new file: 0o666 less the umask (the kernel applies it).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = os.fspath(path)
        folder, name = os.path.split(self.path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        while True:
            tmp_name = f"{TMP_PREFIX}{name}.{secrets.token_hex(6)}.tmp"
            self.tmp = os.path.join(folder or ".", tmp_name)
            try:
                fd = os.open(self.tmp, flags, 0o666)
                break
            except FileExistsError:
                continue
            except OSError as exc:  # the folder refuses a new file
                self.refused(exc)
                raise
        self.handle = os.fdopen(fd, "wb")
        self.closed = False

    def refused(self, exc: OSError) -> None:
        """Called when the file system refuses this file (a full disk, a lost permission),
        before the error is raised; a subclass that must know overrides it."""

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except BaseException as exc:
            self._fail(exc)
            raise

    def flush(self) -> None:
        try:
            self.handle.flush()
        except BaseException as exc:
            self._fail(exc)
            raise

    def _fail(self, exc: BaseException) -> None:
        # The temporary file goes now, since a caller (pyarrow, for Ray's writes) may never
        # close a stream whose write failed.
        self.abort()
        if isinstance(exc, OSError):
            self.refused(exc)

    def tell(self) -> int:
        return self.handle.tell()

    def close(self) -> None:
        """Put the file in place: flush, fsync and rename it over `path`."""
        if self.closed:
            return
        self.closed = True
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            os.replace(self.tmp, self.path)
        except BaseException as exc:
            self._discard()
            if isinstance(exc, OSError):
                self.refused(exc)
            raise

    def abort(self) -> None:
        """Drop what was written; `path` keeps its previous content (or stays absent)."""
        if not self.closed:
            self.closed = True
            self._discard()

    def _discard(self) -> None:
        try:
            self.handle.close()  # flushes what is buffered: fails again on a full disk
        except OSError:
            pass
        finally:
            Path(self.tmp).unlink(missing_ok=True)

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see AtomicWriter)."""
    with AtomicWriter(path) as out:
        out.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (see AtomicWriter)."""
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | Path, value: Any) -> None:
    """Write `value` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def read_trial_states(exp_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Return trial_id -> {status, dir, failures, run} from Ray's experiment states.

    Ray writes one `experiment_state-<time>.json` per driver session; a resumed session's
    holds every trial it restored, and a session that added trials to a finished study holds
    only its own. So every state is read, oldest first, and a later one's word on a trial
    wins; `run` is the index (in time order) of the first session that named the trial.
    Reads only the JSON parts (never the pickled fields); a missing or unreadable
    (half-written) state is skipped (none readable gives {}); one that parses but does not
    have Ray's layout raises StudyError.
    """
    from study.core.names import STATE_GLOB

    out: dict[str, dict[str, Any]] = {}
    for run, state in enumerate(sorted(Path(exp_dir).glob(STATE_GLOB))):
        try:
            raw = json.loads(state.read_text())
        except (OSError, ValueError):  # ValueError: cut short, or not UTF-8
            continue
        entries = raw.get("trial_data", []) if isinstance(raw, dict) else None
        if not isinstance(entries, list):
            raise StudyError(f"{state}: is damaged (trial_data is not a list)")
        for entry in entries:
            try:
                trial = json.loads(entry[0]) if isinstance(entry, list) else entry
                runtime = (json.loads(entry[1]) if isinstance(entry, list) and len(entry) > 1
                           else {})
            except (TypeError, IndexError, json.JSONDecodeError):
                continue
            if not isinstance(runtime, dict):
                runtime = {}
            if isinstance(trial, dict) and isinstance(trial.get("trial_id"), str):
                status = trial.get("status", "")
                first = out.get(trial["trial_id"], {}).get("run", run)
                out[trial["trial_id"]] = {"status": status if isinstance(status, str) else "",
                                          "dir": trial.get("relative_logdir"),
                                          "failures": runtime.get("num_failures", 0),
                                          "run": first}
    return out
