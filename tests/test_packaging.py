"""The project as users install it: a wheel, not the checkout, finds its shipped search spaces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_installed_elsewhere_runs_a_shipped_space(tmp_path: Path) -> None:
    """Build a wheel, install it (not editable) into a fresh virtual environment and run
    `study run --space homework` from a folder outside the checkout.

    The new environment sees this one's packages (torch, Ray, ...) through a .pth line, so
    nothing is downloaded; the project itself comes only from the wheel.
    """
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(dist), str(ROOT)],
                   check=True, capture_output=True, text=True, timeout=300)
    wheel = next(dist.glob("xray_study-*.whl"))

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no checkout on the path
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path("
                           "'purelib'))"], check=True, capture_output=True, text=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                    "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300, env=env)
    # Then, after the new environment's own site-packages, this one's: the wheel's `study` is
    # found first, and this environment's .pth files (an editable install) are not read.
    Path(site.stdout.strip(), "outer.pth").write_text(sysconfig.get_path("purelib") + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run(
        [str(venv / "bin" / "study"), "run", "--space", "homework", "--search", "random",
         "--num-samples", "1", "--max-epochs", "1", "--data", "synthetic:size=16,n=40",
         "--num-cpus", "1", "--name", "wheel", "--quiet"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    meta = json.loads((elsewhere / "results" / "wheel" / "study.json").read_text())
    space_file = Path(meta["space_file"])
    assert space_file.name == "homework.yaml"
    assert space_file.is_relative_to(venv.resolve()), space_file  # the wheel's copy
    assert meta["searched"] == ["loss", "batch_size", "depth"]
    assert (elsewhere / "results" / "wheel" / "summary" / "best_config.json").is_file()
