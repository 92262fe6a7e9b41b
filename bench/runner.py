"""What the benchmark's phases share: child processes, memory, targets, data, the table, JSON.

bench/run.py runs each phase in a child process (`run.py --phase NAME`, see `run_child`), with
the summed memory of its process tree sampled on request (`TreeMemory`); the parent collects
the keys and writes them with `write_report` as JSON and as the Markdown table of `markdown`.
Imports nothing heavy at module level: the phases' children import what they time themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from concurrency import concurrency_lines
from gpu_table import gpu_rows, profile_lines

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
RUN_SCRIPT = BENCH / "run.py"  # the children run `run.py --phase NAME`
PHASES = ("epoch", "overhead", "optuna", "fraction", "memory", "repeats", "report", "cnn")
GPU_PHASES = ("gpu_epoch", "gpu_stacked", "gpu_profile", "gpu_study", "gpu_grid")  # `--gpu`
TARGETS = {  # key: (comparison, target); the CPU keys on a 2-core CPU machine, the GPU keys
    "overhead_ratio": ("<=", 2.0),  # on one GPU
    "optuna_wall_ratio": ("<=", 1.0),
    "epoch_speedup_cpu": (">=", 1.0),
    "asha_tpe_epoch_fraction": ("<=", 0.30),
    "repeats_speedup_cpu": (">=", 1.5),
    "report_seconds": ("<=", 5.0),
    "cnn_repeats_speedup_cpu": (">=", 1.5),
    "cnn_epoch_vs_plain_cpu": (">=", 1.2),
    "epoch_speedup_gpu_bs2": (">=", 8.0),
    "epoch_speedup_gpu_bs16": (">=", 8.0),
    "epoch_speedup_gpu_bs32": (">=", 8.0),
    "epoch_speedup_gpu_bs128": (">=", 30.0),
    "gpu_repeats_epoch_ratio": ("<=", 1.3),
    "gpu_cnn_repeats_epoch_ratio": ("<=", 1.3),
    "gpu_study_wall_s": ("<=", 15.0),
    "gpu_grid_wall_s": ("<=", 45.0),
}
GPU_KEYS = tuple(k for k in TARGETS if "gpu" in k)
TRIALS, EPOCHS = 16, 10  # overhead and optuna workloads (fixed, so runs compare)
SLOTS = 2  # concurrent trials of the Ray studies: 2 CPUs, 1 CPU per trial


def now() -> float:
    return time.perf_counter()


def log(msg: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


# --- an experiment on disk, read through analysis.results ---------------------------------


def _trials(exp_dir: Path) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each trial folder's (params, results), in creation order (folders sorted by name: Ray
    numbers its trials in their names, zero-padded)."""
    from analysis.results import read_trial, trial_dirs

    return [read_trial(trial_dir) for trial_dir in trial_dirs(exp_dir)]


def trial_results(exp_dir: Path) -> list[list[dict[str, Any]]]:
    """Per trial (in creation order) that reported anything, its reported results."""
    return [results for _, results in _trials(exp_dir) if results]


def trial_configs(exp_dir: Path) -> list[dict[str, Any]]:
    """Per trial (in creation order), its configuration as Ray Tune wrote it."""
    return [params for params, _ in _trials(exp_dir)]


# --- the machine ---------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib":
            round(mem_kib / 2**20, 1), "python": platform.python_version(),
            "os": platform.platform(), "loadavg": list(os.getloadavg())}


def versions() -> dict[str, str]:
    import optuna
    import ray
    import torch

    return {"torch": torch.__version__, "ray": ray.__version__, "optuna": optuna.__version__}


# --- child processes and their memory -----------------------------------------------------


