"""bench/gpu_all.sh and `bench/run.py --gpu`: bad input refused in one line, a stage's output
packed into the few files a device machine hands back."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_all.sh"


def gpu_all(*args: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHON": sys.executable,
                                                **(env or {})})


@pytest.mark.parametrize("stages, env, line", [
    (["nope"], {}, "gpu_all.sh: unknown stage 'nope': tests, bench or study"),
    (["tests", ""], {}, "gpu_all.sh: unknown stage '': tests, bench or study"),
    (["tests"], {"DEVICE": "tpu"}, "gpu_all.sh: DEVICE must be cuda or cpu, got 'tpu'"),
    (["tests"], {"DEVICE": "cuda; rm -rf ~"},
     "gpu_all.sh: DEVICE must be cuda or cpu, got 'cuda; rm -rf ~'"),
])
def test_a_bad_stage_or_device_is_refused_before_anything_is_made(
        tmp_path: Path, stages: list[str], env: dict[str, str], line: str) -> None:
    out = tmp_path / "out"
    done = gpu_all(str(out), *stages, env={"WORK": str(tmp_path / "work"), **env})
    assert done.returncode == 2
    assert done.stderr.splitlines() == [line]
    assert not out.exists() and not (tmp_path / "work").exists()


def test_no_out_folder_is_a_usage_line() -> None:
    done = gpu_all()
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["usage: bash bench/gpu_all.sh OUT [tests|bench|study ...]"]


@pytest.mark.parametrize("which", ["OUT", "WORK"])
def test_a_file_where_a_folder_goes_is_refused_and_kept(tmp_path: Path, which: str) -> None:
    taken = tmp_path / "taken"
    taken.write_text("keep me\n")
    out, work = (taken, tmp_path / "work") if which == "OUT" else (tmp_path / "out", taken)
    done = gpu_all(str(out), "tests", env={"WORK": str(work), "DEVICE": "cpu"})
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"gpu_all.sh: {which} '{taken}' is not a folder this user can write"]
    assert taken.read_text() == "keep me\n"


@pytest.mark.parametrize("argv, line", [
    (["--device", "cpu"], "--device goes with --gpu"),
    (["--gpu", "--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
])
def test_bench_device_without_gpu_or_unknown_is_refused(argv: list[str], line: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), *argv],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2
    assert line in done.stderr.splitlines()[-1]
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_stage_comes_back_as_a_few_files(tmp_path: Path) -> None:
    """The tests stage on the CPU (its CUDA-only tests skip): OUT holds the environment, the
    stage's exit status and seconds, and everything else packed in one archive."""
    out, work = tmp_path / "out", tmp_path / "work"
    done = gpu_all(str(out), "tests", env={"WORK": str(work), "DEVICE": "cpu"}, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["all.tar.gz", "environment.txt",
                                                     "stages.tsv"]
    stage, rc, seconds = (out / "stages.tsv").read_text().split("\t")
    assert (stage, rc) == ("tests", "0") and 0 <= int(seconds) <= 240
    assert "devices: none" in (out / "environment.txt").read_text()
    with tarfile.open(out / "all.tar.gz") as packed:
        names = packed.getnames()
        log = packed.extractfile("./tests.log").read().decode()
    assert "./environment.txt" in names and "./stages.tsv" in names
    assert " passed, " in log and "skipped" in log and " failed" not in log
    assert "== tests: exit 0 in" in done.stdout
