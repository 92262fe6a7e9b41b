"""The report's figure machinery: figures drawn in worker processes are the ones drawn here,
a figure that fails costs only itself, and progress is reported as figures finish."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes

from analysis import hpo, report, report_figures


def _history(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(n)
    values = 60 + 20 * rng.random(n)
    return pd.DataFrame({"number": range(n), "trial_id": [f"t{i}" for i in range(n)],
                         "state": ["complete"] * n, "value": values,
                         "best_so_far": np.maximum.accumulate(values)})


def _broken(ax: Axes) -> Axes:
    raise ValueError("no such column: lr")


def _figures() -> list[report_figures.Figure]:
    figures = [report_figures.Figure(f"history_{n}", f"history of {n}", hpo.plot_history,
                             (_history(n), "val_accuracy"), size=(5.0, 3.5))
               for n in (3, 8, 20)]
    figures.insert(1, report_figures.Figure("broken", "fails", _broken, size=(4.0, 3.0)))
    return figures


def test_worker_processes_draw_the_same_pngs(tmp_path: Path) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    calls: list[tuple[str, int, int]] = []
    serial = report_figures.FigureWriter(here)
    serial.draw_all(_figures())
    with report_figures.worker_pool(2) as pool:
        parallel = report_figures.FigureWriter(there, lambda *args: calls.append(args))
        parallel.draw_all(_figures(), pool)
    names = ["history_3.png", "history_8.png", "history_20.png"]
    assert list(serial.written) == list(parallel.written) == names  # the order asked
    for name in names:
        data = (there / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert data == (here / name).read_bytes()
    assert not (there / "broken.png").exists()
    for failed in (serial.failed, parallel.failed):
        assert failed == ["figure broken.png not drawn (ValueError: no such column: lr)"]
    assert [c[1:] for c in calls] == [(k, 4) for k in range(1, 5)]
    assert {c[0] for c in calls} == {"figures"}


def test_no_workers_on_one_core_or_for_one_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as in `study report` on its own
    monkeypatch.setattr(report_figures.os, "sched_getaffinity", lambda _pid: {0})
    assert report_figures.worker_count(13) == 0
    monkeypatch.setattr(report_figures.os, "sched_getaffinity", lambda _pid: set(range(64)))
    assert report_figures.worker_count(1) == 0
    assert report_figures.worker_count(13) == report_figures.MAX_WORKERS
    # another thread alive (a library's): no fork, the figures are drawn in this process
    import threading

    release = threading.Event()
    other = threading.Thread(target=release.wait, daemon=True)
    other.start()
    try:
        assert report_figures.worker_count(13) == 0
    finally:
        release.set()
        other.join()
    assert report_figures.worker_count(13) == report_figures.MAX_WORKERS
    # PyTorch loaded here (`study run`'s driver): its thread pools do not survive a fork
    monkeypatch.setitem(sys.modules, "torch", sys)
    assert report_figures.worker_count(13) == 0


def test_model_file_name_is_the_checkpoint_modules() -> None:
    from study.core.names import MODEL_FILE

    assert report.MODEL_FILE == MODEL_FILE


def test_the_report_imports_no_torch_until_it_exports_a_model() -> None:
    import subprocess
    import sys

    code = "import sys, analysis.report; print(sorted({'torch'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout
