"""`avmae sweep` of a tiny study with a `finetune:` section, end to end on a local Ray runtime: 2 cells x 1
seed pretrained, then each cell's best configuration and the from-scratch row fine-tuned (one setting, a few
epochs) as Tune trials of Ray Train runs. The sweep's driver is killed with SIGKILL while fine-tuning runs are
mid-way (one has checkpointed an epoch), then `--resume` finishes the study: the pretraining guarantee,
extended. Then the MLflow runs (each fine-tuning epoch exactly once, nothing RUNNING), their links to the
pretraining trials, and the closing lines."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from avmae.platform.tracking import layout as T
from conftest import console_noise, run_cli
from mlflow.tracking import MlflowClient

NAME, EPOCHS = "ft", 3


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


def killed_mid_fine_tuning(args: list[str], cwd: Path) -> str:
    """`avmae ARGS` killed with SIGKILL (then its session: the local Ray runtime) once fine-tuning has
    checkpointed; its output."""
    log = cwd / "killed.log"
    proc = subprocess.Popen([sys.executable, "-m", "avmae.platform.cli", *args], cwd=cwd, text=True,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        finetune_checkpointed(cwd / "runs" / NAME / "finetune" / "trials", proc, log, timeout=600)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return log.read_text()


@pytest.mark.ray
@pytest.mark.timeout(1200)
def test_a_study_fine_tunes_each_cells_best_configuration_and_the_scratch_row_through_a_kill(
        tmp_path: Path, tiny_av_digits: Path):
    spec = {
        "name": NAME,
        "data": {"kind": "av-digits", "root": str(tiny_av_digits), "cache_dir": str(tiny_av_digits / "cache"),
                 "av_digits": {"clips_per_digit": 4}},
        "model": {"preset": "tiny"},
        "axes": {"objective": ["joint", "inpainting"]},
        "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8, "lr": 2e-3},
        "scheduler": {"name": "fifo"},
        "resources": {"workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": 2},
        "evaluation": {"probe": ["audio"], "baselines": False, "log_models": "none"},
        "finetune": {"recipe": "miniature", "settings": ["audio"], "epochs": EPOCHS, "batch_size": 4,
                     "lrs": [0.3]},
    }
    path = tmp_path / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(spec))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["sweep", str(path), "--storage", str(tmp_path / "runs"), "--tracking-uri", tracking]
    killed = killed_mid_fine_tuning(args, tmp_path)
    assert "Fine-tuning: 3 runs (2 cells and the from-scratch row)" in killed
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name(NAME).experiment_id
    before = client.search_runs([exp], f"tags.`{T.ROLE_TAG}` = '{T.FINETUNE_ROLE}'")
    # Mid-way: the kill left a fine-tuning run open, short of its last epoch.
    assert any(r.info.status == "RUNNING" for r in before), [(r.info.status, r.data.metrics) for r in before]
    assert all(len(client.get_metric_history(r.info.run_id, T.FT_TEST_ACC)) < EPOCHS for r in before)

    out = run_cli([*args, "--resume"], timeout=800, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-6000:]
    assert not console_noise(out.stdout), out.stdout[-6000:]
    assert "Fine-tuned acc at each cell's best LR" in out.stdout, out.stdout[-3000:]
    # The tiny cells may tie (a ranking of ties has no tau): either way the line says so.
    agreement = r"Probe vs fine-tuning ranking of the cells \(audio\): (τ = |not measurable)"
    assert re.search(agreement, out.stdout)
    assert not client.search_runs([exp], "attributes.status = 'RUNNING'")
    (study,) = client.search_runs([exp], f"tags.`{T.ROLE_TAG}` = 'study'")
    assert study.info.status == "FINISHED"
    pretrained = client.search_runs([exp], f"tags.`{T.ROLE_TAG}` = 'trial'")
    trials = {r.data.tags[T.TRIAL_TAG]: r for r in pretrained}
    runs = client.search_runs([exp], f"tags.`{T.ROLE_TAG}` = '{T.FINETUNE_ROLE}'")
    assert sorted(r.data.tags[T.CELL_TAG] for r in runs) == sorted(
        ["objective=joint", "objective=inpainting", T.SCRATCH_CELL])
    assert {r.info.run_id for r in before} <= {r.info.run_id for r in runs}  # the cut runs went on
    for run in runs:
        tags = run.data.tags
        assert tags[T.PARENT_TAG] == study.info.run_id and tags[T.STATUS_TAG] == "finished"
        assert run.info.status == "FINISHED"
        assert (tags[T.SETTING_TAG], tags[T.FINETUNE_LR_TAG], tags[T.REPEAT_TAG]) == ("audio", "0.3", "0")
        assert run.data.params[T.SEED_PARAM] == "0"
        for key in (T.FT_TEST_ACC, T.FT_TRAIN_LOSS, T.EPOCH):
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert steps == list(range(1, EPOCHS + 1)), (tags[T.CELL_TAG], key, steps)
        assert run.data.metrics[T.FT_TRAIN_LOSS] > 0
        if tags[T.CELL_TAG] == T.SCRATCH_CELL:
            assert T.PRETRAINED_TRIAL_TAG not in tags
            continue
        linked = trials[tags[T.PRETRAINED_TRIAL_TAG]]  # the link: the pretraining trial it started from
        assert linked.info.run_id == tags[T.PRETRAINED_RUN_TAG]
        assert linked.data.tags[T.CELL_TAG] == tags[T.CELL_TAG]
    assert 'id="fig-finetune"' in (tmp_path / f"{NAME}-dashboard.html").read_text()
