"""`avmae sweep` of a tiny study with a `finetune:` section, end to end on a local Ray runtime: 2 cells x 1
seed pretrained, then each cell's best configuration and the from-scratch row fine-tuned (one setting, one
epoch) as Tune trials of Ray Train runs; then the MLflow runs, their links to the pretraining trials, and the
closing lines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from avmae.platform.tracking import layout as T
from conftest import console_noise, run_cli
from mlflow.tracking import MlflowClient


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_a_study_fine_tunes_each_cells_best_configuration_and_the_scratch_row(tmp_path: Path,
                                                                             tiny_av_digits: Path):
    spec = {
        "name": "ft",
        "data": {"kind": "av-digits", "root": str(tiny_av_digits), "cache_dir": str(tiny_av_digits / "cache"),
                 "av_digits": {"clips_per_digit": 4}},
        "model": {"preset": "tiny"},
        "axes": {"objective": ["joint", "inpainting"]},
        "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8, "lr": 2e-3},
        "scheduler": {"name": "fifo"},
        "resources": {"workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": 2},
        "evaluation": {"probe": ["audio"], "baselines": False, "log_models": "none"},
        "finetune": {"recipe": "miniature", "settings": ["audio"], "epochs": 1, "batch_size": 8,
                     "lrs": [0.3]},
    }
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(spec))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = run_cli(["sweep", str(path), "--storage", str(tmp_path / "runs"), "--tracking-uri", tracking],
                  timeout=800, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-6000:]
    assert not console_noise(out.stdout), out.stdout[-6000:]
    assert "Fine-tuning: 3 runs (2 cells and the from-scratch row)" in out.stdout
    assert "Fine-tuned acc at each cell's best LR" in out.stdout, out.stdout[-3000:]
    # The tiny cells may tie (a ranking of ties has no tau): either way the line says so.
    agreement = r"Probe vs fine-tuning ranking of the cells \(audio\): (τ = |not measurable)"
    assert re.search(agreement, out.stdout)
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("ft").experiment_id
    (study,) = client.search_runs([exp], f"tags.`{T.ROLE_TAG}` = 'study'")
    assert study.info.status == "FINISHED"
    pretrained = client.search_runs([exp], f"tags.`{T.ROLE_TAG}` = 'trial'")
    trials = {r.data.tags[T.TRIAL_TAG]: r for r in pretrained}
    runs = client.search_runs([exp], f"tags.`{T.ROLE_TAG}` = '{T.FINETUNE_ROLE}'")
    assert sorted(r.data.tags[T.CELL_TAG] for r in runs) == sorted(
        ["objective=joint", "objective=inpainting", T.SCRATCH_CELL])
    for run in runs:
        tags = run.data.tags
        assert tags[T.PARENT_TAG] == study.info.run_id and tags[T.STATUS_TAG] == "finished"
        assert (tags[T.SETTING_TAG], tags[T.FINETUNE_LR_TAG], tags[T.REPEAT_TAG]) == ("audio", "0.3", "0")
        assert run.data.params[T.SEED_PARAM] == "0"
        assert [m.step for m in client.get_metric_history(run.info.run_id, T.FT_TEST_ACC)] == [1]
        assert run.data.metrics[T.FT_TRAIN_LOSS] > 0
        if tags[T.CELL_TAG] == T.SCRATCH_CELL:
            assert T.PRETRAINED_TRIAL_TAG not in tags
            continue
        linked = trials[tags[T.PRETRAINED_TRIAL_TAG]]  # the link: the pretraining trial it started from
        assert linked.info.run_id == tags[T.PRETRAINED_RUN_TAG]
        assert linked.data.tags[T.CELL_TAG] == tags[T.CELL_TAG]
    assert 'id="fig-finetune"' in (tmp_path / "ft-dashboard.html").read_text()
