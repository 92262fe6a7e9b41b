"""`study slurm`'s sbatch script on a real two-node Slurm (tests/_slurm.py), and its bad input.

The Slurm tests submit the generated script as a user would and check what the issue asks:
trials on both Ray nodes and the summary written; a job requeued mid-study (`scontrol
requeue`) resumes the experiment and finishes every trial once. Both Slurm nodes are on this
machine, so the job's two Ray nodes share one host: their ports (from the job id, held with
lock files) and their temp folders (per job and node) must differ, which is what the script
does on a shared node of a real cluster too. They are skipped, with the reason, where Debian's
slurm-wlm and munge are not installed (.ci/run installs them when it runs as root).
"""

from __future__ import annotations

import csv
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _proc import saved_finished_trials
from _slurm import Slurm, missing_binaries, start_slurm, stop_slurm

from study.cli.main import main

# Batch 2 on 2,000 images: a trial takes a few seconds, long enough for both Ray nodes to get
# trials (see tests/test_multinode.py).
SPACE = """\
metric: val_accuracy
mode: max
params:
  lr: {loguniform: [1.0e-4, 1.0e-2]}
fixed:
  loss: ce
  batch_size: 2
  depth: 1
  width: 16
  image_size: 16
  epochs: 4
"""
JOB_TIMEOUT_S = 240
RELAUNCH_AFTER_S = 3.0  # a requeued job's hold, shortened from Slurm's two minutes


@pytest.fixture(scope="module")
def slurm() -> Iterator[Slurm]:
    missing = missing_binaries()
    if missing:
        pytest.skip(f"Slurm is not installed here ({', '.join(missing)} not found; "
                    "apt-get install slurm-wlm munge)")
    try:
        cluster = start_slurm()
    except RuntimeError as exc:
        pytest.skip(f"a two-node Slurm did not start on this machine: {str(exc)[:3000]}")
    try:
        yield cluster
    finally:
        left = stop_slurm(cluster)
    assert not left, f"processes of the test Slurm still running: {sorted(left)}"


