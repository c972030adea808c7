"""How a study is laid out in MLflow: the contract between the platform (writer) and the dashboards (reader).

One MLflow experiment per study (named after the study), one parent run for the study, one nested child run
per Tune trial. Runs are found again by tags, so a resumed study appends to its own runs instead of
duplicating them. Only MLflow's client API is used: it works the same against a local SQLite store and a
remote `mlflow server`, and needs no Ray. MLflow itself is imported inside the functions: training workers
use the names below without paying for importing MLflow (only the driver talks to it).
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# Tags (strings) that identify runs.
STUDY_TAG = "avmae.study"
ROLE_TAG = "avmae.role"  # "study" on the parent run, "trial" on children
TRIAL_TAG = "avmae.trial_id"
CELL_TAG = "avmae.cell"  # e.g. "decoder=shared,fusion=mid,objective=joint"
STATUS_TAG = "avmae.status"  # a TrialStatus value
CHECKPOINT_TAG = "avmae.checkpoint"  # URI/path of the trial's best checkpoint (Ray Train storage)
NODE_TAG, HOST_TAG = "avmae.node_id", "avmae.hostname"  # where the trial's rank-0 worker ran
PID_TAG = "avmae.pid"  # its process id there (`py-spy dump --pid`, or a fault test's `kill -9`)
ERROR_TAG = "avmae.error"  # first line of a failed trial's exception
STOPPED_TAG = "avmae.stopped"  # on the study run: why it ended before every trial ran (a spent budget)
MODEL_TAG = "avmae.model_uri"  # on a trial run: `models:/<model id>` of its logged encoder
FUSION_TAG = "avmae.fusion"  # on a logged encoder (an MLflow LoggedModel): its encoder fusion
REPEAT_TAG = "avmae.repeat"  # k = 0..repeats-1: trials of one configuration with seed k; paired across cells
PARENT_TAG = "mlflow.parentRunId"
GIT_TAG = "mlflow.source.git.commit"
# On the study's experiment: its kind as the MLflow UI reads it (its bundle knows genai_development,
# custom_model_development, finetuning, forecasting, classification, ...): model training, whose view is the
# runs table. A UI with the GenAI / Model-training switch (3.18) goes by the switch instead: see `runs_page`.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
UI_WORKFLOW = "machine_learning"  # the MLflow UI's "Model training" view (`runs_page`)
# On the study run: when its driver last said it is alive (UTC, ISO 8601), every HEARTBEAT_INTERVAL_S. A study
# run still RUNNING whose beat is older than DRIVER_LOST_AFTER_S has lost its driver (killed, its machine
# gone): readers call it DRIVER_LOST. A run without the tag (an older avmae) is taken at its MLflow status.
HEARTBEAT_TAG = "avmae.heartbeat"
HEARTBEAT_INTERVAL_S = 30.0
DRIVER_LOST_AFTER_S = 3 * HEARTBEAT_INTERVAL_S
DRIVER_LOST = "driver lost"
# A trial's dataset inputs: one per split it reads, this MLflow input tag holding the split.
DATASET_CONTEXT_TAG = "mlflow.data.context"

# Metric names. Step-wise metrics use the optimiser step as MLflow `step`; epoch-wise ones use the epoch.
TRAIN_PREFIX, VAL_PREFIX = "train/", "val/"  # every training and validation metric
TRAIN_LOSS, TRAIN_LOSS_AUDIO, TRAIN_LOSS_VIDEO = "train/loss", "train/loss_audio", "train/loss_video"
TRAIN_LR, TRAIN_GRAD_NORM, TRAIN_CLIPS_PER_S = "train/lr", "train/grad_norm", "train/clips_per_s"
# A rewind after a divergence (train.on_diverge), at the step that diverged: the rewinds so far, and the
# factor the LR runs at from there (1 before any rewind).
TRAIN_REWINDS, TRAIN_LR_SCALE = "train/rewinds", "train/lr_scale"
VAL_LOSS, VAL_LOSS_AUDIO, VAL_LOSS_VIDEO = "val/loss", "val/loss_audio", "val/loss_video"
EPOCH = "epoch"
DIVERGED_AT_STEP = "diverged_at_step"
N_BROKEN = "data/n_broken"
TRAIN_SECONDS = "time/train_s"
# Rank 0's machine load per log window (tracking/system_metrics.py; MLflow's own system-metric names).
SYSTEM_PROCESS_CPU = "system/process_cpu_utilization_percentage"  # 100 = one core
SYSTEM_GPU_UTILIZATION = "system/gpu_0_utilization_percentage"
PROBE_PREFIX = "probe/"  # probe/av_acc, probe/audio_acc, probe/video_acc (or *_map for multi-label)
SEED_PARAM = "seed"  # a trial's effective seed (the study seed + its repeat index): init, data order, masks
# Reference probe scores on the study run, step = repeat index k: `baseline/random_init/probe/audio_acc`
# (an untrained encoder) and `baseline/raw_input/probe/audio_acc` (pooled patches), same probe and splits.
BASELINE_PREFIX = "baseline/"
BASELINES = ("random_init", "raw_input")
# Fine-tuning runs (study/finetune_stage.py): children of the study run with role FINETUNE_ROLE, one per
# (cell, setting, seed, LR) and the from-scratch row (cell SCRATCH_CELL), tagged with what they started from.
FINETUNE_ROLE = "finetune"
SCRATCH_CELL = "from scratch"  # the cell tag of the from-scratch row: the same classifier from random init
SETTING_TAG = "avmae.finetune.setting"  # av, audio or video
FINETUNE_LR_TAG = "avmae.finetune.lr"  # the recipe's LR (not rescaled by batch)
PRETRAINED_TRIAL_TAG = "avmae.finetune.pretrained_trial"  # the pretraining trial whose checkpoint it began at
PRETRAINED_RUN_TAG = "avmae.finetune.pretrained_run"  # that trial's MLflow run (the link)
FT_TRAIN_LOSS, FT_TEST_ACC, FT_TEST_MAP = "finetune/train_loss", "finetune/test_acc", "finetune/test_map"


def baseline_metric(baseline: str, probe: str) -> str:
    """e.g. baseline_metric("random_init", "probe/audio_acc") -> "baseline/random_init/probe/audio_acc"."""
    return f"{BASELINE_PREFIX}{baseline}/{probe}"


def probe_metric(modality: str, score: str) -> str:
    """Name of a downstream probe score, e.g. probe_metric("audio", "acc") -> "probe/audio_acc"."""
    return f"{PROBE_PREFIX}{modality}_{score}"


class TrialStatus(str, Enum):
    """What became of a trial. MLflow's run status only knows FINISHED/FAILED/KILLED; this tag says why."""

    RUNNING = "running"
    FINISHED = "finished"
    PRUNED = "pruned"  # stopped early by the scheduler (ASHA)
    DIVERGED = "diverged"  # loss became non-finite
    FAILED = "failed"  # raised
    INTERRUPTED = "interrupted"  # the sweep was stopped (Ctrl-C) while it ran: `--resume` continues it