def run_child(phase: str, out_dir: Path, extra: list[str] | None = None,
              sample_memory: bool = False, timeout: float = 1800) -> dict[str, Any]:
    """Run `--phase` in a child process; return its JSON, its wall time and (optionally) the
    peak summed PSS/RSS of its whole process tree. Past `timeout` the child's process group
    is stopped and {"stopped": True, "child_wall_s": timeout} returned."""
    tag = "".join(c for c in "-".join(a for a in extra or [] if "/" not in a) if c.isalnum()
                  or c == "-")
    result_file = out_dir / f"{phase}{tag}.json"
    n = 1
    while result_file.exists():  # repetitions of one phase
        n += 1
        result_file = out_dir / f"{phase}{tag}-{n}.json"
    log_file = result_file.with_suffix(".log")
    cmd = [sys.executable, str(RUN_SCRIPT), "--phase", phase,
           "--out", str(out_dir), "--phase-out", str(result_file), *(extra or [])]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = now()
    with open(log_file, "w") as log_out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log_out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        sampler = TreeMemory(proc.pid) if sample_memory else None
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            return {"stopped": True, "child_wall_s": now() - start}
        except BaseException:  # stopped ourselves (SIGTERM, Ctrl-C): the child goes too
            stop_group(proc)
            raise
        finally:
            if sampler:
                sampler.stop()
    wall = now() - start
    if rc != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"phase {phase} {extra or ''} failed (exit {rc}); log {log_file}:\n"
                           f"{tail}")
    out = json.loads(result_file.read_text())
    out["child_wall_s"] = wall
    if sampler:
        out.update(sampler.peaks())
    return out


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a child started in a session of its own, and everything it started (a Ray)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _descendants(root: int) -> list[int]:
    """`root` and every process below it (Ray's gcs, raylet, agents and workers included)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _pss_rss_kib(pid: int) -> tuple[int, int]:
    """Proportional and resident set size of one process, from /proc/PID/smaps_rollup."""
    pss = rss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pss, rss


class TreeMemory:
    """Samples the summed PSS and RSS of a process and all its descendants (Ray's too)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self._root = pid
        self._interval = interval
        self._peak_pss = self._peak_rss = 0
        self._peak_procs = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.is_set():
            pids = _descendants(self._root)
            sizes = [_pss_rss_kib(pid) for pid in pids]
            pss, rss = sum(s[0] for s in sizes), sum(s[1] for s in sizes)
            if pss > self._peak_pss:
                self._peak_pss, self._peak_procs = pss, sum(1 for s in sizes if s[1])
            self._peak_rss = max(self._peak_rss, rss)
            self._done.wait(self._interval)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def peaks(self) -> dict[str, float]:
        return {"peak_pss_mib": self._peak_pss / 1024, "peak_rss_mib": self._peak_rss / 1024,
                "processes_at_peak": self._peak_procs}


# --- data and search spaces ---------------------------------------------------------------


def data_256(out_dir: Path) -> Path:
    """The 256x256 synthetic data set (2 x 1,000 train, 2 x 200 test) as a MedMNIST-style
    .npz, generated once and cached in bench/results/data/."""
    import numpy as np

    path = RESULTS / "data" / "synthetic256.npz"
    if path.exists():
        return path
    from study.training.data import load_data

    data = load_data("synthetic:size=256,n=1000,n_test=200,seed=0")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, train_images=data.train.images, train_labels=data.train.labels,
             val_images=data.val.images, val_labels=data.val.labels,
             test_images=data.test.images, test_labels=data.test.labels)
    tmp.replace(path)
    return path


def write_space(path: Path, base: str, params: dict[str, Any] | None = None,
                **fixed: Any) -> Path:
    """Copy a shipped search space with extra fixed values (e.g. a fixed training seed) or
    extra searched parameters (e.g. the seed as a grid axis)."""
    import yaml

    raw = yaml.safe_load((ROOT / "search_spaces" / f"{base}.yaml").read_text())
    raw.setdefault("fixed", {}).update(fixed)
    for name in fixed:
        raw.get("params", {}).pop(name, None)
    raw.setdefault("params", {}).update(params or {})
    for name in params or {}:
        raw["fixed"].pop(name, None)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# --- the results: JSON and the Markdown table ---------------------------------------------


def write_report(report: dict[str, Any], out_dir: Path, json_file: str | None) -> str:
    """Write the results to OUT_DIR/results.{json,md}, bench/results/latest.json and (if given)
    `json_file`; return the Markdown table."""
    text = markdown(report)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2))
    (out_dir / "results.md").write_text(text)
    shutil.copy(out_dir / "results.json", RESULTS / "latest.json")
    if json_file:
        Path(json_file).write_text(json.dumps(report, indent=2))
    return text


