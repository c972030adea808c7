"""Fault injection on a real sweep: a real Ray runtime, a real `mlflow server` subprocess, real kills.

One study of two trials (one per cell, one at a time) lives through, in order:
1. the first trial's Train worker killed with SIGKILL: the trial fails, and its run's error tag says why;
2. the sweep's driver killed with SIGKILL mid-way through the second trial (what an OOM killer or a lost head
   node does): its workers stop within seconds; then `--resume`: both trials go on from their checkpoints;
3. the MLflow server stopped, during the resumed sweep, for longer than the client's retry budget (made a
   few seconds here), then started again: the sweep finishes.
At the end every trial has epochs 1..E exactly once in MLflow, one run per trial, and nothing is RUNNING.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from avmae.platform.study.runtime import reserved_port
from avmae.platform.tracking import layout as T
from avmae.platform.tracking.local_server import LocalMlflowServer
from avmae.platform.tracking.queue import JOURNAL_DIR
from mlflow.tracking import MlflowClient

EPOCHS, STEPS, LOG_EVERY = 6, 5, 5  # 5 steps: the 20 training clips of `tiny_av_digits` in batches of 4
NAME = "faults"
# The sweep's MLflow client gives up on a refused request after one retry, 1-2 s, far less than the outage
# (a slow answer may take 10 s: the server shares a loaded machine).
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
OUTAGE_S = 15


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalMlflowServer]:
    with reserved_port() as port:
        server = LocalMlflowServer(tmp_path, port)
        server.start()
        try:
            yield server
        finally:
            server.stop()


def sweep(tmp_path: Path, server: LocalMlflowServer, *extra: str) -> subprocess.Popen:
    args = ["sweep", f"{NAME}.yaml", "--storage", str(tmp_path / "runs"), "--tracking-uri", server.url,
            *extra]
    return subprocess.Popen([sys.executable, "-m", "avmae.platform.cli", *args], cwd=tmp_path, text=True,
                            env={**os.environ, **CLIENT_ENV}, stdout=(tmp_path / "sweep.log").open("a"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_until(what: str, ready: Callable[[], object], proc: subprocess.Popen, log: Path, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := ready():
            return value
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended before {what} (rc {proc.returncode}):\n{log.read_text()[-6000:]}")
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout} s:\n{log.read_text()[-6000:]}")


def trial_runs(client: MlflowClient) -> dict[str, object]:
    """Trial runs by cell ("objective=joint"), as MLflow has them now."""
    experiment = client.get_experiment_by_name(NAME)
    if experiment is None:
        return {}
    runs = client.search_runs([experiment.experiment_id], f"tags.`{T.ROLE_TAG}` = 'trial'")
    return {run.data.tags[T.CELL_TAG]: run for run in runs}


def epochs(client: MlflowClient, run) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, T.EPOCH))


def mid_trial(sweep: subprocess.Popen, trials: Path, done: set[str]) -> tuple[str, int] | None:
    """(trial id, its rank-0 Train worker's pid) once a trial not in `done` has a checkpoint and its worker
    runs. One trial runs at a time, so the sweep's session holds one Train worker."""
    started = [d.name for d in trials.glob("*") if d.name not in done and any(d.glob("checkpoint_*"))]
    workers = [pid for pid, line in command_lines(sweep.pid) if "RayTrainWorker" in line]
    return (started[0], workers[0]) if len(started) == 1 and len(workers) == 1 else None


def command_lines(session: int) -> list[tuple[int, str]]:
    """(pid, argv) of every live process in a session."""
    lines = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.getsid(int(proc.name)) == session:
                lines.append((int(proc.name), (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, ProcessLookupError):
            continue
    return lines


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.ray
@pytest.mark.timeout(1200)
def test_a_study_survives_killed_workers_a_killed_driver_and_an_mlflow_outage(
    tmp_path: Path, tiny_av_digits: Path, server: LocalMlflowServer
):
    spec = {
        "name": NAME,
        "data": {"kind": "av-digits", "root": str(tiny_av_digits), "cache_dir": str(tiny_av_digits / "cache"),
                 "val_split": "val", "av_digits": {"clips_per_digit": 4}},
        "model": {"preset": "tiny"},
        "axes": {"objective": ["joint", "inpainting"]},
        "search": {"lr": {"dist": "grid", "values": [2e-3]}},
        "train": {"epochs": EPOCHS, "steps_per_epoch": STEPS, "batch_size": 4, "log_every_steps": LOG_EVERY},
        "metric": "val/loss",
        "scheduler": {"name": "fifo"},
        "resources": {"workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1},
        "evaluation": {"probe": [], "baselines": False, "log_models": "none"},
    }
    (tmp_path / f"{NAME}.yaml").write_text(yaml.safe_dump(spec))
    log, client = tmp_path / "sweep.log", MlflowClient(server.url)
    journal = tmp_path / "runs" / NAME / JOURNAL_DIR
    joint, inpainting = "objective=joint", "objective=inpainting"

    trials = tmp_path / "runs" / NAME / "trials"
    first = sweep(tmp_path, server)
    try:
        # 1. Rank 0's Train worker killed after the first trial's first checkpoint: the trial fails.
        killed = wait_until("the first trial's first checkpoint", lambda: mid_trial(first, trials, set()),
                            first, log, 300)
        os.kill(killed[1], signal.SIGKILL)
        # 2. The driver killed once the next trial has checkpointed an epoch: its workers stop, and
        # `--resume` goes on.
        _, worker = wait_until("the second trial's first checkpoint",
                                   lambda: mid_trial(first, trials, {killed[0]}), first, log, 300)
        os.kill(first.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        while alive(worker) and time.monotonic() - killed_at < 60:
            time.sleep(0.2)
        stopped_after = time.monotonic() - killed_at
    finally:
        kill_group(first)
    print(f"the killed driver's Train worker stopped {stopped_after:.1f} s after it")
    assert stopped_after < 10

    # 3. The resumed sweep, with the MLflow server down for longer than its client's retry budget.
    before = {cell: len(epochs(client, run)) for cell, run in trial_runs(client).items()}
    resumed = sweep(tmp_path, server, "--resume")
    try:
        def next_epoch() -> bool:
            return any(len(epochs(client, r)) > before.get(c, 0) for c, r in trial_runs(client).items())

        wait_until("a resumed trial's next epoch", next_epoch, resumed, log, 300)
        server.stop()
        down_at, queued = time.monotonic(), 0
        while time.monotonic() - down_at < OUTAGE_S:
            queued = max(queued, len(list(journal.glob("*.json"))))
            time.sleep(0.5)
        server.start()
        assert queued > 0, "no write waited in the journal while MLflow was down"
        resumed.wait(timeout=600)
    finally:
        kill_group(resumed)
    out = log.read_text()
    assert resumed.returncode == 0, out[-6000:]
    assert "MLflow answers again" in out

    # Every trial: one run, epochs 1..E exactly once, every logged step once, nothing RUNNING.
    experiment = client.get_experiment_by_name(NAME)
    (study,) = client.search_runs([experiment.experiment_id], f"tags.`{T.ROLE_TAG}` = 'study'")
    assert study.info.status == "FINISHED"
    runs = client.search_runs([experiment.experiment_id], f"tags.`{T.ROLE_TAG}` = 'trial'")
    assert sorted(r.data.tags[T.CELL_TAG] for r in runs) == [inpainting, joint]
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags[T.STATUS_TAG] == "finished"
        assert epochs(client, run) == list(range(1, EPOCHS + 1)), run.data.tags[T.CELL_TAG]
        val = sorted(m.step for m in client.get_metric_history(run.info.run_id, T.VAL_LOSS))
        assert val == list(range(1, EPOCHS + 1)), run.data.tags[T.CELL_TAG]
        train = sorted(m.step for m in client.get_metric_history(run.info.run_id, T.TRAIN_LOSS))
        assert train == list(range(LOG_EVERY, EPOCHS * STEPS + 1, LOG_EVERY)), run.data.tags[T.CELL_TAG]
    assert not list(journal.glob("*.json"))
    # The killed worker's trial said why it failed (then went on from its checkpoint).
    (failed,) = [r for r in runs if r.data.tags[T.TRIAL_TAG] == killed[0]]
    reason = failed.data.tags[T.ERROR_TAG]
    assert "died" in reason, reason