def _write_job(slurm: Slurm, name: str, *flags: str) -> Path:
    """`study slurm` (a real process, with the test Slurm's environment) writing NAME.sbatch."""
    (slurm.root / "space.yaml").write_text(SPACE)
    script = slurm.root / f"{name}.sbatch"
    done = subprocess.run(
        [sys.executable, "-m", "study", "slurm", "--nodes", "2", "--cpus-per-node", "1",
         "--partition", "debug", "--time", "10", "--space", str(slurm.root / "space.yaml"),
         "--data", "synthetic:size=16,n=1000", "--search", "random", "--scheduler", "fifo",
         "--cpus-per-trial", "1", "--storage-path", str(slurm.root / "results"),
         "--shared-storage", "--name", name, "--quiet",
         "--ray-args", f"--object-store-memory {100 * 1024**2}", "--out", str(script), *flags],
        env=slurm.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return script


def _wait_job(slurm: Slurm, job_id: str, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while (info := slurm.job(job_id)).get("JobState") not in (
            "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {info.get('JobState')} after {timeout} s"
                                 f"\n{_output(slurm, job_id)}")
        time.sleep(1)
    return info


def _output(slurm: Slurm, job_id: str) -> str:
    """The job's output file: every run's output, one after the other."""
    path = slurm.root / f"job-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else "(no output)"


def _leaderboard(exp: Path) -> list[dict[str, str]]:
    with (exp / "summary" / "leaderboard.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_sbatch_script_runs_trials_on_both_ray_nodes(slurm: Slurm) -> None:
    script = _write_job(slurm, "two-nodes", "--num-samples", "4")
    start = time.monotonic()
    done = slurm.run("sbatch", "--wait", f"--output={slurm.root}/job-%j.out",
                     f"--chdir={slurm.root}", str(script), timeout=JOB_TIMEOUT_S)
    job_id = done.stdout.split()[-1]
    slurm.jobs.append(job_id)
    out = _output(slurm, job_id)
    assert done.returncode == 0, out
    info = slurm.job(job_id)
    assert info["NodeList"] == "node[1-2]" and info["ExitCode"] == "0:0", info
    rows = _leaderboard(slurm.root / "results" / "two-nodes")
    assert len(rows) == 4 and {row["status"] for row in rows} == {"completed"}, rows
    # One Ray node per Slurm node, and trials ran on both.
    assert "2 Ray node(s) up" in out, out
    assert len({row["node_id"] for row in rows}) == 2, rows
    assert (slurm.root / "results" / "two-nodes" / "summary" / "report.md").is_file()
    assert "Starting the study two-nodes" in out and "Resuming" not in out, out
    # Each Ray node removed its temp folder when the job ended.
    assert not list(Path("/tmp").glob(f"ray-{job_id}-*"))
    print(f"job {job_id}: {time.monotonic() - start:.0f} s, trials per node "
          f"{sorted(sum(r['node_id'] == n for r in rows) for n in {r['node_id'] for r in rows})}")


def _stopped_mid_study(slurm: Slurm, name: str, stop: list[str]) -> str:
    """Run a six-trial study as a job, run `stop` (a Slurm command; JOBID is the job's id) once
    a trial has finished, and check that the job's next run resumed the study and finished
    every trial once; return the job's output."""
    script = _write_job(slurm, name, "--num-samples", "6", "--checkpoint-every", "1")
    exp = slurm.root / "results" / name
    start = time.monotonic()
    job_id = slurm.submit(script)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    # Stop once a trial has finished and Ray has saved the experiment's state.
    while not (exp.is_dir() and saved_finished_trials(exp)):
        assert time.monotonic() < deadline, _output(slurm, job_id)
        assert slurm.job(job_id).get("JobState") in ("PENDING", "RUNNING"), _output(slurm, job_id)
        time.sleep(0.5)
    before = {trial: (exp / trial / "result.json").read_bytes()
              for trial in saved_finished_trials(exp)}
    record = (exp / "study.json").read_bytes()
    stopped_at = time.monotonic() - start
    done = slurm.run(*(word.replace("JOBID", job_id) for word in stop))
    assert done.returncode == 0, done.stderr
    # Slurm holds a requeued job back for two minutes (BeginTime); let it start sooner, but not
    # at once: a slurmd asked to relaunch a job within a second of killing its last run refuses
    # it ("Job N already killed, do not launch batch job") and the job ends FAILED.
    deadline = time.monotonic() + 90
    held_since = None
    while (info := slurm.job(job_id)).get("Restarts") != "1" or info.get("JobState") in (
            "PENDING", "REQUEUED", "COMPLETING"):
        assert time.monotonic() < deadline, (info, _output(slurm, job_id)[-4000:])
        if info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime":
            held_since = held_since or time.monotonic()
            if time.monotonic() - held_since > RELAUNCH_AFTER_S:
                slurm.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
        time.sleep(0.5)
    info = _wait_job(slurm, job_id, JOB_TIMEOUT_S)
    out = _output(slurm, job_id)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (
        f"{info}\n{out}\n{slurm.logs()}")
    assert info["Restarts"] == "1", info
    # The second run resumed the experiment the first one started.
    assert out.count(f"Starting the study {name}") == 1, out
    assert out.count(f"Resuming the study {name}") == 1, out
    assert (exp / "study.json").read_bytes() == record
    # Every trial ran to its end exactly once: six trials, each once on the leaderboard, and
    # those finished before the stop were not run again.
    rows = _leaderboard(exp)
    assert len(rows) == 6 and len({row["trial_id"] for row in rows}) == 6, rows
    assert {row["status"] for row in rows} == {"completed"}, rows
    assert len(list(exp.glob("*/result.json"))) == 6
    for trial, content in before.items():
        assert (exp / trial / "result.json").read_bytes() == content, trial
    # Each trial trained every epoch to the last; one stopped mid-way continued from its last
    # checkpoint, so the epochs after that checkpoint may stand twice (one restart at most).
    for path in exp.glob("*/result.json"):
        epochs = [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line]
        restarts = sum(1 for a, b in zip(epochs, epochs[1:], strict=False) if b <= a)
        assert sorted(set(epochs)) == [1, 2, 3, 4] and epochs[-1] == 4 and restarts <= 1, (
            path.parent.name, epochs)
    print(f"job {job_id}: stopped at {stopped_at:.0f} s with {len(before)} trial(s) finished, "
          f"done at {time.monotonic() - start:.0f} s")
    return out


@pytest.mark.slow
def test_requeued_job_resumes_and_finishes_every_trial_once(slurm: Slurm) -> None:
    # What an administrator's requeue and a preemption do: Slurm stops every process of the
    # job at once and starts the script again.
    _stopped_mid_study(slurm, "requeued", ["scontrol", "requeue", "JOBID"])


@pytest.mark.slow
def test_time_limit_signal_saves_the_study_and_requeues_the_job(slurm: Slurm) -> None:
    # What Slurm sends --stop-before seconds before the time limit (--signal=B:USR1@...): the
    # script stops the study itself, which saves everything, and requeues the job.
    out = _stopped_mid_study(slurm, "time-limit",
                             ["scancel", "--batch", "--signal=USR1", "JOBID"])
    assert "the time limit is near: stopping the study" in out, out
    assert "study run exited with status 143" in out, out
    assert "its next run resumes the study" in out, out


def test_what_the_script_is_given_cannot_become_code(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = "x\n$(touch PWNED) `touch PWNED`; touch PWNED"
    assert main(["slurm", "--name", name, "--storage-path", str(tmp_path / "r"),
                 "--data", "synthetic:n=10"]) == 0
    script = capsys.readouterr().out
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    # Outside the quoted `study run` words, the name shows only in comments, on one line.
    words = script[script.rindex("study run --resume-or-start"):script.rindex("--address")]
    rest = script.replace(words, "")
    assert all(line.startswith("#") for line in rest.splitlines() if "PWNED" in line), rest
    parsed = shlex.split(words.replace("\\\n", " "))
    assert parsed[parsed.index("--name") + 1] == name, parsed


@pytest.mark.parametrize(("flags", "message"), [
    (["--nodes", "0"], "--nodes must be a positive whole number, got '0'"),
    (["--nodes", "two"], "--nodes must be a positive whole number, got 'two'"),
    (["--gpus-per-node", "-1"], "--gpus-per-node must be a whole number >= 0, got '-1'"),
    (["--cpus-per-node", "1.5"], "--cpus-per-node must be a positive whole number"),
    (["--time", "0"], "--time must be a positive Slurm time limit"),
    (["--time", "soon"], "--time must be a positive Slurm time limit"),
    (["--time", "10", "--stop-before", "600"], "--stop-before 600 must be shorter than"),
    (["--partition", "gpu; rm -rf ~"], "--partition must be one word"),
    (["--storage-path", "{tmp}/results"], "not a network file system"),
    (["--gpus-per-trial", "1"], "--gpus-per-trial 1 is more than a node's 0 GPUs"),
    (["--num-samples", "0"], "--num-samples must be >= 1, got 0"),
    (["--data", "{tmp}/no-such-data"], "no such file or folder on this machine"),
    (["--ray-args", "--port 6380"], "--ray-args: --port is set by the job itself"),
])
def test_bad_input_is_one_line_and_writes_nothing(
        flags: list[str], message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "job.sbatch"
    argv = ["slurm", "--nodes", "2", "--storage-path", str(tmp_path / "shared"),
            "--shared-storage", "--out", str(out)]
    argv += [flag.replace("{tmp}", str(tmp_path)) for flag in flags]
    if "--storage-path" in flags:  # the same path without --shared-storage
        argv.remove("--shared-storage")
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert captured.out == "" and not out.exists()


def test_unknown_partition_is_refused_where_sinfo_answers(
        slurm: Slurm, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    argv = ["slurm", "--partition", "gpu", "--storage-path", str(slurm.root / "results")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["study: error: --partition gpu: no partition 'gpu' on this cluster (sinfo "
                   "lists debug)"], err