_MLFLOW_STATUS = {
    TrialStatus.FINISHED: "FINISHED",
    TrialStatus.PRUNED: "KILLED",
    TrialStatus.DIVERGED: "FINISHED",
    TrialStatus.FAILED: "FAILED",
    TrialStatus.INTERRUPTED: "KILLED",
}


def cell_key(cell: Mapping[str, Any]) -> str:
    """A stable, readable name for an ablation cell: its axes sorted by name."""
    return ",".join(f"{k}={cell[k]}" for k in sorted(cell))


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> flat `a.b` keys with string values, as MLflow params want them."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return flat


def git_commit(path: Path | str = ".") -> str | None:
    """The checkout's commit, so every study records the code it ran; None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def experiment_id(client: MlflowClient, study: str) -> str:
    """The study's experiment, created (or, made by an older avmae, tagged) as a model-training one."""
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        return client.create_experiment(study, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def runs_page(server_url: str, experiment_id: str) -> str:
    """The MLflow UI's page of the experiment's runs table on `server_url` (http[s]://host:port). The UI
    (3.18) opens an experiment in the view its workflow switch holds, GenAI until a user switches, whatever
    the experiment's kind: the query names the model-training one."""
    return f"{server_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType={UI_WORKFLOW}"


def heartbeat_text(ms: int) -> str:
    """A heartbeat's tag value: the UTC time `ms` (milliseconds since the epoch), e.g.
    2026-11-28T09:30:05.250Z."""
    stamp = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def heartbeat_ms(tags: Mapping[str, str]) -> int | None:
    """When the study run's driver last beat (milliseconds since the epoch); None without a readable beat."""
    try:
        return int(datetime.fromisoformat(tags[HEARTBEAT_TAG].replace("Z", "+00:00")).timestamp() * 1000)
    except (KeyError, ValueError):
        return None


def driver_lost(status: str, beat_ms: int | None, now_ms: int) -> bool:
    """Whether a study run (its MLflow `status`, its `heartbeat_ms`) says RUNNING while its driver stopped
    beating."""
    return status == "RUNNING" and beat_ms is not None and now_ms - beat_ms > DRIVER_LOST_AFTER_S * 1000


def literal(value: str) -> str:
    """`value` as a string literal of an MLflow filter. MLflow's filter grammar has no escape for a quote,
    so a value holding one is refused (study names cannot hold one; see spec.NAME_PATTERN)."""
    if "'" in value or "\\" in value:
        raise ValueError(f"{value!r} cannot appear in an MLflow search filter (quote or backslash)")
    return f"'{value}'"


def _find_run(client: MlflowClient, exp_id: str, filter_string: str) -> str | None:
    runs = client.search_runs([exp_id], filter_string=filter_string, max_results=1)
    return runs[0].info.run_id if runs else None


def start_study_run(
    client: MlflowClient,
    study: str,
    resolved_config: Mapping[str, Any],
    spec_path: Path | None = None,
) -> str:
    """The study's parent run: created once, found again (and reopened) when the study resumes."""
    exp_id = experiment_id(client, study)
    query = f"tags.`{ROLE_TAG}` = 'study' and tags.`{STUDY_TAG}` = {literal(study)}"
    run_id = _find_run(client, exp_id, query)
    beat = heartbeat_text(int(time.time() * 1000))
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, HEARTBEAT_TAG, beat)
        return run_id
    tags = {STUDY_TAG: study, ROLE_TAG: "study", HEARTBEAT_TAG: beat}
    commit = git_commit(spec_path.parent if spec_path else ".")
    if commit:
        tags[GIT_TAG] = commit
    run_id = client.create_run(exp_id, run_name=study, tags=tags).info.run_id
    log_params(client, run_id, flatten(resolved_config))
    client.log_dict(run_id, dict(resolved_config), "resolved_config.json")
    if spec_path is not None:
        client.log_artifact(run_id, str(spec_path))
    return run_id


