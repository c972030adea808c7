"""One row per ablation cell: what ran there, what it cost, and its best configuration.

A configuration is a cell plus the values of its searched parameters; its trials are its repeats (seeds
0..N-1, the `repeat` column). Both the ablation table and the overview read this, so "best" means the same
thing everywhere: the configuration whose finished repeats have the highest mean primary probe score, or the
lowest mean final loss while no probe score is logged. A study older than repeats has one trial per
configuration, so its best configuration is its best trial.
"""

from __future__ import annotations

import math

import pandas as pd
from avmae.dashboards.collect import (
    CELL_AXES,
    REPEAT,
    StudyData,
    in_axis_order,
    loss_metric,
    primary_score,
    score_columns,
)
from avmae.dashboards.stats import mean_ci, score_bounds
from avmae.platform.tracking.layout import SEED_PARAM, TrialStatus

STATUSES = tuple(s.value for s in TrialStatus)
NOT_SEARCHED = (SEED_PARAM, REPEAT)  # vary across trials on purpose, but are no hyperparameters
CONFIG = "config"  # column `configurations` adds: which configuration a trial is a repeat of


def searched_params(data: StudyData) -> list[str]:
    """Hyperparameters searched inside cells (lr, mask ratios, ...): the params that vary within a cell.
    What a cell fixes (its axes, and settings they imply) does not."""
    if data.trials.empty:
        return []
    varies = data.trials.groupby("cell")[list(data.params)].nunique().max() > 1
    return [p for p in data.params if varies[p] and p not in NOT_SEARCHED]


def configurations(data: StudyData) -> pd.Series:
    """Per trial (aligned with `data.trials`), a label of the configuration it is a repeat of: its cell and
    searched values, e.g. 'fusion=mid,objective=joint | lr=0.0003'. Trials without a repeat index (older
    studies), and a second trial with the same configuration and repeat index (a grid run twice), are
    configurations of their own: a repeat index is unique within a configuration, so repeats pair."""
    trials = data.trials
    if trials.empty:
        return pd.Series(dtype=str, index=trials.index, name=CONFIG)
    searched = searched_params(data)
    values = trials[searched].astype(str) if searched else pd.DataFrame(index=trials.index)
    label = trials["cell"].astype(str)
    for param in searched:
        label = label + (" | " if param == searched[0] else ", ") + f"{param}=" + values[param]
    repeat = trials[REPEAT] if REPEAT in trials else pd.Series(math.nan, index=trials.index)
    again = trials.assign(_label=label, _repeat=repeat.fillna(-1)).groupby(["_label", "_repeat"]).cumcount()
    label = label.where(again == 0, label + " #" + (again + 1).astype(str))
    return label.where(repeat.notna(), label + " · trial " + trials["trial_id"].astype(str)).rename(CONFIG)


def ranking(trials: pd.DataFrame) -> tuple[str | None, bool]:
    """The column configurations are ranked by, and whether higher is better: the primary probe score, or
    the final loss while no probe score is logged (None: nothing logged yet)."""
    score = primary_score(trials)
    if score is not None:
        return score, True
    loss = loss_metric(trials)
    return (loss, False) if loss in trials and trials[loss].notna().any() else (None, False)


def cell_axes(data: StudyData) -> list[str]:
    """The ablation axes the cells are made of: fusion, decoder, objective, and any other in the cell tags."""
    named = {part.split("=", 1)[0] for cell in data.trials["cell"] for part in str(cell).split(",") if part}
    return [*CELL_AXES, *sorted(named - set(CELL_AXES))]


def cell_summary(data: StudyData) -> pd.DataFrame:
    """Per cell, objective-major in the paper's order: axes, trial counts by status, compute seconds, and
    the best configuration: its trials, mean scores (`<modality>`) with their intervals (`ci:<modality>`,
    a `stats.Interval`) and per repeat k (`by_repeat:<modality>`), the score per repeat k it is ranked and
    paired by (`by_repeat`), and its searched params."""
    trials = data.trials.assign(**{CONFIG: configurations(data)})
    columns = ["cell", *CELL_AXES, "n_trials", *(f"n_{s}" for s in STATUSES), "statuses", "compute_s",
               "best_trial", "best_config", "n_repeats", "by_repeat", "why_empty"]
    searched = searched_params(data)
    rows = [_cell_row(cell, group, trials, searched) for cell, group in trials.groupby("cell", sort=False)]
    frame = pd.DataFrame(rows, columns=columns + [k for k in (rows[0] if rows else {}) if k not in columns])
    return frame.sort_values(["objective", "fusion", "decoder"], key=in_axis_order, ignore_index=True)


def status_counts(group: pd.DataFrame) -> str:
    """'2 diverged, 1 pruned': the statuses present, most common first."""
    counts = group["status"].value_counts()
    return ", ".join(f"{n} {status}" for status, n in counts.items())


def _cell_row(cell: str, group: pd.DataFrame, trials: pd.DataFrame, searched: list[str]) -> dict[str, object]:
    counts = group["status"].value_counts()
    row: dict[str, object] = {
        "cell": cell,
        **{axis: group[axis].iloc[0] for axis in CELL_AXES},
        "n_trials": len(group),
        **{f"n_{s}": int(counts.get(s, 0)) for s in STATUSES},
        "statuses": status_counts(group),
        "compute_s": float(group["compute_s"].sum()),
    }
    best, why = _best(group, trials)
    row.update(best_trial=None if best is None else ", ".join(best["trial_id"].astype(str)),
               best_config=None if best is None else best[CONFIG].iloc[0],
               n_repeats=0 if best is None else len(best), why_empty=why)
    rank_by, _ = ranking(trials)
    row["by_repeat"] = {} if best is None or rank_by is None else {
        int(k): float(v) for k, v in zip(_repeat_index(best), best[rank_by], strict=True) if math.isfinite(v)}
    for modality, column in score_columns(trials).items():
        ci = mean_ci(best[column] if best is not None else [], bounds=score_bounds(column))
        row[modality], row[f"ci:{modality}"] = ci.mean, ci
        row[f"by_repeat:{modality}"] = {} if best is None else {
            int(k): float(v) for k, v in zip(_repeat_index(best), best[column], strict=True)
            if math.isfinite(v)}
    for param in searched:
        row[param] = math.nan if best is None else best[param].iloc[0]
    return row


def _repeat_index(config: pd.DataFrame) -> pd.Series:
    """Repeat k of each trial of one configuration; 0 for an older trial without one (n = 1)."""
    return config[REPEAT].fillna(0) if REPEAT in config else pd.Series(0, index=config.index)


def _best(group: pd.DataFrame, trials: pd.DataFrame) -> tuple[pd.DataFrame | None, str | None]:
    """The finished repeats of the cell's best configuration (by their mean), or why there is none."""
    finished = group[group["status"] == TrialStatus.FINISHED.value]
    if finished.empty:
        return None, f"no finished trial ({status_counts(group)})"
    rank_by, higher = ranking(trials)
    if rank_by is None or not finished[rank_by].notna().any():
        return None, f"{len(finished)} finished, nothing logged to rank by"
    means = finished.groupby(CONFIG, sort=False)[rank_by].mean().dropna()
    best = means.idxmax() if higher else means.idxmin()
    return finished[finished[CONFIG] == best], None
