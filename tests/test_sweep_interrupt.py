"""Ctrl-C (SIGINT to the terminal's process group) or SIGTERM (what Slurm, Kubernetes and `timeout` send, here
to the sweep's process alone) during `avmae sweep`: the sweep stops (it does not go on to the next cell), says
how to continue, marks what it stopped in MLflow, exits 128 + the signal, and `--resume` finishes the study
from the trials' checkpoints."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from avmae.platform.tracking import layout as T
from conftest import run_cli
from mlflow.tracking import MlflowClient

EPOCHS = 3


def wait_for_first_epoch(client: MlflowClient, proc: subprocess.Popen, timeout: float) -> None:
    """Until a trial has reported its first epoch (so it has a checkpoint and is mid-run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        experiment = client.get_experiment_by_name("stop")
        if experiment is not None:
            runs = client.search_runs([experiment.experiment_id], f"tags.`{T.ROLE_TAG}` = 'trial'")
            if any(T.VAL_LOSS in run.data.metrics for run in runs):
                return
        time.sleep(0.5)
    if proc.poll() is None:
        pytest.fail("no trial reported an epoch in time")
    pytest.fail(f"the sweep ended early:\n{proc.communicate()[0][-6000:]}")


@pytest.mark.ray
@pytest.mark.timeout(900)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_stops_the_sweep_and_resume_finishes_it(tmp_path: Path, tiny_av_digits: Path, signum: int):
    spec = {
        "name": "stop",
        "data": {"kind": "av-digits", "root": str(tiny_av_digits), "cache_dir": str(tiny_av_digits / "cache"),
                 "val_split": "val", "av_digits": {"clips_per_digit": 4}},
        "model": {"preset": "tiny"},
        "axes": {"objective": ["joint", "inpainting"]},
        "search": {"lr": {"dist": "grid", "values": [2e-3]}},
        # Epochs of 48 steps (seconds each on a CPU): the Ctrl-C sent after epoch 1 is reported lands well
        # inside this trial, not after it, whatever the polling delay.
        "train": {"epochs": EPOCHS, "steps_per_epoch": 48, "batch_size": 8, "log_every_steps": 16},
        "metric": "val/loss",
        "scheduler": {"name": "fifo"},
        "resources": {"workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1},
        "evaluation": {"probe": []},
    }
    (tmp_path / "stop.yaml").write_text(yaml.safe_dump(spec))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["sweep", "stop.yaml", "--storage", str(tmp_path / "runs"), "--tracking-uri", tracking]
    proc = subprocess.Popen([sys.executable, "-m", "avmae.platform.cli", *args], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    client = MlflowClient(tracking)
    try:
        wait_for_first_epoch(client, proc, timeout=300)
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)  # what Ctrl-C in a terminal does: the whole foreground group
        else:
            os.kill(proc.pid, signum)  # `timeout`, `kill`: the sweep's process alone
        out, _ = proc.communicate(timeout=180)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 128 + signum, out[-6000:]
    assert f"Interrupted by {signal.Signals(signum).name}" in out
    resume = next(line for line in out.splitlines() if line.startswith("Continue with: "))
    assert "--resume" in resume and "objective=joint" in out

    experiment = client.get_experiment_by_name("stop")
    (study,) = client.search_runs([experiment.experiment_id], f"tags.`{T.ROLE_TAG}` = 'study'")
    assert study.info.status == "KILLED"
    # Only cell 1's trial: the sweep did not go on to cell 2.
    (stopped,) = client.search_runs([experiment.experiment_id], f"tags.`{T.ROLE_TAG}` = 'trial'")
    assert stopped.data.tags[T.STATUS_TAG] == "interrupted" and stopped.info.status == "KILLED"

    resume_args = shlex.split(resume.removeprefix("Continue with: "))[1:]  # without the `avmae` command
    resumed = run_cli(resume_args, timeout=600, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-6000:]
    (study,) = client.search_runs([experiment.experiment_id], f"tags.`{T.ROLE_TAG}` = 'study'")
    assert study.info.status == "FINISHED"
    trials = client.search_runs([experiment.experiment_id], f"tags.`{T.ROLE_TAG}` = 'trial'")
    assert sorted(r.data.tags[T.CELL_TAG] for r in trials) == ["objective=inpainting", "objective=joint"]
    for run in trials:
        assert run.data.tags[T.STATUS_TAG] == "finished" and run.info.status == "FINISHED"
        # The stopped trial went on from its last checkpoint: its history runs to the last epoch. (An epoch
        # whose report was still on its way to the driver at Ctrl-C, checkpoint saved, is not run again.)
        epochs = {m.step for m in client.get_metric_history(run.info.run_id, T.VAL_LOSS)}
        assert {1, EPOCHS} <= epochs <= set(range(1, EPOCHS + 1)), (run.data.tags[T.CELL_TAG], epochs)