def start_trial_run(
    client: MlflowClient,
    study_run_id: str,
    trial_id: str,
    cell: Mapping[str, Any],
    params: Mapping[str, Any],
    repeat: int = 0,
    role: str = "trial",
    tags: Mapping[str, str] | None = None,
    start_time_ms: int | None = None,
) -> str:
    """A trial's child run, nested under the study run; reused if the trial already has one (resume).
    `repeat`: its repeat index k (seed k), which pairs it with repeat k of every other cell; `role`: "trial"
    (pretraining) or FINETUNE_ROLE; `tags`: more tags for a new run; `start_time_ms`: when the trial started
    (default: now), for a run created late (MLflow was down)."""
    parent = client.get_run(study_run_id)
    exp_id, study = parent.info.experiment_id, parent.data.tags[STUDY_TAG]
    run_id = _find_run(client, exp_id, _trial_filter(study, trial_id))
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, STATUS_TAG, TrialStatus.RUNNING.value)
        return run_id
    tags = {
        PARENT_TAG: study_run_id,
        STUDY_TAG: study,
        ROLE_TAG: role,
        TRIAL_TAG: trial_id,
        CELL_TAG: cell_key(cell),
        STATUS_TAG: TrialStatus.RUNNING.value,
        REPEAT_TAG: str(repeat),
        **(tags or {}),
    }
    run_id = client.create_run(exp_id, start_time=start_time_ms, run_name=f"{cell_key(cell)}#{trial_id}",
                               tags=tags).info.run_id
    log_params(client, run_id, flatten(params))
    return run_id


def find_trial_run(client: MlflowClient, study_run_id: str, trial_id: str) -> str | None:
    """The trial's run under the study run, if it has one."""
    parent = client.get_run(study_run_id)
    return _find_run(client, parent.info.experiment_id, _trial_filter(parent.data.tags[STUDY_TAG], trial_id))


