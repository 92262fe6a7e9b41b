"""The GPU phases' rows of the benchmark's table, and the table of the profiled epochs.

bench/runner.py's `markdown` adds them; like it, this module imports nothing heavy.
"""

from __future__ import annotations

import math
from typing import Any

GPU_BATCHES = (2, 16, 32, 128)  # the batch sizes of the GPU epoch phase


def _captured(captured: bool, device: str) -> str:
    if captured:
        return "captured step"
    return "eager: the CPU" if device == "cpu" else "eager: capture failed"


# The profile table's columns of CUDA API calls: the call names each one counts.
CALL_COLUMNS = (("cudaLaunchKernel", "cuLaunchKernel"), ("cudaGraphLaunch",), ("cudaMemcpy",),
                ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"))


def _calls(calls: dict[str, int], names: tuple[str, ...]) -> int:
    """How many of the counted calls have a name starting with one of `names`."""
    return sum(n for key, n in calls.items() if key.startswith(names))


def profile_lines(details: dict[str, Any]) -> list[str]:
    """The `gpu_profile` phase's epochs, a table: wall time, the device's busy share, launches."""
    p = details.get("gpu_profile")
    if not p or "error" in p or p.get("stopped"):
        return []
    size = p["image_size"]
    lines = ["", f"One epoch under torch.profiler ({p['device']}, {size}x{size}; tables in "
             "`profile_*.txt`):", "",
             "| epoch | steps | wall s | device busy s | busy share | kernel launches | "
             "graph launches | copies | synchronisations |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, e in p.items():
        if not isinstance(e, dict) or "wall_s" not in e:
            continue
        counts = [_calls(e["cuda_api_calls"], names) for names in CALL_COLUMNS]
        share = e["device_busy_fraction"]
        share_text = "null" if share is None else f"{share:.2f}"
        lines.append(f"| {name} | {e['steps']} | {e['wall_s']:.4f} | {e['device_busy_s']:.4f} | "
                     f"{share_text} | {' | '.join(map(str, counts))} |")
    return lines


def gpu_rows(d: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, what) for each GPU key its phase measured, from the run's details `d`."""
    rows: list[tuple[str, str]] = []
    if "gpu_epoch" in d:
        e = d["gpu_epoch"]
        for batch in GPU_BATCHES:
            b = e.get(f"bs{batch}")
            if b:
                rows.append((f"epoch_speedup_gpu_bs{batch}",
                             f"lab loop {b['lab_s_per_epoch']:.4f} s / ours "
                             f"{b['ours_s_per_epoch']:.4f} s per epoch ({e['image_size']}x"
                             f"{e['image_size']}, {e['train_images']:,} images, batch {batch}, "
                             f"{_captured(b['captured'], e['device'])}"
                             f"; {e['device']})"))
    if "gpu_stacked" in d:
        s = d["gpu_stacked"]
        for family, key, what in (("mlp", "gpu_repeats_epoch_ratio", "the lab's MLP"),
                                  ("cnn", "gpu_cnn_repeats_epoch_ratio", "CNN 3 x 16 channels")):
            f = s.get(family)
            if f:
                captured = _captured(all(f["captured"].values()), s["device"])
                size = f["image_size"]
                rows.append((key, f"{s['seeds']} stacked seeds {f['stacked_s_per_epoch']:.4f} s "
                             f"/ one seed {f['single_s_per_epoch']:.4f} s per epoch ({what}, "
                             f"{size}x{size}, batch 32, {captured}; {s['device']})"))
    if "gpu_study" in d:
        g = d["gpu_study"]
        if g.get("wall_s") is not None:
            rows.append(("gpu_study_wall_s", f"bench/gpu_check.py: {g.get('trials')} trials x 10 "
                         f"epochs at {g.get('gpus_per_trial', 0.125):g} GPU, batch 32, 64x64; "
                         "trials' window "
                         f"{g.get('trials_window_s', math.nan):.1f} s, summed training "
                         f"{g.get('sum_train_s', math.nan):.1f} s, setup "
                         f"{g.get('sum_setup_s', math.nan):.1f} s"))
    if "gpu_grid" in d:
        g = d["gpu_grid"]
        size = g.get("image_size", 256)
        rows.append(("gpu_grid_wall_s", f"homework grid x 3 seeds stacked, {size}x{size}, "
                     f"{g.get('gpus_per_trial', 0.125):g} GPU a trial, Ray start and stop "
                     "included"
                     + (f"; {g['trials']} trials on {', '.join(g['devices'])}"
                        if "trials" in g else "; failed (details JSON)" if "error" in g
                        else "; stopped at its time limit")))
    return rows
