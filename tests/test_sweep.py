"""`avmae sweep` end to end on a local Ray runtime: 2 cells x 2 trials of the tiny model on a tiny AV-Digits,
one trial at an LR that diverges; then the MLflow layout, a resume, a refused fresh rerun, and more seeds
added on resume."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from avmae.dashboards.collect import collect_study
from avmae.dashboards.summary import cell_summary
from avmae.platform.study.prepare import absolute
from avmae.platform.study.record import Launch, StudyExistsError
from avmae.platform.study.runner import run_study
from avmae.platform.study.spec import load_spec
from avmae.platform.tracking import layout as T
from avmae.platform.train.reports import DIVERGED_SCORE
from conftest import console_noise, run_cli
from mlflow.tracking import MlflowClient

HUGE_LR = 1e4  # base LR: AdamW steps of ~300 in every weight, the loss leaves the floats within a few steps


def study_file(folder: Path, data: Path, name: str, **changes: object) -> Path:
    spec = {
        "name": name,
        "data": {"kind": "av-digits", "root": str(data), "cache_dir": str(data / "cache"), "val_split": "val",
                 "av_digits": {"clips_per_digit": 4}},
        "model": {"preset": "tiny"},
        "axes": {"objective": ["joint", "inpainting"]},
        "search": {"lr": {"dist": "grid", "values": [2e-3, HUGE_LR]}},
        "train": {"epochs": 2, "steps_per_epoch": 2, "batch_size": 8, "log_every_steps": 1},
        "metric": "val/loss",
        "scheduler": {"name": "fifo"},
        "resources": {"workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": 2},
        "evaluation": {"probe": ["av", "audio", "video"], "probe_every": 1},
        **changes,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_a_study_runs_every_cell_and_lands_in_mlflow(tmp_path: Path, tiny_av_digits: Path):
    """One run whose budget (a few seconds of trial time) is spent by the first two trials, one from each
    cell, running side by side; then `--resume` with a larger budget runs the rest."""
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = study_file(tmp_path, tiny_av_digits, "cells", budget={"trial_hours": 1e-6})
    args = [str(path), "--storage", str(tmp_path / "runs"), "--tracking-uri", tracking]
    out = run_cli(["sweep", *args], timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-6000:]
    assert "Stopped early: budget spent" in out.stdout and "--resume with a larger budget" in out.stdout
    assert not console_noise(out.stdout), out.stdout[-6000:]  # nothing a user would read as a warning
    assert "MLflow:" in out.stdout and tracking in out.stdout
    assert (tmp_path / "cells-dashboard.html").is_file()  # avmae.dashboards, called at the end
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("cells")
    (study,) = client.search_runs([experiment.experiment_id], f"tags.`{T.ROLE_TAG}` = 'study'")
    assert study.data.tags[T.STOPPED_TAG].startswith("budget spent")
    first = client.search_runs([experiment.experiment_id], f"tags.`{T.ROLE_TAG}` = 'trial'")
    assert sorted(r.data.tags[T.CELL_TAG] for r in first) == ["objective=inpainting", "objective=joint"]
    a, b = (r.info for r in first)  # the two cells' trials ran at the same time
    assert a.start_time < b.end_time and b.start_time < a.end_time

    spec = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**spec, "budget": {"trial_hours": 10.0}}))
    resumed = run_cli(["sweep", *args, "--resume"], timeout=600, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-6000:]
    assert not console_noise(resumed.stdout), resumed.stdout[-6000:]
    assert "objective=joint" in resumed.stdout and "objective=inpainting" in resumed.stdout  # summary table
    # ... and the answer read back from MLflow: each cell against the random-init encoder of its seed
    assert "Gain over the random-init encoder, paired by seed" in resumed.stdout
    assert re.search(r"objective=inpainting +av [+-]0\.\d{3} \(n = 1: no interval\)", resumed.stdout)
    (study,) = client.search_runs([experiment.experiment_id], f"tags.`{T.ROLE_TAG}` = 'study'")
    assert study.info.status == "FINISHED" and study.data.tags[T.STUDY_TAG] == "cells"
    assert "cells.yaml" in {a.path for a in client.list_artifacts(study.info.run_id)}
    for kind in T.BASELINES:  # the reference rows, measured beside the trials with the same probe
        for modality in ("av", "audio", "video"):
            name = T.baseline_metric(kind, T.probe_metric(modality, "acc"))
            assert 0.0 <= study.data.metrics[name] <= 1.0, name
    trials = client.search_runs([experiment.experiment_id], f"tags.`{T.ROLE_TAG}` = 'trial'")
    assert len(trials) == 4
    assert {r.data.tags[T.PARENT_TAG] for r in trials} == {study.info.run_id}
    assert {r.data.tags[T.CELL_TAG] for r in trials} == {"objective=joint", "objective=inpainting"}

    for run in trials:
        tags, params, run_id = run.data.tags, run.data.params, run.info.run_id
        assert params["objective"] == tags[T.CELL_TAG].split("=")[1]
        assert params["preset"] == "tiny" and params["epochs"] == "2"
        assert tags[T.NODE_TAG] and tags[T.HOST_TAG]
        assert tags[T.REPEAT_TAG] == "0" and params[T.SEED_PARAM] == "0"
        if float(params["lr"]) == HUGE_LR:
            assert tags[T.STATUS_TAG] == "diverged", tags
            assert run.data.metrics[T.DIVERGED_AT_STEP] >= 1
            assert DIVERGED_SCORE not in run.data.metrics.values()  # never the sentinel score
            continue
        assert tags[T.STATUS_TAG] == "finished" and run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run_id, T.TRAIN_LOSS)] == [1, 2, 3, 4]
        for name in (T.TRAIN_LOSS_AUDIO, T.TRAIN_LOSS_VIDEO, T.TRAIN_LR, T.TRAIN_GRAD_NORM,
                     T.TRAIN_CLIPS_PER_S):
            assert len(client.get_metric_history(run_id, name)) == 4, name
        assert [m.step for m in client.get_metric_history(run_id, T.VAL_LOSS)] == [1, 2]
        for modality in ("av", "audio", "video"):  # probed after every epoch (probe_every: 1)
            assert 0.0 <= run.data.metrics[T.probe_metric(modality, "acc")] <= 1.0
            probed = client.get_metric_history(run_id, T.probe_metric(modality, "acc"))
            assert sorted(m.step for m in probed) == [1, 2]
        # Rank 0's machine load beside its throughput, in every log window.
        assert len(client.get_metric_history(run_id, T.SYSTEM_PROCESS_CPU)) == 4
        assert Path(tags[T.CHECKPOINT_TAG], "checkpoint.pt").is_file()

    # The resume added the other trials and nothing twice; a fresh run of the same study is refused before
    # anything starts.
    runs = client.search_runs([experiment.experiment_id], "")
    assert len(runs) == 5 and sum(r.data.tags[T.ROLE_TAG] == "study" for r in runs) == 1
    spec = absolute(load_spec(tmp_path / "cells.yaml"))
    with pytest.raises(StudyExistsError, match="--resume"):
        run_study(spec, None, Launch("cells", str(tmp_path / "runs" / "cells"), tracking))

    # More seeds on resume: only the missing ones run, beside the finished runs, which are kept as they were.
    grown = run_cli(["sweep", *args, "--resume", "--repeats", "2"], timeout=600, cwd=tmp_path)
    assert grown.returncode == 0, grown.stdout[-6000:]
    trials = client.search_runs([experiment.experiment_id], f"tags.`{T.ROLE_TAG}` = 'trial'")
    seeds = sorted((r.data.tags[T.CELL_TAG], float(r.data.params["lr"]), r.data.params[T.SEED_PARAM])
                   for r in trials)
    assert seeds == sorted((cell, lr, seed) for cell in ("objective=joint", "objective=inpainting")
                           for lr in (2e-3, HUGE_LR) for seed in ("0", "1"))
    kept = {r.info.run_id for r in runs if r.data.tags[T.ROLE_TAG] == "trial"}
    assert kept <= {r.info.run_id for r in trials}
    summary = cell_summary(collect_study(client, "cells"))  # what the page and the closing lines read
    assert list(summary["n_repeats"]) == [2, 2]


def test_a_study_whose_data_is_unusable_fails_cleanly_and_can_be_fixed(tmp_path: Path, tiny_av_digits: Path):
    """A split the index does not have: one clear line naming the file and the splits it has, no traceback,
    and no study recorded, so the fixed file runs without --resume or --name (fails before Ray starts)."""
    path = study_file(tmp_path, tiny_av_digits, "baddata")
    spec = yaml.safe_load(path.read_text())
    spec["data"]["val_split"] = "validation"
    path.write_text(yaml.safe_dump(spec))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [str(path), "--storage", str(tmp_path / "runs"), "--tracking-uri", tracking]
    out = run_cli(["sweep", *args], timeout=300, cwd=tmp_path)
    assert out.returncode == 1, out.stdout[-3000:]
    assert "Traceback" not in out.stdout
    assert "no clips in split 'validation'" in out.stdout and "test, train, val" in out.stdout
    assert str(tiny_av_digits / "vggsound.csv") in out.stdout
    assert not (tmp_path / "runs" / "baddata" / "study.json").exists()