def _trial_filter(study: str, trial_id: str) -> str:
    return f"tags.`{STUDY_TAG}` = {literal(study)} and tags.`{TRIAL_TAG}` = {literal(trial_id)}"


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        client.log_batch(run_id, params=items[start : start + 100])


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    """Log the finite values at one step (see `log_history`)."""
    log_history(client, run_id, [{"step": step, **metrics}])


def log_history(
    client: MlflowClient, run_id: str, records: list[Mapping[str, float]], timestamp_ms: int | None = None
) -> None:
    """Step-wise records `{"step": s, name: value, ...}` in as few requests as MLflow allows (1000 each).
    Non-finite values are left out: they are what divergence is, recorded separately. `timestamp_ms`: when
    they were measured (default: now). A value sent again with its timestamp is stored once by MLflow's
    SQL stores (the metric's key is name, timestamp, step and value), so a replayed batch is harmless."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    batch = [
        Metric(k, float(v), now, int(r["step"]))
        for r in records
        for k, v in r.items()
        if k != "step" and math.isfinite(float(v))
    ]
    for start in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[start : start + 1000])


def logged_epochs(client: MlflowClient, run_id: str) -> set[int]:
    """The epochs a trial's run holds: the steps of its `epoch` metric, logged last of each epoch."""
    return {m.step for m in client.get_metric_history(run_id, EPOCH)}


def log_epochs(client: MlflowClient, run_id: str, records: list[Mapping[str, Any]], logged: set[int]) -> None:
    """Each epoch record (`reports.EpochReport.record`) whose epoch is not in `logged` (which grows): its
    step-wise history, then its epoch metrics. `epoch` comes in the last request, so an epoch counts as
    logged only once all of it is; what a crash cut short is sent again with the same timestamps."""
    for record in sorted(records, key=lambda r: r["epoch"]):
        epoch = int(record["epoch"])
        if epoch in logged:
            continue
        metrics = {k: v for k, v in record["metrics"].items() if k != EPOCH}
        rows = [*record["history"], {"step": epoch, **metrics}, {"step": epoch, EPOCH: float(epoch)}]
        log_history(client, run_id, rows, timestamp_ms=record["time_ms"])
        logged.add(epoch)


def end_trial_run(
    client: MlflowClient, run_id: str, status: TrialStatus, end_time_ms: int | None = None
) -> None:
    """Record why a trial ended, and close its MLflow run (idempotent: a later, truer status wins).
    `end_time_ms`: when it ended (default: now), for a record written late."""
    client.set_tag(run_id, STATUS_TAG, status.value)
    client.set_terminated(run_id, status=_MLFLOW_STATUS[status], end_time=end_time_ms)


def log_dataset(client: MlflowClient, run_id: str, name: str, digest: str, source: str, split: str,
                profile: Mapping[str, Any]) -> None:
    """Log a split a trial reads as a dataset input of its run: `name`, `digest` (at most 36 characters),
    `source` (the data's root: a path, or a URI such as s3://...) and `profile` (e.g. its clip count); the
    input's `DATASET_CONTEXT_TAG` is the split. Logging it again changes nothing."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    scheme = source.split("://", 1)[0] if "://" in source else "local"  # MLflow's artifact dataset sources
    dataset = Dataset(name=name, digest=digest, source_type=scheme, source=json.dumps({"uri": source}),
                      profile=json.dumps(dict(profile)))
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag(DATASET_CONTEXT_TAG, split)])])


def interrupt_trial_runs(client: MlflowClient, study_run_id: str, end_time_ms: int | None = None) -> None:
    """The study's trials still RUNNING when Ctrl-C stopped it (Tune ends them without a callback): they say
    so, and `--resume` reopens them. `end_time_ms`: when the study stopped (default: now)."""
    exp_id = client.get_run(study_run_id).info.experiment_id
    query = (f"tags.`{PARENT_TAG}` = {literal(study_run_id)} and "
             f"tags.`{STATUS_TAG}` = {literal(TrialStatus.RUNNING.value)}")
    for run in client.search_runs([exp_id], query):
        end_trial_run(client, run.info.run_id, TrialStatus.INTERRUPTED, end_time_ms)


def end_study_run(client: MlflowClient, run_id: str, status: str = "FINISHED",
                  end_time_ms: int | None = None) -> None:
    """`status`: FINISHED, FAILED (an error ended the sweep), KILLED (interrupted: `--resume` reopens it).
    `end_time_ms`: when the study ended (default: now)."""
    client.set_terminated(run_id, status=status, end_time=end_time_ms)
