"""Bad input at the study level: one line naming the problem and the value, exit status 2,
no traceback, within seconds, nothing overwritten; and nothing loaded is ever executed.

Most cases run `study.cli.main.main` in this process: they fail before Ray or any data is loaded.
Those where a real process matters (the GPU count, the network, pickles) run `python -m study`.
The `--resume` cases work on copies of one real experiment made once for the module.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _proc import TINY_DATA, run_study_process, study_command, write_space

from study.cli import main as cli
from study.errors import StudyError

FAST_S = 20  # in-process refusals; generous, the machine is shared
PROCESS_S = 30  # a fresh `python -m study` imports torch before it can refuse anything
TINY_NET = {"loss": "ce", "batch_size": 32, "depth": 1, "width": 16, "epochs": 2}


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under `folder` (hidden ones too): modification time and SHA-256."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns,
                                         hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    """Run the CLI in-process; check exit 2, one stderr line holding `needles`, no traceback."""
    start = time.monotonic()
    status = cli.main(argv)
    elapsed = time.monotonic() - start
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert status == 2, f"exit {status}\n{captured.out}\n{captured.err}"
    assert len(err.splitlines()) == 1, err
    assert err.startswith("study: error: "), err
    assert "Traceback" not in captured.out + captured.err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert elapsed < FAST_S, f"took {elapsed:.1f} s"
    return err


def refused_process(argv: list[str], *needles: str, cwd: Path | None = None) -> str:
    """Run `python -m study` in a fresh process: exit 2, one stderr line, no traceback."""
    start = time.monotonic()
    proc = subprocess.run(study_command(*argv), capture_output=True, text=True, timeout=300,
                          cwd=cwd, start_new_session=True)
    elapsed = time.monotonic() - start
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert len(lines) == 1 and lines[0].startswith("study: error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert elapsed < PROCESS_S, f"took {elapsed:.1f} s"
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def space(tmp_path: Path) -> Path:
    return write_space(tmp_path / "space.yaml", {"lr": {"loguniform": [1.0e-3, 1.0e-2]}},
                       TINY_NET)


# --- flags and search spaces (no Ray, no data) ---------------------------------------------


SPACE_ERRORS = {
    "broken YAML": ("params: [\n  lr: {uniform: [0, 1]\n", ["not valid YAML at line"]),
    "not a mapping": ("- lr\n- dropout\n", ["a search space must be a mapping, got list"]),
    "unknown top-level key": ("metrc: val_accuracy\nparams: {}\n",
                              ["unknown top-level key 'metrc'"]),
    "unknown parameter": ("params:\n  lrr: {uniform: [0.0, 1.0]}\n",
                          ["params.lrr", "unknown parameter 'lrr'"]),
    "low above high": ("params:\n  lr: {loguniform: [1.0e-1, 1.0e-5]}\n",
                       ["params.lr.loguniform", "low=0.1, high=1e-05"]),
    "value out of range": ("params:\n  dropout: {uniform: [0.0, 1.5]}\n",
                           ["params.dropout", "dropout must lie in [0, 1), got 1.5"]),
    "two kinds": ("params:\n  depth: {int: [1, 3], choice: [1, 2]}\n",
                  ["params.depth", "expected exactly one of"]),
    "test metric": ("metric: test_accuracy\nparams: {}\n",
                    ["metric must be one of", "'test_accuracy'"]),
    "searched epochs": ("params:\n  epochs: {int: [2, 5]}\n", ["epochs must be fixed"]),
    "unreported objective": ("metric: [val_auroc, val_recall]\nmode: [max, max]\n",
                             ["metric must be one of", "'val_recall'"]),
    "modes short": ("metric: [val_auroc, val_sensitivity]\nmode: [max]\n",
                    ["mode must give one mode per metric", "['max']"]),
    "constraint on unknown metric": ("constraints: {val_ppv: '>= 0.9'}\n",
                                     ["constraints.val_ppv", "unknown metric 'val_ppv'"]),
    "malformed bound": ("constraints: {val_sensitivity: 'at least 0.9'}\n",
                        ["constraints.val_sensitivity", "'at least 0.9'"]),
}


def refused_space(text: str, needles: list[str], tmp_path: Path,
                  capsys: pytest.CaptureFixture[str]) -> Path:
    """`study run` on a space file holding `text`: refused with one line naming the file and
    holding `needles`; returns the storage path the run was given."""
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    storage = tmp_path / "results"
    err = refused(capsys, ["run", "--space", str(path), "--data", TINY_DATA,
                           "--storage-path", str(storage), "--name", "s", "--quiet"], *needles)
    assert str(path) in err
    return storage


@pytest.mark.parametrize("case", SPACE_ERRORS, ids=list(SPACE_ERRORS))
def test_bad_search_space(case: str, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    storage = refused_space(*SPACE_ERRORS[case], tmp_path, capsys)
    assert not storage.exists()


FLAG_ERRORS = {
    "no samples": (["--num-samples", "0"], ["--num-samples must be >= 1, got 0"]),
    "no repeats": (["--repeats", "0"], ["--repeats must be >= 1 or 'auto', got 0"]),
    "auto without a target": (["--repeats", "auto"], ["--repeats auto needs --target-ci W"]),
    "auto with optuna": (["--repeats", "auto", "--target-ci", "2", "--search", "optuna"],
                         ["--repeats auto works with --search grid"]),
    "negative failures": (["--max-failures", "-1"], ["--max-failures must be >= 0, got -1"]),
    "name with slash": (["--name", "a/b"], ["--name must be a plain folder name", "'a/b'"]),
    "name with backslash": (["--name", "a\\b"], ["--name must be a plain folder name",
                                                 "'a\\\\b'"]),
    "name dot-dot": (["--name", ".."], ["--name must be a plain folder name", "'..'"]),
    "PBT with grid": (["--scheduler", "pbt", "--search", "grid"],
                      ["--scheduler pbt cannot be combined with --search grid"]),
    "no resources": (["--cpus-per-trial", "0"], ["--cpus-per-trial and --gpus-per-trial are "
                                                 "both 0"]),
    "resume without name": (["--resume"], ["--resume needs --name"]),
    "name over 255 bytes": (["--name", "é" * 128], ["--name must be a folder name of at most "
                                                   "255 bytes", "got 256 bytes"]),
}


@pytest.mark.parametrize("case", FLAG_ERRORS, ids=list(FLAG_ERRORS))
def test_bad_flags(case: str, tmp_path: Path, space: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    flags, needles = FLAG_ERRORS[case]
    storage = tmp_path / "results"
    argv = ["run", "--space", str(space), "--data", TINY_DATA, "--storage-path", str(storage),
            "--quiet", *flags]
    if "--name" not in flags and "--resume" not in flags:
        argv += ["--name", "s"]
    refused(capsys, argv, *needles)
    assert not storage.exists()


def test_unreachable_address(tmp_path: Path, space: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # closed again: nothing listens there
    storage = tmp_path / "results"
    refused(capsys, ["run", "--space", str(space), "--data", TINY_DATA, "--address",
                     f"127.0.0.1:{port}", "--storage-path", str(storage), "--name", "s",
                     "--quiet"], f"--address '127.0.0.1:{port}'", "cannot connect")
    assert not storage.exists()


def test_unreachable_address_in_a_real_process(tmp_path: Path, space: Path) -> None:
    port = free_port()
    refused_process(["run", "--space", str(space), "--data", TINY_DATA, "--address",
                     f"127.0.0.1:{port}", "--storage-path", str(tmp_path / "r"), "--name", "s",
                     "--quiet"], f"127.0.0.1:{port}", "cannot connect")
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_more_gpus_than_the_machine_has(tmp_path: Path, space: Path) -> None:
    storage = tmp_path / "results"
    refused_process(["run", "--space", str(space), "--data", TINY_DATA, "--gpus-per-trial",
                     "1", "--storage-path", str(storage), "--name", "g", "--quiet"],
                    "--gpus-per-trial 1 is more than the 0 GPU(s)")
    assert not (storage / "g").exists()


def test_gpus_beyond_the_visible_count(tmp_path: Path, space: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The same check on any machine: one GPU more than PyTorch sees."""
    wanted = torch.cuda.device_count() + 1
    storage = tmp_path / "results"
    refused(capsys, ["run", "--space", str(space), "--data", TINY_DATA, "--gpus-per-trial",
                     str(wanted), "--storage-path", str(storage), "--name", "g", "--quiet"],
            f"--gpus-per-trial {wanted} is more than")
    assert not (storage / "g").exists()


