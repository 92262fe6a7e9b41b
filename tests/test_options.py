"""`study.engine.options`: defaults decided once, and the checks (no Ray, no torch)."""

from __future__ import annotations

import sys

import pytest

from study.engine.options import DEFAULT_SAMPLES, RunOptions, check_options, command_line, resolved
from study.errors import StudyError


@pytest.mark.parametrize(("search", "scheduler", "expected"), [
    (None, None, ("optuna", "asha", DEFAULT_SAMPLES)),
    ("grid", None, ("grid", "fifo", 1)),
    ("random", None, ("random", "asha", DEFAULT_SAMPLES)),
    (None, "pbt", ("random", "pbt", DEFAULT_SAMPLES)),
    ("grid", "asha", ("grid", "asha", 1)),
    (None, "median", ("optuna", "median", DEFAULT_SAMPLES)),
])
def test_resolved_decides_search_scheduler_and_samples(
        search: str | None, scheduler: str | None, expected: tuple[str, str, int]) -> None:
    opts = resolved(RunOptions(search=search, scheduler=scheduler))
    assert (opts.search, opts.scheduler, opts.num_samples) == expected


def test_resolved_keeps_what_was_given_and_names_the_study() -> None:
    opts = resolved(RunOptions(search="random", num_samples=7, name="mine"))
    assert (opts.num_samples, opts.name) == (7, "mine")
    assert resolved(RunOptions()).name.startswith("study-")
    assert resolved(opts) == opts


def test_resolved_leaves_a_bad_sample_count_for_the_check() -> None:
    with pytest.raises(StudyError, match="--num-samples must be >= 1, got 0"):
        check_options(resolved(RunOptions(num_samples=0)))


@pytest.mark.parametrize(("opts", "message"), [
    (RunOptions(search="tpe"), "--search must be one of optuna, random, grid, got 'tpe'"),
    (RunOptions(scheduler="pbt", search="grid"), "cannot be combined with --search grid"),
    (RunOptions(repeats=0), "--repeats must be >= 1 or 'auto', got 0"),
    (RunOptions(cpus_per_trial=float("nan")), "--cpus-per-trial must be a number >= 0"),
    (RunOptions(cpus_per_trial=0), "both 0"),
    (RunOptions(name="a/b"), "--name must be a plain folder name"),
    (RunOptions(resume=True), "--resume needs --name"),
    (RunOptions(sampler="cmaes"), "--sampler must be one of tpe, gp, random, got 'cmaes'"),
    (RunOptions(sampler="gp", search="grid"),
     "--sampler gp is Optuna's, so it needs --search optuna; this study searches with grid"),
    (RunOptions(sampler="random", scheduler="pbt"), "this study searches with random"),
    (RunOptions(threshold="sensitivity:1.5"),
     "--threshold must be youden, sensitivity:S, specificity:S"),
])
def test_check_options_refuses_with_the_flag_and_value(opts: RunOptions, message: str) -> None:
    with pytest.raises(StudyError, match=message.replace("(", r"\(")):
        check_options(opts)


def test_command_line_names_only_what_differs_from_the_defaults() -> None:
    opts = RunOptions(search="grid", num_samples=2, resume=True, name="x", verbose=0)
    assert command_line(opts) == ("study run --search grid --num-samples 2 --name x --resume "
                                  "--quiet")
    assert command_line(RunOptions()) == "study run"


def test_options_load_neither_torch_nor_ray() -> None:
    import subprocess

    code = ("import sys, study.engine.options, study.cli.main; "
            "print('torch' in sys.modules, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_repeats_auto_is_a_fifo_grid_with_a_target() -> None:
    opts = resolved(RunOptions(repeats="auto", target_ci=2.0))
    assert (opts.search, opts.scheduler, opts.num_samples, opts.max_repeats) == (
        "grid", "fifo", 1, 10)
    check_options(opts)
    assert "--repeats auto --target-ci 2.0" in command_line(opts)


@pytest.mark.parametrize(("opts", "message"), [
    (RunOptions(repeats="auto"), "--repeats auto needs --target-ci W"),
    (RunOptions(repeats="auto", target_ci=-1.0), "--target-ci must be a number > 0, got -1"),
    (RunOptions(repeats="auto", target_ci=2.0, max_repeats=1), "--max-repeats must be >= 2"),
    (RunOptions(repeats="auto", target_ci=2.0, search="optuna"),
     "--repeats auto works with --search grid"),
    (RunOptions(repeats="auto", target_ci=2.0, scheduler="asha"),
     "--repeats auto needs every seed trained to the end (--scheduler fifo"),
    (RunOptions(repeats="auto", target_ci=2.0, num_samples=2), "--num-samples must be 1, got 2"),
    (RunOptions(repeats=3, target_ci=2.0), "--target-ci 2 needs --repeats auto"),
    (RunOptions(repeats="sometimes"), "--repeats must be >= 1 or 'auto', got 'sometimes'"),
])
def test_repeats_auto_checks(opts: RunOptions, message: str) -> None:
    with pytest.raises(StudyError, match=message.replace("(", r"\(")):
        check_options(opts)