def _fmt(value: Any, digits: int = 2) -> str:
    return "null" if value is None else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    """The results as a Markdown table, with what each number compares."""
    d = report.get("details", {})

    def met(key: str) -> str:
        value = report.get(key)
        if value is None:
            return "not measured"
        op, target = TARGETS[key]
        ok = value <= target if op == "<=" else value >= target
        return "yes" if ok else "**no**"

    rows = []
    if "overhead" in d:
        o = d["overhead"]
        rows.append(("overhead_ratio", f"study {o['ours']['study_s']:.1f} s / ideal "
                     f"{o['ideal_s']:.1f} s (16 x 10 epochs, 32x32, Optuna + FIFO, 2 slots)"))
        rows.append(("naive_overhead_ratio", f"naive study {o['naive']['study_s']:.1f} s / the "
                     "same ideal (DataLoader in the trial, data per trial, no actor reuse)"))
    if "optuna" in d:
        o = d["optuna"]
        stopped = " (stopped there: the ratio is an upper bound)" if o["plain_stopped"] else ""
        rows.append(("optuna_wall_ratio", f"run_study {o['ours_wall_s']:.1f} s (with Ray start "
                     f"and stop) / plain Optuna {o['plain_wall_s']:.1f} s{stopped} "
                     "(16 x 10 epochs, 64x64)"))
    if "epoch" in d:
        e = d["epoch"]
        rows.append(("epoch_speedup_cpu", f"homework loop {e['homework_s_per_epoch']:.2f} s / "
                     f"ours {e['ours_s_per_epoch']:.2f} s per epoch (256x256, 1,600 images, "
                     f"batch 32, {e['threads']} thread(s))"))
    if "fraction" in d:
        f = d["fraction"]
        s = f["summary"]
        rows.append(("asha_tpe_epoch_fraction",
                     f"TPE + ASHA epochs to within 1 point of the grid's best "
                     f"({f['grid_best_val_accuracy']:.2f} %) / the grid's {f['grid_epochs']} "
                     f"epochs, mean of {s['optuna+asha']['seeds']} seeds "
                     f"(reached {s['optuna+asha']['reached']}/{s['optuna+asha']['seeds']})"))
        rows.append(("random_asha_epoch_fraction",
                     f"random + ASHA, reached {s['random+asha']['reached']}/"
                     f"{s['random+asha']['seeds']}"))
        rows.append(("tpe_fifo_epoch_fraction",
                     f"TPE + FIFO, reached {s['optuna+fifo']['reached']}/"
                     f"{s['optuna+fifo']['seeds']}"))
    if "memory" in d:
        m = d["memory"]
        rows.append(("memory_ratio_4_trials", f"peak PSS {m['4']['peak_pss_mib']:.0f} MiB / "
                     f"{m['1']['peak_pss_mib']:.0f} MiB (summed RSS ratio "
                     f"{report['memory_ratio_4_trials_rss']:.2f}); a figure, not a target"))
    if "repeats" in d:
        r = d["repeats"]
        rows.append(("repeats_speedup_cpu", f"trials' own seconds (Ray's time_this_iter_s "
                     f"summed) of the homework grid x 3 seeds, 32x32, {r['epochs']} epochs: "
                     f"{r['separate_trials']} separate trials {r['separate_s']:.1f} s / "
                     f"{r['stacked_trials']} stacked trials {r['stacked_s']:.1f} s (study wall "
                     f"{r['separate_wall_s']:.1f} s / {r['stacked_wall_s']:.1f} s)"))
    if "report" in d:
        t = d["report"]
        rows.append(("report_seconds", f"`study report` on the {t['trials']}-trial experiment, "
                     f"a fresh process and --out folder, median of {t['reps']} "
                     f"({', '.join(f'{w:.1f}' for w in t['wall_s'])} s; CPU "
                     f"{t['median_cpu_s']:.1f} s with its workers; {len(t['figures'])} figures)"))
    if "cnn" in d:
        c = d["cnn"]
        for key, what in (("cnn_repeats_speedup_cpu", "3 separate CNN seeds {separate:.3f} s / "
                           "3 stacked {stacked:.3f} s per epoch"),
                          ("cnn_epoch_vs_plain_cpu", "plain DataLoader loop {plain:.3f} s / "
                           "ours {ours:.3f} s per training epoch")):
            r = c["bs32"]
            rows.append((key, what.format(separate=r["separate_s_per_epoch"],
                                          stacked=r["stacked_s_per_epoch"],
                                          plain=r["plain_s_per_epoch"],
                                          ours=r["ours_s_per_epoch"])
                         + " (28x28, 3 x 16-channel blocks, batch 32, one thread)"))
    gpu = report.get("gpu_note")
    rows += gpu_rows(d)
    shown = {key for key, _ in rows}
    rows += [(key, gpu or "not measured: its phase failed or ran out of time (details JSON)")
             for key in GPU_KEYS if key not in shown]
    lines = ["| key | value | target | met | what |", "| --- | ---: | --- | --- | --- |"]
    for key, what in rows:
        target = TARGETS.get(key)
        lines.append(f"| `{key}` | {_fmt(report.get(key))} | "
                     f"{f'{target[0]} {target[1]:g}' if target else ''} | "
                     f"{met(key) if target else ''} | {what} |")
    lines += concurrency_lines(d) + profile_lines(d)
    m = report["machine"]
    lines.append("")
    lines.append(f"{report['date']}, {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; "
                 f"torch {report['versions']['torch']}, ray {report['versions']['ray']}, "
                 f"optuna {report['versions']['optuna']}; load average at start "
                 f"{m['loadavg'][0]:.1f}, at end {m['loadavg_end'][0]:.1f}; "
                 f"{report['total_s'] / 60:.1f} min; `{report['command']}`."
                 + (f" {gpu}." if gpu else ""))
    return "\n".join(lines) + "\n"
