"""What fine-tuning says of a study: each cell's fine-tuned score per setting at its best LR (mean and 95%
interval over seeds), the from-scratch row, each cell's gain over it paired by seed, and whether the linear
probe ranks the cells as fine-tuning does (Kendall's tau with a bootstrap interval over seeds): can the cheap
probe stand in for fine-tuning? Reads `StudyData.finetune` (collect.py); the page's section and the sweep's
closing lines both come from here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from avmae.dashboards import stats
from avmae.dashboards.collect import REPEAT, StudyData
from avmae.dashboards.summary import cell_summary
from avmae.platform.tracking.layout import SCRATCH_CELL, TrialStatus

BOOTSTRAP = 2000
ByRepeat = dict[int, float]


@dataclass(frozen=True)
class Row:
    """One cell (or the scratch row) in one setting, at its best LR of the grid."""

    cell: str
    setting: str
    lr: float
    by_repeat: ByRepeat
    score: stats.Interval
    gain: stats.Comparison | None  # over the scratch row, paired by seed (None for the scratch row itself)


MIN_CELLS_TO_JUDGE = 3


@dataclass(frozen=True)
class Agreement:
    """Kendall's tau between two rankings of the same cells, with a bootstrap interval over seeds."""

    tau: float
    lo: float
    hi: float
    n_cells: int
    n_seeds: int

    def text(self) -> str:
        if not math.isfinite(self.tau):
            return (f"not measurable: fewer than 2 cells, or a ranking all ties ({self.n_cells} cells, "
                    f"{self.n_seeds} seeds in common)")
        interval = f" [{self.lo:+.2f}, {self.hi:+.2f}]" if math.isfinite(self.lo) else " (no interval)"
        return f"τ = {self.tau:+.2f}{interval} over {self.n_cells} cells, {self.n_seeds} seeds"


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two score lists (ties counted as ties); NaN for fewer than 2 items or a constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    if n < 2:
        return math.nan
    i, j = np.triu_indices(n, 1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    denominator = math.sqrt(np.count_nonzero(dx) * np.count_nonzero(dy))
    return float((dx * dy).sum() / denominator) if denominator else math.nan


def rank_agreement(a: Mapping[str, ByRepeat], b: Mapping[str, ByRepeat], n_boot: int = BOOTSTRAP,
                   seed: int = stats.BOOTSTRAP_SEED) -> Agreement:
    """tau between the cells' mean scores under `a` and under `b` (each cell -> score by repeat k), over the
    cells both have and the seeds every one of them has in both; its 95% percentile interval resamples those
    seeds with replacement (the same draw for both rankings: they are paired)."""
    cells = [c for c in a if c in b]
    seeds = sorted(set.intersection(*(set(a[c]) & set(b[c]) for c in cells))) if cells else []
    if len(cells) < 2 or not seeds:
        return Agreement(math.nan, math.nan, math.nan, len(cells), len(seeds))
    x = np.array([[a[c][k] for k in seeds] for c in cells])
    y = np.array([[b[c][k] for k in seeds] for c in cells])
    tau = kendall_tau(x.mean(axis=1), y.mean(axis=1))
    if len(seeds) < 2:
        return Agreement(tau, math.nan, math.nan, len(cells), len(seeds))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))
    taus = np.array([kendall_tau(x[:, d].mean(axis=1), y[:, d].mean(axis=1)) for d in draws])
    taus = taus[np.isfinite(taus)]
    lo, hi = np.percentile(taus, [2.5, 97.5]) if len(taus) else (math.nan, math.nan)
    return Agreement(tau, float(lo), float(hi), len(cells), len(seeds))


def best_lr_rows(frame: pd.DataFrame) -> list[Row]:
    """Per (cell, setting): the LR whose finished runs have the best mean score, its scores by seed, and the
    gain over the scratch row at the scratch row's own best LR, paired by seed."""
    done = frame[(frame["status"] == TrialStatus.FINISHED.value) & frame["score"].notna()]
    best: dict[tuple[str, str], tuple[float, ByRepeat]] = {}
    for (cell, setting), group in done.groupby(["cell", "setting"], sort=False):
        lr = group.groupby("lr")["score"].mean().idxmax()
        chosen = group[group["lr"] == lr]
        scores = dict(zip(chosen[REPEAT].astype(int), chosen["score"], strict=True))
        best[(cell, setting)] = (float(lr), scores)
    rows = []
    for (cell, setting), (lr, by_repeat) in best.items():
        scratch = best.get((SCRATCH_CELL, setting))
        gain = None if cell == SCRATCH_CELL or scratch is None else \
            stats.paired_difference(by_repeat, scratch[1], cell, SCRATCH_CELL)
        rows.append(Row(cell, setting, lr, by_repeat, stats.mean_ci(list(by_repeat.values()), bounds=(0, 1)),
                        gain))
    return sorted(rows, key=lambda r: (r.setting, r.cell == SCRATCH_CELL, r.cell))


