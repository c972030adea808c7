"""MLflow -> tidy pandas frames for one study, using only the layout in `avmae.platform.tracking.layout`.

Only MLflow's client API is used, so the same code reads a local SQLite store or a remote server, and
dashboards can be rebuilt while Ray is down or long after the sweep ended.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pandas as pd
from avmae.platform.tracking import layout as T
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

# Metrics whose whole history is read: step-wise training curves, and epoch-wise validation curves.
STEP_METRICS = (T.TRAIN_LOSS, T.TRAIN_LOSS_AUDIO, T.TRAIN_LOSS_VIDEO, T.TRAIN_LR, T.TRAIN_GRAD_NORM,
                T.TRAIN_CLIPS_PER_S)
EPOCH_METRICS = (T.VAL_LOSS, T.VAL_LOSS_AUDIO, T.VAL_LOSS_VIDEO)
LOSS_METRICS = (T.TRAIN_LOSS, T.TRAIN_LOSS_AUDIO, T.TRAIN_LOSS_VIDEO, T.VAL_LOSS, T.VAL_LOSS_AUDIO,
                T.VAL_LOSS_VIDEO)
CELL_AXES = ("fusion", "decoder", "objective")
MODALITIES = ("av", "audio", "video")
# The ablation axes' values in the paper's order; values not listed here sort after them.
AXIS_ORDER = {
    "fusion": ("early", "mid", "late", "shared"),
    "decoder": ("separate", "shared", "joint"),
    "objective": ("joint", "inpainting"),
}
PAGE = 1000
PARAM = "param:"
MISSING = "n/a"  # an ablation axis a trial does not set
TEXT_COLUMNS = ("trial_id", "run_id", "run_name", "cell", "status", "mlflow_status", *CELL_AXES)
REPEAT = "repeat"  # column of the repeat index k (the `avmae.repeat` tag); NaN for studies older than repeats
BASELINE_COLUMNS = ("baseline", "probe", REPEAT, "value")
# One row per fine-tuning run (role `finetune`): its cell (or T.SCRATCH_CELL), setting, repeat k, LR, status,
# and its test score (accuracy, or mAP for a multi-label recipe) after its last epoch.
FINETUNE_COLUMNS = ("run_id", "cell", "setting", REPEAT, "lr", "status", "score", "score_name")


class StudyNotFound(LookupError):
    """No study of that name in the store; the message lists the studies that are there."""


@dataclass(frozen=True)
class StudyData:
    """A study as frames. `trials`: one row per trial; `curves`: one row per (trial, step) of the
    step-wise metrics; `epochs`: one row per (trial, epoch) of the validation metrics; `baselines`: one row
    per (baseline, probe score, repeat) of the reference rows logged on the study run; `settings`: the study
    file as the study run recorded it (flattened, string values)."""

    name: str
    parent_run_id: str
    parent_status: str  # MLflow run status of the study run: RUNNING while the sweep goes on
    params: tuple[str, ...]  # the columns of `trials` that are hyperparameters
    trials: pd.DataFrame
    curves: pd.DataFrame
    epochs: pd.DataFrame
    baselines: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=BASELINE_COLUMNS))
    settings: dict[str, str] = field(default_factory=dict)  # the study run's params: its flattened config
    heartbeat_ms: int | None = None  # when the study's driver last beat (`T.HEARTBEAT_TAG`); None: no beat
    finetune: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FINETUNE_COLUMNS))

    @property
    def driver_lost(self) -> bool:
        """The study run says RUNNING but its driver stopped beating (killed, its machine gone)."""
        return T.driver_lost(self.parent_status, self.heartbeat_ms, int(time.time() * 1000))

    @property
    def interrupted(self) -> bool:
        """The sweep was stopped (Ctrl-C) before it ended; `avmae sweep FILE --resume` continues it."""
        return self.parent_status == "KILLED"

    @property
    def partial(self) -> bool:
        """True while the sweep is still running, or was interrupted before it ended: the figures then show
        a snapshot."""
        live = (T.TrialStatus.RUNNING.value, T.TrialStatus.INTERRUPTED.value)
        return self.parent_status in ("RUNNING", "KILLED") or bool(self.trials["status"].isin(live).any())


def best_col(metric: str) -> str:
    """Column of a metric's best value over its history (the minimum, as all curves here are losses)."""
    return f"best:{metric}"


def axis_values(values: pd.Series | list[str], axis: str) -> list[str]:
    """Distinct values of an ablation axis in the paper's order, unknown ones after, sorted."""
    seen = {str(v) for v in values}
    known = [v for v in AXIS_ORDER.get(axis, ()) if v in seen]
    return known + sorted(seen - set(known))


def in_axis_order(column: pd.Series) -> pd.Series:
    """A `sort_values` key: an ablation axis column's values ranked in the paper's order."""
    ranks = {v: i for i, v in enumerate(axis_values(column, str(column.name)))}
    return column.astype(str).map(ranks)


