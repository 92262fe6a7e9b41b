"""How many trials a Ray study ran at once, read off its trials' reported results.

A trial ran from its first report's time minus that report's `time_this_iter_s` (Ray's clock
from the trial's start on its worker to the report) until its last report. The time of a
report is the trainable's `reported_at` (wall-clock seconds); results without it (the naive
trainable, older experiments) fall back to Ray's `timestamp`, which has whole seconds only.
"""

from __future__ import annotations

from typing import Any


def _time(result: dict[str, Any]) -> float:
    return float(result.get("reported_at", result.get("timestamp", 0.0)))


def trial_interval(results: list[dict[str, Any]]) -> tuple[float, float]:
    """(start, end) of one trial, in wall-clock seconds, from its results in report order."""
    first, last = results[0], results[-1]
    return _time(first) - float(first.get("time_this_iter_s", 0.0)), _time(last)


def concurrency(trials: list[list[dict[str, Any]]], slots: int) -> dict[str, Any]:
    """Trials running at once over a study, its trials' results given per trial (those that
    reported anything): the peak, the time-weighted mean over the study's span (first start
    to last end), and how many trial starts found every other slot busy (for 2 slots: the
    other trial running)."""
    spans = sorted(trial_interval(t) for t in trials if t)
    if not spans:
        return {"slots": slots, "trials": 0, "peak": 0, "mean": 0.0, "span_s": 0.0,
                "starts_others_busy": 0}
    # Sweep the starts (+1) and ends (-1); at one instant an end goes first, so a trial that
    # starts as another ends is not counted as running beside it.
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    area, before = 0.0, events[0][0]
    for at, step in events:
        area += running * (at - before)
        running, before = running + step, at
        peak = max(peak, running)
    span = max(e for _, e in spans) - spans[0][0]
    others_busy = sum(
        1 for i, (start, _) in enumerate(spans)
        if sum(1 for j, (s, e) in enumerate(spans) if j != i and s <= start < e) >= slots - 1)
    return {"slots": slots, "trials": len(spans), "peak": peak,
            "mean": area / span if span > 0 else float(peak), "span_s": span,
            "starts_others_busy": others_busy}


def concurrency_lines(details: dict[str, Any]) -> list[str]:
    """One Markdown table row per Ray study found in the phases' details (every dict holding
    a `concurrency` entry), named by its path in the details."""
    rows: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            c = node.get("concurrency")
            if isinstance(c, dict) and "peak" in c:
                rows.append(f"| {path} | {c['slots']} | {c['peak']} | {c['mean']:.2f} | "
                            f"{c['starts_others_busy']}/{c['trials']} | {c['span_s']:.1f} |")
            for key, value in node.items():
                if key != "concurrency":
                    walk(value, f"{path}/{key}" if path else str(key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(details, "")
    if not rows:
        return []
    return ["", "Trials running at once, per Ray study (from each trial's first to its last "
            "report):", "",
            "| study | slots | peak | time-weighted mean | starts finding every other slot busy "
            "| span s |", "| --- | ---: | ---: | ---: | ---: | ---: |", *rows]