def probe_agreement(data: StudyData, rows: list[Row]) -> dict[str, Agreement]:
    """Per setting: the probe's ranking of the cells (each cell's best configuration, `cell_summary`) against
    fine-tuning's (each cell at its best LR)."""
    cells = cell_summary(data)
    found = {}
    for setting in sorted({r.setting for r in rows}):
        column = f"by_repeat:{setting}"
        if column not in cells:
            continue
        probe = dict(zip(cells["cell"], cells[column], strict=True))
        tuned = {r.cell: r.by_repeat for r in rows if r.setting == setting and r.cell != SCRATCH_CELL}
        found[setting] = rank_agreement(probe, tuned)
    return found


def finetune_lines(data: StudyData) -> list[str]:
    """The sweep's closing lines of the fine-tuning stage (none where it logged no run)."""
    rows = best_lr_rows(data.finetune)
    if not rows:
        return []
    width = max(len(r.cell) for r in rows)
    name = str(data.finetune["score_name"].iloc[0]).rsplit("_", 1)[-1]
    lines = [f"Fine-tuned {name} at each cell's best LR (mean [95% interval] over seeds); gain over "
             "from scratch, paired by seed:"]
    for r in rows:
        gain = "" if r.gain is None else f"   gain {_signed(r.gain.diff)}"
        lines.append(f"  {r.setting:<5} {r.cell.ljust(width)}  {r.score.text()}, lr {r.lr:g}{gain}")
    for setting, agreement in probe_agreement(data, rows).items():
        lines.append(f"Probe vs fine-tuning ranking of the cells ({setting}): {agreement.text()}"
                     f"{_agreement_verdict(agreement)}")
    return lines


def _agreement_verdict(agreement: Agreement) -> str:
    """Whether the probe can stand in for fine-tuning: only where at least 3 cells make a ranking (2 cells
    have a tau of +1 or -1 and nothing between) and the interval lies above 0."""
    if not math.isfinite(agreement.lo):
        return ""
    if agreement.n_cells < MIN_CELLS_TO_JUDGE:
        return f" — too few cells to judge the probe by (at least {MIN_CELLS_TO_JUDGE})"
    return (" — the probe can stand in" if agreement.lo > 0
            else " — the probe cannot be trusted to rank these cells")


def _signed(diff: stats.Interval) -> str:
    arrow = " ↑" if diff.has_interval and diff.lo > 0 else " ↓" if diff.has_interval and diff.hi < 0 else ""
    return ("+" if diff.mean >= 0 else "") + diff.text() + arrow


def _half(score: stats.Interval, up: bool) -> float:
    if not score.has_interval:
        return 0.0
    return score.hi - score.mean if up else score.mean - score.lo


def finetune_figure(data: StudyData) -> go.Figure:
    """Fine-tuned score per cell (the scratch row last) and setting at its best LR, with 95% intervals."""
    rows = best_lr_rows(data.finetune)
    fig = go.Figure()
    for setting in dict.fromkeys(r.setting for r in rows):
        mine = [r for r in rows if r.setting == setting]
        fig.add_bar(name=setting, x=[r.cell for r in mine], y=[r.score.mean for r in mine],
                    error_y={"type": "data", "symmetric": False,
                             "array": [_half(r.score, up=True) for r in mine],
                             "arrayminus": [_half(r.score, up=False) for r in mine]},
                    hovertext=[f"lr {r.lr:g}, n = {r.score.n}" for r in mine])
    agreement = probe_agreement(data, rows) if rows else {}
    title = "Fine-tuned at each cell's best LR" if rows else "No fine-tuning run logged"
    if agreement:
        title += " · probe vs fine-tuning: " + "; ".join(f"{s} {a.text()}" for s, a in agreement.items())
    fig.update_layout(title=title, barmode="group", yaxis_title="test score", xaxis_title="cell")
    return fig