def score_columns(trials: pd.DataFrame) -> dict[str, str]:
    """modality -> the probe column logged for it (`probe/av_acc`, or `*_map` for multi-label data)."""
    found: dict[str, str] = {}
    for modality in MODALITIES:
        for score in ("acc", "map"):
            column = T.probe_metric(modality, score)
            if column in trials and trials[column].notna().any():
                found[modality] = column
                break
    return found


def primary_score(trials: pd.DataFrame) -> str | None:
    """The score a cell is ranked by: audiovisual if logged, else the first modality that was."""
    return next(iter(score_columns(trials).values()), None)


def loss_metric(trials: pd.DataFrame) -> str:
    """The loss trials are compared by: validation where logged, else training."""
    has_val = T.VAL_LOSS in trials and trials[T.VAL_LOSS].notna().any()
    return T.VAL_LOSS if has_val else T.TRAIN_LOSS


def list_studies(client: MlflowClient) -> list[str]:
    """Names of the studies in the store: those with a study run."""
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    if not exp_ids:
        return []
    runs = _search(client, exp_ids, f"tags.`{T.ROLE_TAG}` = 'study'")
    return sorted({r.data.tags.get(T.STUDY_TAG, "") for r in runs} - {""})


def collect_study(client: MlflowClient, study: str) -> StudyData:
    """Read every trial of `study` with its parameters, status, final/best metrics and curves."""
    experiment = client.get_experiment_by_name(study)
    parents = (
        _search(client, [experiment.experiment_id],
                f"tags.`{T.ROLE_TAG}` = 'study' and tags.`{T.STUDY_TAG}` = '{study}'")
        if experiment else []
    )
    if not parents:
        available = list_studies(client)
        raise StudyNotFound(
            f"no study {study!r} in {client.tracking_uri}; available studies: "
            + (", ".join(available) if available else "none")
        )
    parent = parents[0]
    runs = _search(client, [experiment.experiment_id],
                   f"tags.`{T.ROLE_TAG}` = 'trial' and tags.`{T.STUDY_TAG}` = '{study}'")
    histories = {r.info.run_id: _histories(client, r) for r in runs}
    trials, params = _trials_frame(runs, histories)
    return StudyData(
        name=study,
        parent_run_id=parent.info.run_id,
        parent_status=parent.info.status,
        params=params,
        trials=trials,
        curves=_curve_frame(runs, histories, STEP_METRICS, "step"),
        epochs=_curve_frame(runs, histories, EPOCH_METRICS, "epoch"),
        baselines=_baselines(client, parent),
        settings=dict(parent.data.params),
        heartbeat_ms=T.heartbeat_ms(parent.data.tags),
        finetune=_finetune(_search(client, [experiment.experiment_id], f"tags.`{T.ROLE_TAG}` = "
                                   f"'{T.FINETUNE_ROLE}' and tags.`{T.STUDY_TAG}` = '{study}'")),
    )


def _baselines(client: MlflowClient, parent: Run) -> pd.DataFrame:
    """The study run's `baseline/<baseline>/probe/<score>` metrics, one value per repeat k (the step)."""
    rows = []
    for key in sorted(k for k in parent.data.metrics if k.startswith(T.BASELINE_PREFIX)):
        baseline, _, probe = key.removeprefix(T.BASELINE_PREFIX).partition("/")
        history = client.get_metric_history(parent.info.run_id, key)
        history = sorted(history, key=lambda m: (m.step, m.timestamp))
        rows.extend((baseline, probe, m.step, m.value) for m in history)
    frame = pd.DataFrame(rows, columns=BASELINE_COLUMNS)
    # A repeat logged twice (a resumed study) counts once: its last value.
    return frame.drop_duplicates(["baseline", "probe", REPEAT], keep="last").reset_index(drop=True)


def _finetune(runs: list[Run]) -> pd.DataFrame:
    """The study's fine-tuning runs, one row each (`FINETUNE_COLUMNS`)."""
    rows = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        name = T.FT_TEST_MAP if T.FT_TEST_MAP in metrics else T.FT_TEST_ACC
        rows.append((run.info.run_id, tags.get(T.CELL_TAG), tags.get(T.SETTING_TAG),
                     int(tags.get(T.REPEAT_TAG, 0)), float(tags.get(T.FINETUNE_LR_TAG, "nan")),
                     tags.get(T.STATUS_TAG), metrics.get(name, math.nan), name))
    return pd.DataFrame(rows, columns=FINETUNE_COLUMNS)


