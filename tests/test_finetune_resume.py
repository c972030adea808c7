"""The pretraining guarantee extended to fine-tuning: the sweep's driver killed with SIGKILL while a
fine-tuning run is mid-way (it has checkpointed an epoch, more are to come), then `avmae sweep --resume`:
every fine-tuning run has one MLflow run, each of its epochs exactly once, and nothing stays RUNNING."""

from __future__ import annotations

import os
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

NAME, EPOCHS = "ftkill", 5


def finetune_checkpointed(trials: Path, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Until a fine-tuning run has a checkpoint (it reported an epoch: its Train run is mid-way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(trials.glob("*/checkpoint_*")):
            return
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended before fine-tuning checkpointed (rc {proc.returncode}):\n"
                        f"{log.read_text()[-6000:]}")
        time.sleep(0.2)
    pytest.fail(f"no fine-tuning checkpoint within {timeout} s:\n{log.read_text()[-6000:]}")


def finetune_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name(NAME)
    return client.search_runs([experiment.experiment_id], f"tags.`{T.ROLE_TAG}` = '{T.FINETUNE_ROLE}'")


@pytest.mark.ray
@pytest.mark.timeout(1200)
def test_a_driver_killed_mid_fine_tuning_resumes_with_every_epoch_once(tmp_path: Path, tiny_av_digits: Path):
    spec = {
        "name": NAME,
        "data": {"kind": "av-digits", "root": str(tiny_av_digits), "cache_dir": str(tiny_av_digits / "cache"),
                 "av_digits": {"clips_per_digit": 4}},
        "model": {"preset": "tiny"},
        "axes": {"objective": ["joint"]},
        "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8, "lr": 2e-3},
        "scheduler": {"name": "fifo"},
        "resources": {"workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1},
        "evaluation": {"probe": [], "baselines": False, "log_models": "none"},
        # One run at a time, the pretrained one first: the kill lands in it, the scratch row not yet started.
        "finetune": {"recipe": "miniature", "settings": ["audio"], "epochs": EPOCHS, "batch_size": 4,
                     "lrs": [0.3]},
    }
    (tmp_path / f"{NAME}.yaml").write_text(yaml.safe_dump(spec))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["sweep", f"{NAME}.yaml", "--storage", str(tmp_path / "runs"), "--tracking-uri", tracking]
    log = tmp_path / "sweep.log"
    proc = subprocess.Popen([sys.executable, "-m", "avmae.platform.cli", *args], cwd=tmp_path, text=True,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        finetune_checkpointed(tmp_path / "runs" / NAME / "finetune" / "trials", proc, log, timeout=600)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the local Ray runtime the driver started
        except ProcessLookupError:
            pass
    client = MlflowClient(tracking)
    before = finetune_runs(client)
    # Mid-way: the kill left a fine-tuning run open, short of its last epoch.
    assert any(r.info.status == "RUNNING" for r in before), [(r.info.status, r.data.metrics) for r in before]
    assert all(len(client.get_metric_history(r.info.run_id, T.FT_TEST_ACC)) < EPOCHS for r in before)

    resumed = run_cli([*args, "--resume"], timeout=900, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-6000:]
    runs = finetune_runs(client)
    assert sorted(r.data.tags[T.CELL_TAG] for r in runs) == sorted(["objective=joint", T.SCRATCH_CELL])
    assert {r.info.run_id for r in before} <= {r.info.run_id for r in runs}  # the killed run went on
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags[T.STATUS_TAG] == "finished"
        for key in (T.FT_TEST_ACC, T.FT_TRAIN_LOSS, T.EPOCH):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (run.data.tags[T.CELL_TAG], key, steps)
    experiment = client.get_experiment_by_name(NAME)
    assert not client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
