"""Faults around a study: early signals, partial folders, secrets in URIs, unreachable trackers.

Studies here are `python -m study run` in a session of their own (see `_proc`), with their own
local Ray and tiny synthetic data, or the CLI called in-process where a check must refuse a
run before Ray starts. Conditions are polled on the files Ray writes, never waited for with
fixed sleeps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from _proc import TINY_DATA, study_process, wait_for, write_space

import study
from study.cli import main as cli
from study.errors import StudyError

FAST_NET = {"loss": "ce", "batch_size": 32, "depth": 1, "width": 16}
SLOW_NET = {"loss": "ce", "batch_size": 2, "depth": 1, "width": 16}
LR = {"lr": {"loguniform": [1.0e-3, 1.0e-2]}}
START_S = 300  # Ray's start and the first trials, on a contended machine


def run_args(space: Path, storage: Path | str, name: str, *flags: str) -> list[str]:
    return ["run", "--space", str(space), "--data", TINY_DATA, "--storage-path", str(storage),
            "--name", name, "--num-cpus", "2", "--quiet", *flags]


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text[-3000:]


# --- partial experiments: trial folders made, nothing in them yet --------------------------


def _trial_folders(exp: Path) -> list[Path]:
    return [p for p in exp.glob("train_*") if p.is_dir()] if exp.is_dir() else []


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_as_the_first_trial_folder_appears(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """SIGINT the moment Ray made the first trial folder (nothing in it yet): exit 130 and the
    resume hint, no traceback; `study report` and `study.load` read that experiment cleanly,
    and so do they once its trial folder holds an empty result.json."""
    space = write_space(tmp_path / "space.yaml", LR, {**SLOW_NET, "epochs": 12})
    storage, name = tmp_path / "results", "early"
    exp = storage / name
    with study_process(run_args(space, storage, name, "--num-samples", "4", "--scheduler",
                                "fifo", "--max-concurrent", "1"), tmp_path / "logs") as run:

        def first_folder() -> bool:
            run.tree()
            assert run.proc.poll() is None, run.output()
            return bool(_trial_folders(exp))

        wait_for(first_folder, START_S, interval=0.02, what="the first trial folder")
        os.kill(run.pid, signal.SIGINT)
        status = run.wait(180)
        out, err = run.stdout(), run.stderr()
    assert status == 130, run.output()
    no_traceback(out, err)
    assert f"continue with: study run --resume --name {name} --storage-path {storage}" \
        in err.lower(), err[-2000:]

    # The same experiment, its trial folders all empty (as they may stay when Ray is stopped
    # that early), and again with an empty result.json and params.json in each.
    for state in ("empty folders", "empty files"):
        copy = tmp_path / state.replace(" ", "-")
        shutil.copytree(exp, copy, ignore=shutil.ignore_patterns("summary"))
        for folder in _trial_folders(copy):
            for child in folder.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
            if state == "empty files":
                (folder / "result.json").write_text("")
                (folder / "params.json").write_text("")
        capsys.readouterr()
        assert cli.main(["report", str(copy)]) == 0, state
        printed = capsys.readouterr()
        no_traceback(printed.out, printed.err)
        assert "no trial reported a validation score" in printed.out, printed.out
        assert "3 of 4 requested trials never started" in printed.out, printed.out
        loaded = study.load(copy)
        assert loaded.best_config is None and len(loaded.leaderboard) >= 1, state
        assert (copy / "summary" / "report.md").is_file()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_study_load_while_a_study_runs(tmp_path: Path) -> None:
    """`study.load` polled from the study's first file to its end: every call returns a
    (partial) result, none raises; the last one has every trial."""
    space = write_space(tmp_path / "space.yaml", LR, {**FAST_NET, "epochs": 2})
    storage, name, requested = tmp_path / "results", "polled", 6
    exp = storage / name
    failures: list[str] = []
    polls = 0
    with study_process(run_args(space, storage, name, "--num-samples", str(requested),
                                "--max-concurrent", "2"), tmp_path / "logs") as run:
        deadline = time.monotonic() + START_S
        while run.proc.poll() is None and time.monotonic() < deadline:
            run.tree()
            if (exp / "study.json").exists():
                polls += 1
                try:
                    study.load(exp)
                except Exception as exc:  # what a notebook user would see
                    failures.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.02)
        status = run.wait(60)
    assert status == 0, run.output()
    assert polls >= 20, polls
    assert not failures, f"{len(failures)} of {polls} polls failed, first: {failures[0]}"
    final = study.load(exp)
    assert final.leaderboard["trial_id"].nunique() == requested


# --- credentials in URIs: never written, never printed --------------------------------------

SECRET = "s3cr3t-Pa55"


class _TrackingServer:
    """A stand-in for an MLflow tracking server behind basic auth, on 127.0.0.1: it answers
    the REST calls MLflow's client makes for Ray's logger (no MLflow server is installed
    here: the `mlflow` client is, without Flask), and records each call's path and whether
    its Authorization header held the right user and password."""

    def __init__(self, user: str, password: str) -> None:
        import base64
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        calls = self.calls = []  # (method, path, authorised)

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                path = self.path.split("?")[0]
                ok = self.headers.get("Authorization") == expected
                calls.append((self.command, path, ok))
                status, body = 200, {}
                if not ok:
                    status, body = 401, {"error_code": "UNAUTHENTICATED"}
                elif path.endswith("/experiments/get-by-name"):
                    status, body = 404, {"error_code": "RESOURCE_DOES_NOT_EXIST",
                                         "message": "no such experiment"}
                elif path.endswith("/experiments/create"):
                    body = {"experiment_id": "1"}
                elif path.endswith("/experiments/get"):
                    body = {"experiment": {"experiment_id": "1", "name": "x",
                                           "lifecycle_stage": "active"}}
                elif path.endswith("/runs/create"):
                    run_id = f"run{len(calls)}"
                    body = {"run": {"info": {"run_id": run_id, "run_uuid": run_id,
                                             "experiment_id": "1", "status": "RUNNING",
                                             "lifecycle_stage": "active",
                                             "artifact_uri": "mlflow-artifacts:/x"},
                                    "data": {}}}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _files_holding(folder: Path, secret: bytes) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
                  and secret in p.read_bytes())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_password_in_the_mlflow_uri_is_never_written_or_printed(tmp_path: Path) -> None:
    """`--mlflow http://user:PASSWORD@host`: MLflow gets the password (from the environment
    the study moved it into), while study.json, report.md/.html, best_config.*, optuna.db,
    Ray's tuner.pkl and every other file of the experiment, the summary of `study report
    --out` and the command's output all hold `user:***@host` at most."""
    server = _TrackingServer("alice", SECRET)
    try:
        space = write_space(tmp_path / "space.yaml", LR, {**FAST_NET, "epochs": 1})
        storage, name = tmp_path / "results", "tracked"
        uri = f"http://alice:{SECRET}@127.0.0.1:{server.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
        with study_process(run_args(space, storage, name, "--num-samples", "2", "--mlflow",
                                    uri), tmp_path / "logs", env=env) as run:
            status = run.wait(START_S)
        assert status == 0, run.output()
        runs = [c for c in server.calls if c[1].endswith("/runs/create")]
        # every MLflow call carried the password (the study's own reachability probe, to
        # /health, carries none and takes the 401 as an answer)
        mlflow_calls = [c for c in server.calls if c[1] != "/health"]
        assert len(runs) == 2 and all(ok for _, _, ok in mlflow_calls), mlflow_calls[:10]
        exp = storage / name
        report = tmp_path / "elsewhere"
        capture = tmp_path / "logs" / "report.out"
        with open(capture, "w") as out:
            subprocess.run([sys.executable, "-m", "study", "report", str(exp), "--out",
                            str(report)], stdout=out, stderr=subprocess.STDOUT, check=True,
                           timeout=300)
    finally:
        server.close()
    for required in ("study.json", "tuner.pkl", "summary/report.md", "summary/report.html",
                     "summary/best_config.json", "summary/best_config.yaml",
                     "summary/optuna.db"):
        assert (exp / required).is_file(), required
    assert _files_holding(exp, SECRET.encode()) == []
    assert _files_holding(report, SECRET.encode()) == []
    for text in (run.stdout(), run.stderr(), capture.read_text()):
        assert SECRET not in text
    masked = f"http://alice:***@127.0.0.1:{server.port}"
    meta = json.loads((exp / "study.json").read_text())
    assert meta["options"]["mlflow"] == masked
    assert masked in meta["command"]
    assert masked in (exp / "summary" / "report.md").read_text()


def test_a_masked_mlflow_password_must_be_given_again(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The URI as recorded (`user:***@host`), given back without the password in the
    environment: one line saying where to put it, before Ray starts."""
    from study.core.secrets import redact, split_credentials
    from study.engine.tracking import take_credentials

    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    with pytest.raises(StudyError, match=r"password is not recorded.*MLFLOW_TRACKING_PASSWORD"):
        take_credentials("http://alice:***@127.0.0.1:5000")
    assert take_credentials("http://alice:p%40ss@127.0.0.1:5000/x") == \
        "http://alice:***@127.0.0.1:5000/x"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss"
    assert take_credentials("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert split_credentials("https://u:pw@h:1/p?q=1") == ("https://h:1/p?q=1", "u", "pw")
    assert redact("go to s3://AK:SK@bucket/p and http://h:80/x") == \
        "go to s3://AK:***@bucket/p and http://h:80/x"


def test_a_password_in_the_storage_uri_is_refused(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Ray records its storage path in every state file: a password there is refused in one
    line that does not repeat it, before anything is made."""
    space = write_space(tmp_path / "space.yaml", LR, {**FAST_NET, "epochs": 1})
    code = cli.main(run_args(space, f"s3://AKIA:{SECRET}@bucket/results", "x"))
    err = capsys.readouterr().err
    assert code == 2
    assert SECRET not in err and err.count("\n") == 1, err
    assert "--storage-path s3://AKIA:***@bucket/results: a password in the storage URI" in err


# --- trackers checked before Ray starts ---------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once it is closed


@pytest.mark.parametrize("case", ["closed port", "file store not allowed", "read-only store",
                                  "read-only sqlite", "wandb team/project"])
def test_a_tracker_the_study_cannot_use_is_one_line_before_ray_starts(
        case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """An MLflow server that does not answer (it used to be 258 s of silence and a
    traceback, the experiment folder removed), a `file:` store MLflow 3 refuses or one that
    cannot be written, a W&B project name W&B refuses: one line saying what to do, exit 2,
    within seconds, nothing made."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    flag, expected = {
        "closed port": (["--mlflow", f"http://127.0.0.1:{_closed_port()}"],
                        "no MLflow server answers at http://127.0.0.1:"),
        "file store not allowed": (["--mlflow", (tmp_path / "mlruns").as_uri()],
                                   "MLFLOW_ALLOW_FILE_STORE=true"),
        "read-only store": (["--mlflow", "file:///sys/mlruns"], "/sys cannot be written"),
        "read-only sqlite": (["--mlflow", "/sys/kernel/runs.db"],
                             "/sys/kernel cannot be written"),
        "wandb team/project": (["--wandb", "team/proj/x"],
                               "--wandb team/proj/x: not a W&B project name (it holds '/')"),
    }[case]
    if case == "read-only store":
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    space = write_space(tmp_path / "space.yaml", LR, {**FAST_NET, "epochs": 1})
    storage = tmp_path / "results"
    start = time.monotonic()
    code = cli.main(run_args(space, storage, "tracked", *flag))
    took = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("study: error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert took < 30, took
    assert not (storage / "tracked").exists()


WANDB_NAMES = ["xray", "team/proj", "a:b", "50%", "why?", "x" * 128, "x" * 129, "back\\slash",
               "hash#"]


def test_the_wandb_project_rule_is_wandbs() -> None:
    """The project names refused before Ray starts are exactly those W&B refuses (asked in a
    process of its own: wandb imported here would be in the forked report workers of other
    tests)."""
    from study.engine.tracking import check_wandb_project

    script = ("import json, sys, wandb\n"
              "def ok(name):\n"
              "    try:\n"
              "        wandb.Settings(project=name)\n"
              "        return True\n"
              "    except Exception:\n"
              "        return False\n"
              "print(json.dumps([ok(n) for n in json.loads(sys.argv[1])]))\n")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(WANDB_NAMES)],
                          capture_output=True, text=True, timeout=120, check=True)
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    ours = []
    for name in WANDB_NAMES:
        try:
            check_wandb_project(name)
            ours.append(True)
        except StudyError:
            ours.append(False)
    assert ours == theirs
    assert theirs.count(True) == 2  # "xray" and 128 x's


# --- a signal while the summary is written --------------------------------------------------


def _summary_files(exp: Path) -> dict[str, bytes]:
    summary = exp / "summary"
    return {str(p.relative_to(summary)): p.read_bytes() for p in sorted(summary.rglob("*"))
            if p.is_file()}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_signal_while_the_summary_is_written(tmp_path: Path) -> None:
    """SIGTERM, SIGINT and SIGHUP, each sent as `study run` writes its summary (trials added
    to a finished study, so a previous summary is there): the previous summary stays whole,
    the staging folder is removed, the exit status is 143 / 130 / 129 with a message saying
    how to write the summary, and none of Ray's processes outlives the driver by long.
    (SIGTERM ended the driver at once, SIGINT only made Ray log and exit 0, SIGHUP left
    Ray's agents running for over a minute.)"""
    space = write_space(tmp_path / "space.yaml", LR, {**FAST_NET, "epochs": 1})
    storage, name = tmp_path / "results", "summary-signal"
    exp = storage / name
    with study_process(run_args(space, storage, name, "--num-samples", "2"),
                       tmp_path / "logs") as first:
        assert first.wait(START_S) == 0, first.output()
    before = _summary_files(exp)
    assert "report.md" in before and "leaderboard.csv" in before
    for samples, sig in ((3, signal.SIGTERM), (4, signal.SIGINT), (5, signal.SIGHUP)):
        args = ["run", "--resume", "--name", name, "--storage-path", str(storage),
                "--num-samples", str(samples), "--quiet"]
        with study_process(args, tmp_path / "logs", tag=f"{sig.name}") as run:

            def staging() -> bool:
                """The new summary being built: its staging folder without the manifest
                (after the swap, that name holds the previous summary as it is removed)."""
                run.tree()
                assert run.proc.poll() is None, run.output()
                return any(not (folder / ".study-report.json").exists()
                           for folder in exp.glob(".summary.*.tmp"))

            wait_for(staging, START_S, interval=0.01, what="the summary's staging folder")
            os.kill(run.pid, sig)
            status = run.wait(120)
            out, err = run.stdout(), run.stderr()
            wait_for(lambda: not run.alive(), 30, what="Ray's processes to end with the study")
        assert status == 128 + sig, (sig.name, run.output())
        no_traceback(out, err)
        assert "Interrupted while writing the summary; the results are saved. Write it " \
               f"with: study report {exp}" in err, err[-2000:]
        assert not list(exp.glob(".summary.*")), sorted(p.name for p in exp.iterdir())
        assert _summary_files(exp) == before, sig.name
    meta = json.loads((exp / "study.json").read_text())
    assert meta["options"]["num_samples"] == 5  # each run's trials were saved all the same


# --- secrets kept out of Ray's runtime environment ------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_wandb_api_key_never_reaches_rays_logs(tmp_path: Path) -> None:
    """WANDB_API_KEY reaches W&B's logging actors (they inherit it on a local Ray) but not
    Ray's runtime_env, which Ray's runtime-env agent writes into
    session_*/logs/runtime_env_agent.log: no file Ray writes, and none of the experiment's,
    holds the key."""
    import tempfile

    key = "f00dfeed" * 5  # a W&B key's length (40)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rk", dir="/tmp"))  # Ray's socket paths stay short
    try:
        space = write_space(tmp_path / "space.yaml", LR, {**FAST_NET, "epochs": 1})
        storage, name = tmp_path / "results", "keyed"
        env = {"WANDB_MODE": "offline", "WANDB_API_KEY": key, "RAY_TMPDIR": str(ray_tmp)}
        with study_process(run_args(space, storage, name, "--num-samples", "2", "--wandb",
                                    "xray-keys"), tmp_path / "logs", env=env) as run:
            status = run.wait(START_S)
        assert status == 0, run.output()
        exp = storage / name
        offline_runs = list((exp / "wandb").glob("offline-run-*"))
        assert len(offline_runs) == 2, sorted(p.name for p in (exp / "wandb").iterdir())
        agent_logs = list(ray_tmp.rglob("runtime_env_agent.log"))
        assert agent_logs, sorted(str(p) for p in ray_tmp.rglob("*.log"))[:20]
        assert _files_holding(ray_tmp, key.encode()) == []
        assert _files_holding(exp, key.encode()) == []
        assert key not in run.stdout() + run.stderr()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


# --- faults in the surroundings: a full disk, a mount point, a link, odd paths ---------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-trial experiment (with its summary) on the ordinary disk."""
    root = tmp_path_factory.mktemp("finished")
    space = write_space(root / "space.yaml", LR, {**FAST_NET, "epochs": 1})
    with study_process(run_args(space, root / "results", "done", "--num-samples", "2"),
                       root / "logs") as run:
        assert run.wait(START_S) == 0, run.output()
    return root / "results" / "done"


@contextmanager
def _tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted at `folder` (root only: the test skips and says so otherwise)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _report(*args: str) -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, "-m", "study", "report", *args],
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_full_disk_while_the_summary_is_written(finished: Path, tmp_path: Path) -> None:
    """The disk fills up as the report is written: one line naming the folder, the reason
    and the command to run once there is room, exit 2; the previous summary there is whole
    and no staging folder is left (it was an ENOSPC traceback)."""
    with _tmpfs(tmp_path / "disk", "4m") as disk:
        out = disk / "summary"
        code, _, err = _report(str(finished), "--out", str(out))
        assert code == 0, err
        before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        assert "report.md" in before
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * max(0, free - 64 * 1024))  # 64 KiB left
        code, out_text, err = _report(str(finished), "--out", str(out))
        assert code == 2, (out_text, err)
        no_traceback(out_text, err)
        line = [x for x in err.splitlines() if x.startswith("study: error: ")]
        assert len(line) == 1, err
        assert (f"the summary could not be written (No space left on device); the results "
                f"in {finished} are kept") in line[0] and f"--out {out}" in line[0], line
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "summary"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_summary_folder_that_cannot_be_replaced_whole(finished: Path, tmp_path: Path) -> None:
    """`--out` a mount point (EBUSY on the swap) or `summary` a link to a folder (the swap
    renamed the link away and rmtree refused it): one line saying where to write instead,
    exit 2, the link, its target and the mount left as they were."""
    summary = finished / "summary"
    target = tmp_path / "kept-summary"
    shutil.copytree(summary, target)
    moved = tmp_path / "summary-moved"
    summary.rename(moved)
    try:
        summary.symlink_to(target, target_is_directory=True)
        before = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
        code, out_text, err = _report(str(finished))
        assert code == 2, (out_text, err)
        no_traceback(out_text, err)
        assert err == (f"study: error: {summary}: a link to {target}; a report replaces its "
                       "folder whole, which would replace the link: remove it, or write there "
                       f"with study report {finished} --out {target}\n"), err
        assert summary.is_symlink() and summary.resolve() == target.resolve()
        assert {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()} == before
        assert not list(finished.glob(".summary.*"))
    finally:
        summary.unlink(missing_ok=True)
        moved.rename(summary)
    with _tmpfs(tmp_path / "mounted", "20m") as mounted:
        (mounted / "keep.txt").write_text("mine")
        code, out_text, err = _report(str(finished), "--out", str(mounted))
        assert code == 2, (out_text, err)
        no_traceback(out_text, err)
        assert f"study: error: {mounted}: a mount point, which a report cannot replace " \
               f"whole" in err and f"--out {mounted / 'summary'}" in err, err
        assert sorted(p.name for p in mounted.iterdir()) == ["keep.txt"]
        assert not list(tmp_path.glob(".mounted.*"))


@pytest.mark.parametrize("case", ["non-UTF-8 storage path", "num-cpus -1"])
def test_odd_paths_and_counts_are_one_line(case: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A `--storage-path` in another encoding than UTF-8 (Ray encodes every path as UTF-8:
    a traceback after Ray started) and `--num-cpus -1` (Ray's ValueError): one line, exit
    2, nothing made."""
    space = write_space(tmp_path / "space.yaml", LR, {**FAST_NET, "epochs": 1})
    storage: Path | str = tmp_path / "results"
    flags: list[str] = []
    if case == "non-UTF-8 storage path":
        storage = os.fsdecode(os.fsencode(str(tmp_path)) + b"/r\xe9sultats")  # Latin-1 é
        expected = "not UTF-8 (byte 0xe9 at"
    else:
        flags, expected = ["--num-cpus", "-1"], "--num-cpus must be >= 0, got -1"
    code = cli.main(run_args(space, storage, "odd", *flags))  # the last --num-cpus counts
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sighup_during_the_study_is_handled_as_ctrl_c(tmp_path: Path) -> None:
    """SIGHUP (the terminal closed) mid-study: Ray stops the trials and saves the state, the
    resume hint is printed, exit 129, and none of Ray's processes is left running (they
    were: the driver died with no word, its agents kept running)."""
    space = write_space(tmp_path / "space.yaml", LR, {**SLOW_NET, "epochs": 12})
    storage, name = tmp_path / "results", "hangup"
    exp = storage / name
    with study_process(run_args(space, storage, name, "--num-samples", "4", "--scheduler",
                                "fifo", "--max-concurrent", "1"), tmp_path / "logs") as run:

        def reporting() -> bool:
            run.tree()
            assert run.proc.poll() is None, run.output()
            return any(p.stat().st_size > 0 for p in exp.glob("train_*/result.json"))

        wait_for(reporting, START_S, interval=0.1, what="a trial's first epoch")
        os.kill(run.pid, signal.SIGHUP)
        status = run.wait(180)
        out, err = run.stdout(), run.stderr()
        wait_for(lambda: not run.alive(), 30, what="Ray's processes to end with the study")
    assert status == 129, run.output()
    no_traceback(out, err)
    assert f"continue with: study run --resume --name {name} --storage-path {storage}" \
        in err.lower(), err[-2000:]
    assert (exp / "summary" / "leaderboard.csv").is_file()


def test_the_wandb_key_is_out_of_the_environment_only_while_an_actor_starts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's `_start_logging_actor` copies WANDB_API_KEY into the runtime_env it builds: it
    runs without the key (and the key is back after it, even when it fails); the patch is
    undone when the block ends."""
    from ray.air.integrations.wandb import WandbLoggerCallback

    from study.core.ray_compat import wandb_key_kept_from_runtime_env

    seen: list[str | None] = []

    def start(self: object, trial: object, exclude: list[str], **kwargs: object) -> None:
        seen.append(os.environ.get("WANDB_API_KEY"))
        if kwargs.get("fail"):
            raise RuntimeError("actor failed")

    monkeypatch.setattr(WandbLoggerCallback, "_start_logging_actor", start)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    with wandb_key_kept_from_runtime_env():
        callback = WandbLoggerCallback(project="p")
        callback._start_logging_actor(None, [])
        assert os.environ["WANDB_API_KEY"] == "k" * 40
        with pytest.raises(RuntimeError):
            callback._start_logging_actor(None, [], fail=True)
        assert os.environ["WANDB_API_KEY"] == "k" * 40
    assert seen == [None, None]
    assert WandbLoggerCallback._start_logging_actor is start


# --- the storage path refuses writes while the trials run ----------------------------------


def _chattr(flag: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)


def _can_make_immutable(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.mkdir()
    if shutil.which("chattr") is None or _chattr("+i", probe).returncode != 0:
        pytest.skip("cannot make a folder immutable here (needs root, chattr and a file "
                    "system with the immutable flag)")
    _chattr("-i", probe)


def _temporary_files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob(".study-tmp-*"))


def _three_trials(space: Path, storage: Path, name: str) -> list[str]:
    """`study run` of 3 trials one at a time, run to the end (FIFO)."""
    return run_args(space, storage, name, "--num-samples", "3", "--scheduler", "fifo",
                    "--max-concurrent", "1")


def _wait_until_saved_and_reporting(run: Any, exp: Path) -> None:
    """Until Ray saved an experiment state and a trial reported its first epoch."""

    def reporting() -> bool:
        run.tree()
        assert run.proc.poll() is None, run.output()
        return (any(exp.glob("experiment_state-*.json"))
                and any(p.stat().st_size > 0 for p in exp.glob("train_*/result.json")))

    wait_for(reporting, START_S, interval=0.1, what="a trial's first epoch")


def _resumes_to_the_end(space: Path, storage: Path, name: str) -> None:
    """`--resume` of the 3-trial, 8-epoch study: exit 0, every trial run to its last epoch."""
    done = subprocess.run([sys.executable, "-m", "study",
                           *run_args(space, storage, name, "--resume")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    no_traceback(done.stdout, done.stderr)
    assert "3 trials (0 errored)" in done.stdout, done.stdout[-2000:]
    results = sorted((storage / name).glob("train_*/result.json"))
    assert len(results) == 3
    for path in results:
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        assert rows and rows[-1]["epoch"] == 8, path
    assert _temporary_files(storage) == []


def _top_files(exp: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in exp.iterdir() if p.is_file()}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_experiment_made_immutable_mid_run_stops_and_resumes(tmp_path: Path) -> None:
    """`chattr +i` on the experiment folder once a trial reports: Ray's next state save is
    refused. The study stops as on Ctrl-C with one line naming the file, why, and the resume
    command, exit 2, no traceback; every file in the folder is as it was, no temporary file
    is left; made writable again, `--resume` finishes every trial (Ray had logged the refusal
    and carried on, trials shown finished whose results never reached the disk)."""
    _can_make_immutable(tmp_path)
    space = write_space(tmp_path / "space.yaml", LR, {**SLOW_NET, "epochs": 8})
    storage, name = tmp_path / "results", "frozen"
    exp = storage / name
    with study_process(_three_trials(space, storage, name), tmp_path / "logs") as run:
        _wait_until_saved_and_reporting(run, exp)
        assert _chattr("+i", exp).returncode == 0
        try:
            before = _top_files(exp)
            status = run.wait(300)
            out, err = run.stdout(), run.stderr()
            after = _top_files(exp)
        finally:
            _chattr("-i", exp)
    assert status == 2, run.output()
    no_traceback(out, err)
    line = [x for x in err.splitlines() if x.startswith("study: error: ")]
    assert len(line) == 1, err[-3000:]
    assert line[0].startswith(f"study: error: {exp}/"), line
    assert "could not be written (Operation not permitted), so the study stopped" in line[0]
    assert f"continue with: study run --resume --name {name} --storage-path {storage}" \
        in line[0], line
    assert after == before  # nothing in the folder changed, nothing was lost
    assert _temporary_files(storage) == []

    _resumes_to_the_end(space, storage, name)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_disk_filling_up_during_the_trials_stops_and_resumes(tmp_path: Path) -> None:
    """The storage path's disk fills up once a trial reports (a tmpfs topped up with a
    filler): whichever write is refused first (a trial's checkpoint in its worker, Ray's
    state or result.json, the Optuna journal), the study stops as on Ctrl-C with one line
    saying the disk is full and how to continue, exit 2, no traceback and no temporary file
    (it was a KeyError, 13 empty `.study-tmp-*.tmp` files, a trial shown finished whose
    result.json never reached the disk); with room made, `--resume` finishes every trial."""
    space = write_space(tmp_path / "space.yaml", LR, {**SLOW_NET, "epochs": 8})
    with _tmpfs(tmp_path / "disk", "20m") as disk:
        name = "full"
        exp = disk / name
        with study_process(_three_trials(space, disk, name), tmp_path / "logs") as run:
            _wait_until_saved_and_reporting(run, exp)
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            with open(disk / "filler", "wb") as filler:
                try:
                    filler.write(b"\0" * free)
                except OSError:
                    pass  # full: what matters
            status = run.wait(300)
            out, err = run.stdout(), run.stderr()
        assert status == 2, run.output()
        no_traceback(out, err)
        line = [x for x in err.splitlines() if x.startswith("study: error: ")]
        assert len(line) == 1, err[-3000:]
        assert "could not be written (No space left on device), so the study stopped" \
            in line[0], line
        assert f"continue with: study run --resume --name {name} --storage-path {disk}" \
            in line[0], line
        assert _temporary_files(disk) == []

        (disk / "filler").unlink()
        _resumes_to_the_end(space, disk, name)