def _search(client: MlflowClient, exp_ids: list[str], filter_string: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(exp_ids, filter_string=filter_string, max_results=PAGE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


Histories = dict[str, list[tuple[int, float]]]


def _histories(client: MlflowClient, run: Run) -> Histories:
    """(step, value) of each curve metric the run logged, in step order. The epoch report that says a trial
    diverged carries a placeholder loss, no measurement: its epoch metrics stop before that epoch."""
    keys = [k for k in STEP_METRICS + EPOCH_METRICS if k in run.data.metrics]
    history = {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        for key in keys
    }
    if T.DIVERGED_AT_STEP in run.data.metrics:
        epoch = min(m.step for m in client.get_metric_history(run.info.run_id, T.DIVERGED_AT_STEP))
        history.update({k: [p for p in history[k] if p[0] < epoch] for k in EPOCH_METRICS if k in history})
    return history


def _trials_frame(runs: list[Run], histories: dict[str, Histories]) -> tuple[pd.DataFrame, tuple[str, ...]]:
    frame = pd.DataFrame([_trial_row(run, histories[run.info.run_id]) for run in runs])
    if frame.empty:
        return pd.DataFrame(columns=[*TEXT_COLUMNS, "compute_s"]), ()
    # Parameters keep their `param:` prefix only where the bare name is taken by a metric or bookkeeping.
    taken = {c for c in frame.columns if not c.startswith(PARAM)}
    names = {c: c.removeprefix(PARAM) for c in frame.columns if c.startswith(PARAM)}
    names = {c: bare if bare not in taken else c for c, bare in names.items()}
    frame = frame.rename(columns=names)
    for column in frame.columns:
        if column not in TEXT_COLUMNS and not pd.api.types.is_numeric_dtype(frame[column]):
            frame[column] = _numeric_or_same(frame[column])
    frame = frame.sort_values(["cell", "trial_id"], key=_natural).reset_index(drop=True)
    return frame, tuple(names.values())


def _trial_row(run: Run, history: Histories) -> dict[str, object]:
    tags, info = run.data.tags, run.info
    status = tags.get(T.STATUS_TAG) or _status_from_mlflow(info.status)
    cell = dict(part.split("=", 1) for part in tags.get(T.CELL_TAG, "").split(",") if "=" in part)
    end_ms = info.end_time or int(time.time() * 1000)
    row: dict[str, object] = {
        "trial_id": tags.get(T.TRIAL_TAG, info.run_id),
        "run_id": info.run_id,
        "run_name": info.run_name,
        "cell": tags.get(T.CELL_TAG, ""),
        "status": status,
        "mlflow_status": info.status,
        "wall_s": (end_ms - info.start_time) / 1000 if info.start_time else math.nan,
        REPEAT: int(tags[T.REPEAT_TAG]) if tags.get(T.REPEAT_TAG, "").isdigit() else math.nan,
    }
    # The platform also logs the repeat index as a param: the tag's column already holds it.
    row.update({f"{PARAM}{k}": v for k, v in run.data.params.items() if k != REPEAT})
    for axis in CELL_AXES:  # the cell tag stands in for a missing parameter
        row.setdefault(f"{PARAM}{axis}", cell.get(axis, MISSING))
    row.update(run.data.metrics)  # MLflow's latest value of each metric: the final one ...
    for key, points in history.items():
        row[key] = points[-1][1] if points else math.nan  # ... or, for curves, the last measured one
        if key in LOSS_METRICS:
            finite = [v for _, v in points if math.isfinite(v)]
            row[best_col(key)] = min(finite) if finite else math.nan
    losses = history.get(T.TRAIN_LOSS, [])
    row["last_step"] = losses[-1][0] if losses else math.nan
    row["diverged_step"] = (
        run.data.metrics.get(T.DIVERGED_AT_STEP, row["last_step"])
        if status == T.TrialStatus.DIVERGED.value else math.nan
    )
    row["compute_s"] = run.data.metrics.get(T.TRAIN_SECONDS, row["wall_s"])
    return row


def _status_from_mlflow(mlflow_status: str) -> str:
    """For runs without the status tag (written by hand or by an older platform)."""
    return {
        "RUNNING": T.TrialStatus.RUNNING.value,
        "SCHEDULED": T.TrialStatus.RUNNING.value,
        "FINISHED": T.TrialStatus.FINISHED.value,
        "KILLED": T.TrialStatus.PRUNED.value,
    }.get(mlflow_status, T.TrialStatus.FAILED.value)


def _curve_frame(
    runs: list[Run], histories: dict[str, Histories], metrics: tuple[str, ...], index: str
) -> pd.DataFrame:
    long = pd.DataFrame(
        _curve_points(runs, histories, metrics), columns=["trial_id", index, "metric", "value"]
    )
    if long.empty:
        return pd.DataFrame(columns=["trial_id", index])
    wide = long.pivot_table(index=["trial_id", index], columns="metric", values="value", aggfunc="last")
    wide = wide.reindex(columns=[m for m in metrics if m in set(long["metric"])])
    wide.columns.name = None
    return wide.reset_index()


def _curve_points(
    runs: list[Run], histories: dict[str, Histories], metrics: tuple[str, ...]
) -> Iterator[tuple[str, int, str, float]]:
    for run in runs:
        trial_id = run.data.tags.get(T.TRIAL_TAG, run.info.run_id)
        for key in metrics:
            for step, value in histories[run.info.run_id].get(key, []):
                yield trial_id, step, key, value


def _numeric_or_same(column: pd.Series) -> pd.Series:
    """Params arrive as strings: make a column numeric when every value parses, else leave it."""
    try:
        return pd.to_numeric(column)
    except (ValueError, TypeError):
        return column


def _natural(column: pd.Series) -> pd.Series:
    """Sort trial ids '2' before '10' when they are numbers."""
    numeric = pd.to_numeric(column, errors="coerce")
    return numeric if numeric.notna().all() else column.astype(str)
