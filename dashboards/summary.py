"""One row per ablation cell: what ran there, what it cost, and its best configuration.

Both the ablation table and the overview read this, so "best" means the same thing everywhere: the finished
trial with the highest primary probe score, or the lowest final loss while no probe score is logged.
"""

from __future__ import annotations

import math

import pandas as pd
from avmae.dashboards.collect import (
    CELL_AXES,
    StudyData,
    in_axis_order,
    loss_metric,
    primary_score,
    score_columns,
)
from avmae.platform.tracking import TrialStatus

STATUSES = tuple(s.value for s in TrialStatus)
NOT_SEARCHED = ("seed",)  # varies across trials on purpose, but is no hyperparameter


def searched_params(data: StudyData) -> list[str]:
    """Hyperparameters searched inside cells (lr, mask ratios, ...): the params that vary within a cell.
    What a cell fixes (its axes, and settings they imply) does not."""
    if data.trials.empty:
        return []
    varies = data.trials.groupby("cell")[list(data.params)].nunique().max() > 1
    return [p for p in data.params if varies[p] and p not in NOT_SEARCHED]


def cell_axes(data: StudyData) -> list[str]:
    """The ablation axes the cells are made of: fusion, decoder, objective, and any other in the cell tags."""
    named = {part.split("=", 1)[0] for cell in data.trials["cell"] for part in str(cell).split(",") if part}
    return [*CELL_AXES, *sorted(named - set(CELL_AXES))]


def cell_summary(data: StudyData) -> pd.DataFrame:
    """Per cell, objective-major in the paper's order: axes, trial counts by status, compute seconds, and
    the best trial with its scores and searched params."""
    trials = data.trials
    columns = ["cell", *CELL_AXES, "n_trials", *(f"n_{s}" for s in STATUSES), "statuses", "compute_s",
               "best_trial", "why_empty"]
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
    row.update(best_trial=None if best is None else best["trial_id"], why_empty=why)
    for modality, column in score_columns(trials).items():
        row[modality] = math.nan if best is None else best.get(column, math.nan)
    for param in searched:
        row[param] = math.nan if best is None else best[param]
    return row


def _best(group: pd.DataFrame, trials: pd.DataFrame) -> tuple[pd.Series | None, str | None]:
    """The cell's best finished trial, or why there is none."""
    finished = group[group["status"] == TrialStatus.FINISHED.value]
    if finished.empty:
        return None, f"no finished trial ({status_counts(group)})"
    score = primary_score(trials)
    if score is not None and finished[score].notna().any():
        return finished.loc[finished[score].idxmax()], None
    loss = loss_metric(trials)
    if loss in finished and finished[loss].notna().any():
        return finished.loc[finished[loss].idxmin()], None
    return None, f"{len(finished)} finished, nothing logged to rank by"
