"""What each cell's answer cost, and what it would reach for the same compute.

Every trial is charged to its cell whatever its end (finished, pruned, diverged, failed): GPU-, CPU- and
trial-hours from its training time and the study's resources per trial, with its throughput. From those,
the study's total against its `budget`, the expected best score after k trials and after h hours (Dodge et
al. 2019, `budget.expected_best`) and the compute-matched verdict (`budget.compute_matched`). A study
without GPUs is costed in CPU-hours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from avmae.dashboards.budget import ComputeMatched, compute_matched, expected_best, expected_best_at_budget
from avmae.dashboards.collect import StudyData
from avmae.dashboards.summary import ranking
from avmae.platform.tracking.layout import TRAIN_CLIPS_PER_S


@dataclass(frozen=True)
class Resources:
    """What one trial holds, as the study run recorded it (`resources.*`)."""

    workers: float = 1.0
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    @property
    def unit(self) -> str:
        """The cost that compares cells: GPU-hours where trials hold GPUs, else CPU-hours."""
        return "GPU-hours" if self.gpus_per_worker > 0 else "CPU-hours"

    def per_trial_hour(self) -> float:
        """`unit`s one hour of one trial costs."""
        return self.workers * (self.gpus_per_worker if self.gpus_per_worker > 0 else self.cpus_per_worker)


@dataclass(frozen=True)
class CellCost:
    """One cell's spend: every trial charged, whatever its end."""

    cell: str
    trials: int
    trial_hours: float
    gpu_hours: float
    cpu_hours: float
    clips_per_s: float  # mean over its trials of each one's median throughput (NaN where none logged)

    def text(self) -> str:
        speed = f", {self.clips_per_s:.0f} clips/s" if math.isfinite(self.clips_per_s) else ""
        return (f"{self.trials} trials, {self.trial_hours:.3g} trial-h ({self.gpu_hours:.3g} GPU-h, "
                f"{self.cpu_hours:.3g} CPU-h){speed}")


def resources(data: StudyData) -> Resources:
    """The study's resources per trial; the spec's defaults where the study run did not record them."""
    found = {}
    for name in ("workers", "cpus_per_worker", "gpus_per_worker"):
        raw = data.settings.get(f"resources.{name}")
        if raw is not None:
            found[name] = float(raw)
    return Resources(**found)


def cell_costs(data: StudyData) -> list[CellCost]:
    """Per cell, in the trials frame's order: its trials and what they cost."""
    trials, res = data.trials, resources(data)
    if trials.empty:
        return []
    speed = _median_throughput(data)
    costs = []
    for cell, group in trials.groupby("cell", sort=False):
        hours = float(group["compute_s"].sum()) / 3600
        clips = speed.reindex(group["trial_id"]).dropna()
        costs.append(CellCost(str(cell), len(group), hours, hours * res.workers * res.gpus_per_worker,
                              hours * res.workers * res.cpus_per_worker,
                              float(clips.mean()) if len(clips) else math.nan))
    return costs


def _median_throughput(data: StudyData) -> pd.Series:
    """Each trial's median logged clips/s, by trial id."""
    curves = data.curves
    if curves.empty or TRAIN_CLIPS_PER_S not in curves:
        return pd.Series(dtype=float)
    return curves.groupby("trial_id")[TRAIN_CLIPS_PER_S].median()


def budget_text(data: StudyData, costs: list[CellCost]) -> str:
    """The study's spend against its `budget` (`budget.gpu_hours` or `budget.trial_hours`), or its spend."""
    trial_hours = sum(c.trial_hours for c in costs)
    gpu_hours = sum(c.gpu_hours for c in costs)
    spent = f"{trial_hours:.3g} trial-hours, {gpu_hours:.3g} GPU-hours"
    for key, used in (("budget.gpu_hours", gpu_hours), ("budget.trial_hours", trial_hours)):
        limit = _number(data.settings.get(key))
        if limit:
            unit = key.split(".")[1].replace("_", "-")
            return (f"Spent {used:.3g} of the budget's {limit:g} {unit} ({100 * used / limit:.0f}%); "
                    f"{spent} in all")
    return f"Spent {spent} (no budget set)"


def _number(raw: str | None) -> float | None:
    try:
        return float(raw) if raw not in (None, "None", "") else None
    except ValueError:
        return None


def scores_and_costs(data: StudyData) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], bool]:
    """Per cell, each trial's score on the study's ranking column (NaN where it has none: pruned early,
    diverged, failed) and its cost in `resources(data).unit`; and whether higher scores are better."""
    trials = data.trials
    column, higher = ranking(trials)
    per_hour = resources(data).per_trial_hour()
    scores, costs = {}, {}
    for cell, group in trials.groupby("cell", sort=False):
        values = group[column] if column is not None else pd.Series(math.nan, index=group.index)
        scores[str(cell)] = values.where(group["status"] == "finished").to_numpy(dtype=float)
        costs[str(cell)] = group["compute_s"].fillna(0.0).to_numpy(dtype=float) / 3600 * per_hour
    return scores, costs, higher


def matched_verdict(data: StudyData) -> ComputeMatched | None:
    """Which cell is ahead at the budget the cheapest cell spent, and at the whole budget; None below two
    cells with a scored trial."""
    scores, costs, higher = scores_and_costs(data)
    if sum(bool(np.isfinite(s).any()) for s in scores.values()) < 2:
        return None
    return compute_matched(scores, costs, higher_is_better=higher, unit=resources(data).unit)


@dataclass(frozen=True)
class BudgetCurve:
    """One cell's expected best score (and its sd over draws) after k trials and after `hours` of compute."""

    cell: str
    k: np.ndarray
    best_by_k: np.ndarray
    sd_by_k: np.ndarray
    hours: np.ndarray
    best_by_hours: np.ndarray
    sd_by_hours: np.ndarray


def budget_curves(data: StudyData, points: int = 24) -> list[BudgetCurve]:
    """Expected best against trials and against compute (Dodge et al. 2019), per cell with a scored trial;
    the hour grid spans what the costliest cell spent."""
    scores, costs, higher = scores_and_costs(data)
    top = max((float(c.sum()) for c in costs.values()), default=0.0)
    grid = np.linspace(top / points, top, points) if top > 0 else np.array([])
    curves = []
    for cell, s in scores.items():
        if not np.isfinite(s).any():
            continue
        by_k = expected_best(s, higher_is_better=higher)
        at = expected_best_at_budget(s, costs[cell], grid, higher_is_better=higher)
        curves.append(BudgetCurve(cell, np.asarray(by_k.k), np.asarray(by_k.mean), np.asarray(by_k.sd), grid,
                                  np.asarray(at.mean, dtype=float), np.asarray(at.sd, dtype=float)))
    return curves


def cost_lines(data: StudyData) -> list[str]:
    """What a sweep prints of cost: each cell's spend, the study's against its budget, and the
    compute-matched verdict."""
    costs = cell_costs(data)
    if not costs:
        return []
    width = max(len(c.cell) for c in costs)
    lines = ["Cost per cell (every trial charged, pruned, diverged and failed ones too):"]
    lines += [f"  {c.cell.ljust(width)}  {c.text()}" for c in costs]
    lines.append(budget_text(data, costs))
    verdict = matched_verdict(data)
    if verdict is not None:
        lines.append(f"Compute-matched (expected best {ranking(data.trials)[0]}): {verdict.text()}")
    return lines
