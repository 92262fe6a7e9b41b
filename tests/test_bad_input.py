"""Bad input at the study level: one line naming the problem and the value, exit status 2,
no traceback, within seconds, nothing overwritten; and nothing loaded is ever executed.

Most cases run `study.cli.main` in this process: they fail before Ray or any data is loaded.
Those where a real process matters (the GPU count, the network, pickles) run `python -m study`.
The `--resume` cases work on copies of one real experiment made once for the module.
"""

from __future__ import annotations

import ast
import hashlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _proc import TINY_DATA, run_study_process, study_command, write_space

from study import cli

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
}


@pytest.mark.parametrize("case", SPACE_ERRORS, ids=list(SPACE_ERRORS))
def test_bad_search_space(case: str, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    text, needles = SPACE_ERRORS[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    storage = tmp_path / "results"
    err = refused(capsys, ["run", "--space", str(path), "--data", TINY_DATA,
                           "--storage-path", str(storage), "--name", "s", "--quiet"], *needles)
    assert str(path) in err
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
    (["--num-samples", "5"], "--num-samples 5 differs from the study's 2"),
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
    root = Path(cli.__file__).resolve().parents[1]
    sources = sorted([*root.glob("study/*.py"), *root.glob("analysis/*.py")])
    seen = set()
    for source in sources:
        for name, call in _loader_calls(source):
            where = f"{source.name}:{call.lineno}"
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