@pytest.mark.parametrize("kind", ["missing", "empty", "unrelated files", "a file"])
def test_report_on_a_folder_that_is_not_an_experiment(
        kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "target"
    if kind == "empty":
        target.mkdir()
    elif kind == "unrelated files":
        target.mkdir()
        (target / "notes.txt").write_text("hello")
        (target / "sub").mkdir()
        (target / "sub" / "result.json").write_text("{}")
    elif kind == "a file":
        target.write_text("not a folder")
    before = snapshot(target) if target.is_dir() else None
    err = refused(capsys, ["report", str(target)], str(target))
    assert "no such folder" in err or "not a study experiment folder" in err
    if before is not None:
        assert snapshot(target) == before  # no summary/ written into it
        assert not (target / "summary").exists()


# --- --resume: missing, damaged, foreign or different experiments --------------------------


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real, finished two-trial study (made once; tests work on copies)."""
    base = tmp_path_factory.mktemp("experiment")
    space = write_space(base / "space.yaml", {"lr": {"loguniform": [1.0e-3, 1.0e-2]}},
                        TINY_NET)
    status, study = run_study_process(
        ["run", "--space", str(space), "--data", TINY_DATA, "--search", "random",
         "--scheduler", "fifo", "--num-samples", "2", "--num-cpus", "2",
         "--storage-path", str(base / "results"), "--name", "base", "--quiet"],
        base / "logs", timeout=400)
    assert status == 0, study.output()
    return base / "results" / "base"


@pytest.fixture
def copy(experiment: Path, tmp_path: Path) -> Path:
    """A private copy of the module's experiment, under tmp_path/results/exp."""
    target = tmp_path / "results" / "exp"
    shutil.copytree(experiment, target)
    return target


def resume(exp: Path, *flags: str) -> list[str]:
    return ["run", "--resume", "--name", exp.name, "--storage-path", str(exp.parent), "--quiet",
            *flags]


def test_resume_of_a_missing_experiment(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    storage = tmp_path / "results"
    storage.mkdir()
    refused(capsys, ["run", "--resume", "--name", "nope", "--storage-path", str(storage)],
            "--resume --name nope", f"no experiment at {storage / 'nope'}")
    assert list(storage.iterdir()) == []


DAMAGE = {
    "study.json garbage": ("study.json", b"{not json", ["study.json is corrupted"]),
    "study.json not a record": ("study.json", b"[1, 2]", ["study.json is corrupted"]),
    "study.json deleted": ("study.json", None, ["study.json is missing"]),
    "experiment state deleted": ("experiment_state-*.json", None,
                                 ["holds no Ray Tune experiment state"]),
    "experiment state garbage": ("experiment_state-*.json", b"\x00\x01garbage",
                                 ["experiment_state-", "is corrupted"]),
    "tuner.pkl deleted": ("tuner.pkl", None, ["holds no tuner.pkl"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", DAMAGE, ids=list(DAMAGE))
def test_resume_of_a_damaged_experiment(case: str, copy: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    pattern, content, needles = DAMAGE[case]
    targets = sorted(copy.glob(pattern))
    assert targets, f"the experiment has no {pattern}"
    for target in targets:
        if content is None:
            target.unlink()
        else:
            target.write_bytes(content)
    before = snapshot(copy)
    refused(capsys, resume(copy), *needles)
    assert snapshot(copy) == before


@pytest.mark.slow
def test_resume_with_a_different_search_space(copy: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    other = write_space(tmp_path / "other.yaml", {"lr": {"loguniform": [1.0e-4, 1.0e-2]}},
                        TINY_NET)
    before = snapshot(copy)
    refused(capsys, resume(copy, "--space", str(other)), str(other),
            "differs from the one the study started with")
    assert snapshot(copy) == before


@pytest.mark.slow
def test_resume_after_the_space_file_changed(copy: Path, experiment: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The study's own space file, edited since: its content is what counts."""
    space_file = experiment.parent.parent / "space.yaml"
    saved = space_file.read_text()
    try:
        write_space(space_file, {"lr": {"loguniform": [1.0e-5, 1.0e-1]}}, TINY_NET)
        before = snapshot(copy)
        refused(capsys, resume(copy), "differs from the one the study started with")
        assert snapshot(copy) == before
    finally:
        space_file.write_text(saved)


@pytest.mark.slow
def test_resume_with_different_data(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(copy)
    other = TINY_DATA + ",seed=3"
    refused(capsys, resume(copy, "--data", other), f"--data {other} differs",
            TINY_DATA)
    assert snapshot(copy) == before


@pytest.mark.slow
@pytest.mark.parametrize("flags, needle", [
    (["--num-samples", "1"], "--num-samples 1 differs from the study's 2"),
    (["--num-samples", "5"], "--num-samples can grow only a study searched by optuna"),
    (["--scheduler", "asha"], "--scheduler asha differs from the study's fifo"),
    (["--search", "optuna"], "--search optuna differs from the study's random"),
    (["--max-failures", "3"], "--max-failures 3 differs from the study's 0"),
])
def test_resume_with_different_study_options(flags: list[str], needle: str, copy: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(copy)
    refused(capsys, resume(copy, *flags), needle)
    assert snapshot(copy) == before


@pytest.mark.slow
def test_resume_refuses_state_that_others_could_write(
        copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ray's tuner.pkl is a pickle: loading it runs code, so it must be the user's own."""
    tuner_pkl = copy / "tuner.pkl"
    tuner_pkl.chmod(0o666)
    before = snapshot(copy)
    refused(capsys, resume(copy), str(tuner_pkl), "writable by other users", "666")
    assert snapshot(copy) == before


@pytest.mark.slow
def test_run_without_resume_never_overwrites(copy: Path, experiment: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(copy)
    refused(capsys, ["run", "--space", str(experiment.parent.parent / "space.yaml"),
                     "--data", TINY_DATA, "--storage-path", str(copy.parent), "--name",
                     copy.name, "--quiet"], f"--name {copy.name}", "already exists",
            "nothing was overwritten")
    assert snapshot(copy) == before


# --- nothing loaded is executed -----------------------------------------------------------


class Payload:
    """Unpickling this creates `marker`: proof that the loader executed the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def write_homework_layout(root: Path, size: int = 16, n: int = 30) -> Path:
    rng = np.random.default_rng(0)
    for rel in ("train/normal.npy", "train/pneumonia.npy", "test/test_normal.npy",
                "test/test_pneumonia.npy"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, rng.integers(0, 255, size=(n, size, size), dtype=np.uint8))
    return root


def test_pickle_payload_is_live(tmp_path: Path) -> None:
    """The payload used below does run when unpickled (so its absence below means refusal)."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.npy"
    np.save(path, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    np.load(path, allow_pickle=True)
    assert marker.exists()


@pytest.mark.slow
def test_study_run_refuses_a_pickled_npy_without_running_it(tmp_path: Path,
                                                            space: Path) -> None:
    data = write_homework_layout(tmp_path / "data")
    evil = data / "train" / "pneumonia.npy"
    marker = tmp_path / "payload-ran"
    np.save(evil, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    storage = tmp_path / "results"
    refused_process(["run", "--space", str(space), "--data", str(data), "--storage-path",
                     str(storage), "--name", "p", "--quiet"], str(evil), "pickled")
    assert not marker.exists()
    assert not (storage / "p").exists()


@pytest.mark.slow
def test_study_evaluate_refuses_a_pickled_checkpoint_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    checkpoint = tmp_path / "model.pt"
    torch.save({"state_dict": Payload(marker), "config": {"loss": "ce"}, "image_size": 16},
               checkpoint)
    control = tmp_path / "control-ran"
    torch.save(Payload(control), tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)  # pickle would run it
    assert control.exists()
    refused_process(["evaluate", "--checkpoint", str(checkpoint), "--data", TINY_DATA],
                    str(checkpoint), "not a loadable weights-only checkpoint")
    assert not marker.exists()


def _loader_calls(source: Path) -> list[tuple[str, ast.Call]]:
    """(module.function, call) for every `np.load`, `torch.load`, `yaml.load`, `pickle.*`."""
    calls = []
    for node in ast.walk(ast.parse(source.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)):
            name = f"{node.func.value.id}.{node.func.attr}"
            if name in ("np.load", "numpy.load", "torch.load", "yaml.load", "yaml.unsafe_load",
                        "yaml.full_load") or node.func.value.id in ("pickle", "cloudpickle"):
                calls.append((name, node))
    return calls


def test_every_loader_in_the_package_refuses_pickles() -> None:
    """np.load(allow_pickle=False), torch.load(weights_only=True), yaml safe loaders only."""
    root = Path(cli.__file__).resolve().parents[2]
    sources = sorted([*root.glob("study/**/*.py"), *root.glob("analysis/**/*.py")])
    seen = set()
    for source in sources:
        for name, call in _loader_calls(source):
            where = f"{source.relative_to(root)}:{call.lineno}"
            keywords = {k.arg: k.value for k in call.keywords}
            seen.add(name)
            assert not name.startswith(("pickle.", "cloudpickle.")), where
            if name in ("np.load", "numpy.load"):
                flag = keywords.get("allow_pickle")
                assert isinstance(flag, ast.Constant) and flag.value is False, where
            elif name == "torch.load":
                flag = keywords.get("weights_only")
                assert isinstance(flag, ast.Constant) and flag.value is True, where
            else:  # yaml.load only with a SafeLoader (subclass) named in this module
                loader = keywords.get("Loader")
                assert name == "yaml.load" and isinstance(loader, ast.Name), where
                assert "SafeLoader" in source.read_text(), where
    assert {"np.load", "torch.load"} <= seen  # the scan found the loaders it is meant to check


# --- what an adversarial pass found: spaces, YAML, data, checkpoints, report inputs ---------


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A few hundred bytes of YAML whose aliases expand to width**levels values."""
    anchors = ["&a0 [" + ", ".join(["x"] * width) + "]"]
    for i in range(1, levels):
        anchors.append(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return ("params:\n  dropout:\n    uniform: [0.0, 0.5]\n    step: [" + ", ".join(anchors)
            + "]\n")


def test_yaml_alias_bomb_is_refused_before_it_expands(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = alias_bomb()
    assert len(text.encode()) < 600  # expands to 9**9 = 387 million values
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    storage = tmp_path / "results"
    refused(capsys, ["run", "--space", str(path), "--data", TINY_DATA, "--storage-path",
                     str(storage), "--name", "s", "--quiet"], str(path), "aliases expand to more")
    assert not storage.exists()
    config = tmp_path / "bomb-config.yaml"  # `study train --config` reads YAML the same way
    config.write_text(text.replace("params:\n  dropout:\n", "lr: 1e-3\nextra:\n"))
    refused(capsys, ["train", "--config", str(config), "--data", TINY_DATA],
            str(config), "aliases expand to more")


@pytest.mark.parametrize("text, needles", [
    ("params:\n  lr: {loguniform: [1.0e-3, 1.0e-2]}\n  lr: {uniform: [0.0, 1.0]}\n",
     ["key 'lr' appears twice"]),
    ("params:\n  depth: {int: [1, 3], int: [1, 5]}\n", ["key 'int' appears twice"]),
    ("metric: val_accuracy\nmetric: test_accuracy\nparams: {}\n", ["key 'metric' appears twice"]),
])
def test_yaml_key_repeated_in_a_mapping_is_refused(
        text: str, needles: list[str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    refused(capsys, ["run", "--space", str(path), "--data", TINY_DATA, "--storage-path",
                     str(tmp_path / "r"), "--name", "s", "--quiet"], str(path), *needles)
    assert not (tmp_path / "r").exists()


def test_yaml_merge_keys_may_still_be_overridden() -> None:
    """A key written once beside `<<: *base` overrides the merged one: not a repetition."""
    from study.core.files import load_yaml

    assert load_yaml("b: &b {x: 1, y: 2}\nc: {<<: *b, x: 5}\nlr: 1e-3\n") == {
        "b": {"x": 1, "y": 2}, "c": {"x": 5, "y": 2}, "lr": 0.001}


@pytest.mark.parametrize("text, needles", [
    ("params:\n  depth: {int: [1, 8], log: true, step: 2}\n",
     ["params.depth", "log: true cannot be combined with step: 2"]),
    ("params:\n  dropout: {uniform: [0.0, 0.5], step: 0.1}\n",
     ["params.dropout.step", "not allowed with uniform", "0.1"]),
    ("params:\n  loss: {choice: [bce, ce], log: true}\n",
     ["params.loss.log", "not allowed with choice"]),
    ("params:\n  lr: {uniform: [1.0e-3, 1.0e-1], log: 'yes'}\n",
     ["params.lr.log", "must be true or false", "'yes'"]),
    ("params:\n  depth: {int: [1, 5], step: true}\n",
     ["params.depth.step", "must be an integer >= 1", "True"]),
])
def test_every_key_of_a_parameter_is_checked(
        text: str, needles: list[str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Refused at load, one line, before Optuna or Ray: no study.json or tuner.pkl is left."""
    path = tmp_path / "space.yaml"
    path.write_text(text)
    storage = tmp_path / "results"
    refused(capsys, ["run", "--space", str(path), "--data", TINY_DATA, "--storage-path",
                     str(storage), "--name", "s", "--quiet"], str(path), *needles)
    assert not storage.exists()


def _npz(path: Path, train: np.ndarray, size: int = 8) -> Path:
    labels = np.tile(np.array([0, 1], dtype=np.uint8), 10)
    test = np.full((20, size, size), 100, dtype=np.uint8)
    np.savez(path, train_images=train, train_labels=labels, test_images=test,
             test_labels=labels)
    return path


def _run_on(data: str, tmp_path: Path) -> list[str]:
    return ["run", "--space", str(write_space(tmp_path / "s.yaml", {}, TINY_NET)), "--data",
            data, "--storage-path", str(tmp_path / "results"), "--name", "d", "--quiet"]


def test_data_with_0x0_images_is_refused(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = _npz(tmp_path / "empty.npz", np.zeros((20, 0, 0), dtype=np.uint8))
    refused(capsys, _run_on(str(path), tmp_path), "train_images", "0x0")
    assert not (tmp_path / "results" / "d").exists()


def test_float_images_in_0_1_are_refused_not_rounded(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rounding [0, 1] to uint8 would leave only 0 and 1; the README reads [0, 255]."""
    images = np.random.default_rng(0).random((20, 8, 8), dtype=np.float32)
    path = _npz(tmp_path / "unit.npz", images)
    refused(capsys, _run_on(str(path), tmp_path), "train_images", "[0, 1]", "[0, 255]",
            "multiply them by 255")
    scaled = _npz(tmp_path / "scaled.npz", images * 255)  # as the message says: accepted
    from study.training.data import load_data

    assert load_data(str(scaled)).train.images.max() > 1


def test_data_a_symlink_loop_is_refused(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(loop)
    refused(capsys, _run_on(str(loop), tmp_path), str(loop))
    assert not (tmp_path / "results" / "d").exists()


def test_npy_header_declaring_petabytes_is_refused_before_allocating(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_homework_layout(tmp_path / "data")
    target = data / "train" / "normal.npy"
    header = {"descr": "|u1", "fortran_order": False, "shape": (10**6, 10**5, 10**5)}
    with open(target, "wb") as handle:  # 10 PB declared, 100 bytes present
        np.lib.format.write_array_header_1_0(handle, header)
        handle.write(b"\x00" * 100)
    refused(capsys, _run_on(str(data), tmp_path), str(target),
            "10,000,000,000,000,000 bytes", "holds 100 bytes")
    npz = tmp_path / "big.npz"
    _npz(npz, np.zeros((20, 8, 8), dtype=np.uint8))
    import zipfile

    with zipfile.ZipFile(npz, "a") as archive:  # an npz member with the same header
        with archive.open("val_images.npy", "w") as member:
            np.lib.format.write_array_header_1_0(member, header)
        with archive.open("val_labels.npy", "w") as member:
            np.lib.format.write_array(member, np.zeros(20, dtype=np.uint8))
    refused(capsys, _run_on(str(npz), tmp_path), "val_images", "holds 0 bytes")


@pytest.mark.parametrize("where", ["the --data file", "a file in the --data folder"])
def test_data_a_fifo_is_refused_without_hanging(where: str, tmp_path: Path) -> None:
    if where == "the --data file":
        fifo = data = tmp_path / "data.npz"
    else:
        data = write_homework_layout(tmp_path / "data")
        fifo = data / "test" / "test_normal.npy"
        fifo.unlink()
    os.mkfifo(fifo)
    argv = _run_on(str(data), tmp_path)
    try:
        proc = subprocess.run(study_command(*argv), capture_output=True, text=True, timeout=120,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"study run hung on a FIFO as {where}") from None
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert str(fifo) in lines[0] and "not a regular file" in lines[0], lines[0]
    assert not (tmp_path / "results" / "d").exists()


def _checkpoint(path: Path, **override: object) -> Path:
    from study.training.checkpoint import save_model
    from study.training.config import TrialConfig
    from study.training.model import build_mlp

    config = TrialConfig(depth=1, width=4, epochs=1)
    save_model(path, build_mlp(16 * 16, 2, 1, 4, 0.5).state_dict(), config, 16)
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, **override}, path)
    return path


@pytest.mark.parametrize("image_size, needle", [
    ("16", "image_size must be an integer >= 1, got '16'"),
    (-3, "image_size must be an integer >= 1, got -3"),
    (0, "image_size must be an integer >= 1, got 0"),
    (8, "1.weight should be (4, 64), found (4, 256)"),  # plausible, but not these weights
])
def test_checkpoint_with_a_bad_image_size(image_size: object, needle: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = _checkpoint(tmp_path / "model.pt", image_size=image_size)
    refused(capsys, ["evaluate", "--checkpoint", str(checkpoint), "--data", TINY_DATA],
            str(checkpoint), needle)


def test_checkpoint_with_a_huge_image_size_builds_nothing(tmp_path: Path) -> None:
    """10**7 pixels a side would be a first layer of 10**14 inputs: refused from the shapes."""
    checkpoint = _checkpoint(tmp_path / "model.pt", image_size=10**7)
    refused_process(["evaluate", "--checkpoint", str(checkpoint), "--data", TINY_DATA],
                    str(checkpoint), "weights do not match", "image_size 10000000")


def test_train_with_nan_weight_decay_is_refused(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    refused(capsys, ["train", "--weight-decay", "nan", "--data", TINY_DATA, "--epochs", "1",
                     "--out", str(tmp_path / "out")], "weight_decay must be >= 0, got nan")
    refused(capsys, ["train", "--lr", "inf", "--data", TINY_DATA, "--epochs", "1"],
            "lr must be finite, got inf")
    assert not (tmp_path / "out").exists()


# --- study report: damaged experiments, and folders it did not write -----------------------


def fake_experiment(exp: Path, study: dict[str, object] | None = None) -> Path:
    """Two finished trials as Ray lays them out, each with a checkpoint; no Ray needed.

    Trial b has the better validation accuracy, trial a the better test accuracy.
    """
    from study.training.config import TrialConfig
    from study.training.model import build_mlp

    for i, (trial_id, val, test) in enumerate((("aaaa0001", 60.0, 90.0),
                                               ("aaaa0002", 70.0, 50.0))):
        trial = exp / f"train_trial_{trial_id}_{i + 1}_lr=0.00{i + 1}"
        (trial / "checkpoint_000000").mkdir(parents=True)
        config = {**TINY_NET, "lr": 0.001 * (i + 1), "seed": 0}
        (trial / "params.json").write_text(json.dumps(config))
        rows = [{"epoch": e, "val_accuracy": val - 2 + e, "val_loss": 0.6, "val_auroc": 0.7,
                 "train_loss": 0.6, "train_accuracy": 60.0, "trial_id": trial_id,
                 "config": config, "time_total_s": 1.0} for e in (1, 2)]
        rows[-1].update(test_accuracy=test, test_auroc=0.5)
        (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        weights = build_mlp(16 * 16, 2, 1, 16, 0.5).state_dict()
        torch.save({"config": TrialConfig.from_dict(config).to_dict(), "model": weights,
                    "best_model": weights}, trial / "checkpoint_000000" / "state.pt")
    (exp / "study.json").write_text(json.dumps(
        study or {"metric": "val_accuracy", "mode": "max", "searched": ["lr"]}))
    return exp


def best_trial_dir(exp: Path) -> Path:
    return next(exp.glob("train_trial_aaaa0002_*"))


DAMAGED_REPORT_INPUTS = {
    "result.json not UTF-8": (lambda e: (best_trial_dir(e) / "result.json").write_bytes(
        b'{"epoch": 1, "val_accuracy": 5\xff\xfe}\n'), ["result.json", "not UTF-8"]),
    "params.json not UTF-8": (lambda e: (best_trial_dir(e) / "params.json").write_bytes(
        b"\xff\xfe{}"), ["params.json", "not UTF-8"]),
    "a bare number as a result line": (lambda e: (best_trial_dir(e) / "result.json").write_text(
        "5\n"), ["result.json", "line 1 is not a result record", "'5'"]),
    "best trial's state.pt truncated": (
        lambda e: (best_trial_dir(e) / "checkpoint_000000" / "state.pt").write_bytes(
            (best_trial_dir(e) / "checkpoint_000000" / "state.pt").read_bytes()[:300]),
        ["state.pt", "the best trial's checkpoint cannot be read"]),
    "trial_data not a list": (lambda e: (e / "experiment_state-2026-01-01_00-00-00.json")
                              .write_text('{"trial_data": 5}'),
                              ["experiment_state-", "trial_data is not a list"]),
    "study.json a list": (lambda e: (e / "study.json").write_text("[1]"),
                          ["study.json", "must hold a JSON object"]),
}


@pytest.mark.parametrize("case", DAMAGED_REPORT_INPUTS, ids=list(DAMAGED_REPORT_INPUTS))
def test_report_on_damaged_files_is_one_line_and_keeps_the_summary(
        case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One line, exit 2, and summary/ as the previous report left it (not half new)."""
    exp = fake_experiment(tmp_path / "exp")
    assert cli.main(["report", str(exp)]) == 0
    capsys.readouterr()
    before = snapshot(exp / "summary")
    assert "model.pt" in before and "report.md" in before
    damage, needles = DAMAGED_REPORT_INPUTS[case]
    damage(exp)
    refused(capsys, ["report", str(exp)], *needles)
    assert snapshot(exp / "summary") == before
    assert [p.name for p in exp.iterdir() if p.name.startswith(".summary")] == []


def test_report_never_selects_by_the_test_split(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A damaged study.json that names a test metric is refused, not obeyed."""
    exp = fake_experiment(tmp_path / "exp", {"metric": "test_accuracy", "mode": "max"})
    refused(capsys, ["report", str(exp)], str(exp / "study.json"),
            "metric must be one of val_accuracy, val_loss, val_auroc", "'test_accuracy'")
    assert not (exp / "summary").exists()
    (exp / "study.json").write_text(json.dumps({"metric": "val_accuracy", "mode": "max"}))
    assert cli.main(["report", str(exp)]) == 0
    best = json.loads((exp / "summary" / "best_config.json").read_text())
    assert best["trial_ids"] == ["aaaa0002"]  # best validation, not best test accuracy


@pytest.mark.parametrize("where", ["summary", "--out"])
def test_report_into_a_file_is_refused(where: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    exp = fake_experiment(tmp_path / "exp")
    target = exp / "summary" if where == "summary" else tmp_path / "out"
    target.write_text("mine")
    argv = ["report", str(exp)] + (["--out", str(target)] if where == "--out" else [])
    refused(capsys, argv, str(target), "exists and is not a folder")
    assert target.read_text() == "mine"


def test_report_refuses_a_folder_it_did_not_write(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    exp = fake_experiment(tmp_path / "exp")
    out = tmp_path / "mine"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "my_plot.png").write_bytes(b"\x89PNG mine")
    (out / "report.md").write_text("# my own report\n")
    before = snapshot(out)
    refused(capsys, ["report", str(exp), "--out", str(out)], f"--out {out}",
            "did not write", "nothing was changed")
    assert snapshot(out) == before
    refused(capsys, ["report", str(exp), "--out", str(exp)], "is the experiment folder")
    refused(capsys, ["report", str(exp), "--out", str(tmp_path)], "holds it")


def test_report_keeps_files_it_did_not_write_in_its_own_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A user's plots added to summary/figures survive the next report; what the report wrote
    is replaced as a whole; a file of the report's that the user edited is never overwritten."""
    exp = fake_experiment(tmp_path / "exp")
    assert cli.main(["report", str(exp)]) == 0
    summary = exp / "summary"
    figures = sorted(p.name for p in (summary / "figures").glob("*.png"))
    assert figures
    (summary / "figures" / "my_plot.png").write_bytes(b"\x89PNG mine")
    (summary / "notes.md").write_text("my notes")
    (best_trial_dir(exp) / "result.json").write_text(  # new results: a new report
        (best_trial_dir(exp) / "result.json").read_text().replace('"val_loss": 0.6',
                                                                   '"val_loss": 0.5'))
    old_board = (summary / "leaderboard.csv").read_text()
    assert cli.main(["report", str(exp)]) == 0
    assert (summary / "figures" / "my_plot.png").read_bytes() == b"\x89PNG mine"
    assert (summary / "notes.md").read_text() == "my notes"
    assert (summary / "leaderboard.csv").read_text() != old_board
    assert sorted(p.name for p in (summary / "figures").glob("hpo_*.png")) == [
        f for f in figures if f.startswith("hpo_")]

    (summary / "report.md").write_text("# edited by hand\n")
    before = snapshot(summary)
    refused(capsys, ["report", str(exp)], str(summary / "report.md"), "move it away")
    assert snapshot(summary) == before
    capsys.readouterr()
    (summary / "report.md").unlink()  # once moved away, the report writes it again
    assert cli.main(["report", str(exp)]) == 0
    assert (summary / "report.md").read_text().startswith("# Study report")



# --- the engine: restore-time pickles, a folder claimed once, a hint that pastes safely -----


@pytest.mark.slow
def test_every_pickle_ray_restores_is_checked(copy: Path) -> None:
    """The files checked are found from Ray's own names, and they include every pickle in a
    real experiment (a pickle stream starts with the PROTO opcode, 0x80)."""
    from study.engine.resume import restore_pickles

    checked = set(restore_pickles(copy))
    pickles = {p for p in copy.rglob("*") if p.is_file() and p.read_bytes()[:1] == b"\x80"}
    assert pickles and pickles <= checked, sorted(map(str, pickles - checked))
    names = {p.name.split("-")[0] for p in checked}
    assert {"tuner.pkl", "experiment_state", "basic"} <= names, names


@pytest.mark.slow
@pytest.mark.parametrize("pattern", ["basic-variant-state-*.json", "*/error.pkl",
                                     "searcher-state-x.pkl"])
def test_resume_never_unpickles_a_file_others_could_write(
        pattern: str, copy: Path, tmp_path: Path) -> None:
    """A restore-time pickle replaced by one whose __reduce__ creates a marker, and made
    world-writable: `--resume` refuses it, and the marker is never created."""
    marker = tmp_path / "payload-ran"
    if "*" in pattern:
        targets = sorted(copy.glob(pattern))
        if not targets:  # no trial errored: put an error.pkl where Ray would look for one
            targets = [next(p.parent for p in copy.glob("*/params.json")) / "error.pkl"]
    else:
        targets = [copy / pattern]
    for target in targets:
        target.write_bytes(pickle.dumps(Payload(marker)))
        target.chmod(0o666)
    before = snapshot(copy)
    refused_process(resume(copy), "writable by other users", str(targets[-1].parent))
    assert not marker.exists()
    assert snapshot(copy) == before


def test_a_folder_is_claimed_by_one_run_only(tmp_path: Path) -> None:
    """Of two runs with one --name, the second is refused even if the first has not yet
    written anything into the folder (the existence check and the creation are one step)."""
    from study.engine import run as engine
    from study.engine.options import RunOptions, resolved

    opts = resolved(RunOptions(name="same", storage_path=str(tmp_path)))
    exp_dir = tmp_path / "same"
    engine._check_experiment_folder(opts, exp_dir, None, "synthetic")
    assert exp_dir.is_dir() and list(exp_dir.iterdir()) == []
    with pytest.raises(StudyError, match="already exists"):
        engine._check_experiment_folder(opts, exp_dir, None, "synthetic")


def test_a_run_refused_after_claiming_its_folder_leaves_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Claimed, then refused (bad data): the folder goes again, so the same command can be
    run once the data is fixed."""
    storage = tmp_path / "results"
    refused(capsys, ["run", "--space", str(write_space(tmp_path / "s.yaml", {}, TINY_NET)),
                     "--data", str(tmp_path / "missing.npz"), "--storage-path", str(storage),
                     "--name", "n", "--quiet"], "no such file")
    assert not (storage / "n").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_runs_with_one_name_started_together(tmp_path: Path) -> None:
    """One runs, the other is refused with one line; one experiment state, one study."""
    space = write_space(tmp_path / "space.yaml", {"lr": {"loguniform": [1.0e-3, 1.0e-2]}},
                        {**TINY_NET, "epochs": 1})
    storage = tmp_path / "results"
    argv = ["run", "--space", str(space), "--data", TINY_DATA, "--search", "random",
            "--scheduler", "fifo", "--num-samples", "1", "--num-cpus", "1", "--storage-path",
            str(storage), "--name", "same", "--quiet"]
    procs = [subprocess.Popen(study_command(*argv, "--seed", str(seed)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
             for seed in (1, 2)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [0, 2], results
    _, _, err = next(r for r in results if r[0] == 2)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "already exists" in lines[0] and "Traceback" not in err, err
    exp = storage / "same"
    assert len(list(exp.glob("experiment_state-*.json"))) == 1
    assert len(list(exp.glob("*/params.json"))) == 1
    winner = 1 + [status for status, _, _ in results].index(0)
    assert json.loads((exp / "study.json").read_text())["options"]["seed"] == winner


def test_resume_hint_is_shell_quoted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A storage path with a space and a `;` in --name: the printed command, pasted into a
    shell, is one `study run` with exactly these arguments (and runs nothing else)."""
    import shlex

    from study.cli import run_report

    storage, name = tmp_path / "my results", "a;touch PWNED"

    def interrupted(opts: object, command: str | None = None) -> object:
        (storage / name).mkdir(parents=True)  # started: there is something to resume
        raise KeyboardInterrupt

    monkeypatch.setattr(run_report, "run_study", interrupted)
    space = write_space(tmp_path / "s.yaml", {}, TINY_NET)
    assert cli.main(["run", "--space", str(space), "--storage-path", str(storage), "--name",
                     name, "--quiet"]) == 130
    err = capsys.readouterr().err
    command = err.split("continue with: ", 1)[1].strip()
    assert shlex.split(command) == ["study", "run", "--resume", "--name", name,
                                    "--storage-path", str(storage)]
    done = subprocess.run(["sh", "-n", "-c", command], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr  # one valid command line


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("num_samples", "2", "must be int or None, got str '2'"),
    ("seed", "0", "must be int, got str '0'"),
    ("name", 5, "must be str or None, got int 5"),
    ("cpus_per_trial", "1", "must be float, got str '1'"),
    ("target_ci", "2", "must be float or None, got str '2'"),
    ("space", None, "must be str, got NoneType None"),
    ("quiet", "no", "must be bool, got str 'no'"),
    ("repeats", True, "must be int or str, got bool True"),
    ("max_concurrent", 2.5, "must be int or None, got float 2.5"),
])
def test_the_notebook_api_names_an_option_of_the_wrong_type(option: str, value: object,
                                                            expected: str,
                                                            tmp_path: Path) -> None:
    """study.run(...) refuses a wrong type before anything starts, naming the option (a
    string where a number belongs used to fail deep inside; `quiet="no"` counted as quiet)."""
    import study

    with pytest.raises(TypeError) as raised:
        study.run(**{option: value}, storage_path=str(tmp_path))
    assert str(raised.value) == f"study.run({option}=...): {expected}"
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_the_notebook_api_takes_numbers_as_numbers() -> None:
    from study.cli.api import check_types

    check_types({"num_samples": 2, "cpus_per_trial": 1, "gpus_per_trial": 0.5, "target_ci": 2,
                 "repeats": "auto", "name": None, "quiet": True, "max_epochs": None})


@pytest.mark.parametrize(("address", "expected"), [
    ("127.0.0.1:1", "--address '127.0.0.1:1': cannot connect to 127.0.0.1:1 within 5 s"),
    ("ray://127.0.0.1:1", "--address 'ray://127.0.0.1:1': cannot connect to 127.0.0.1:1"),
    ("nonsense", "--address 'nonsense' has no port"),
])
def test_ray_address_in_the_environment_is_checked_as_address(
        address: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """RAY_ADDRESS without --address is where ray.init connects: it gets --address's checks
    (127.0.0.1:1 hung 150 s, ray:// gave a traceback), one line and exit 2."""
    import time

    monkeypatch.setenv("RAY_ADDRESS", address)
    space = write_space(tmp_path / "s.yaml", {}, TINY_NET)
    start = time.monotonic()
    refused(capsys, ["run", "--space", str(space), "--storage-path", str(tmp_path / "r"),
                     "--quiet"], expected)
    assert time.monotonic() - start < 60
    assert not (tmp_path / "r").exists() or list((tmp_path / "r").iterdir()) == []


# --- the model family, augmentation and class balance ---------------------------------------


MODEL_ERRORS = {
    "unknown model": ("params:\n  model: {choice: [mlp, resnet]}\n",
                      ["params.model.choice", "model must be one of mlp, cnn, got 'resnet'"]),
    "unknown augment": ("fixed:\n  augment: wild\n",
                        ["fixed.augment", "augment must be one of none, light, strong, "
                                          "got 'wild'"]),
    "unknown class weight": ("params:\n  class_weight: {choice: [none, heavy]}\n",
                             ["params.class_weight.choice", "class_weight must be one of none, "
                                                            "balanced, got 'heavy'"]),
    "even kernel": ("fixed:\n  model: cnn\n  kernel_size: 4\n",
                    ["fixed.kernel_size", "kernel_size must be an odd integer >= 1, got 4"]),
    "CNN deeper than 16x16 allows": (
        "params:\n  model: {choice: [mlp, cnn]}\n  depth: {int: [1, 5]}\nfixed:\n  epochs: 1\n",
        ["params.depth: a CNN of depth 5 halves 16x16 images 5 times, to nothing; "
         "at most depth 4 at that size"]),
}


@pytest.mark.parametrize("case", MODEL_ERRORS, ids=list(MODEL_ERRORS))
def test_bad_model_family_values(case: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    storage = refused_space(*MODEL_ERRORS[case], tmp_path, capsys)
    assert not storage.exists() or not any(storage.rglob("*.json"))


@pytest.mark.parametrize(("flags", "needle"), [
    (["--model", "resnet"], "flags: model must be one of mlp, cnn, got 'resnet'"),
    (["--augment", "wild"], "flags: augment must be one of none, light, strong, got 'wild'"),
    (["--class-weight", "heavy"], "class_weight must be one of none, balanced, got 'heavy'"),
    (["--model", "cnn", "--depth", "5"], "depth: a CNN of depth 5 halves 16x16 images 5 times"),
])
def test_bad_model_family_flags_of_study_train(flags: list[str], needle: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    refused(capsys, ["train", "--data", TINY_DATA, "--epochs", "1", "--out",
                     str(tmp_path / "run"), *flags], needle)
    assert not (tmp_path / "run").exists()
