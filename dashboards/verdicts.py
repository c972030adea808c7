"""What a study's numbers support: the best cell per objective (or that there is none), the reference rows,
each cell's gain over the random-init encoder, the leading cell's probability of improvement over each
other cell, and the learning-rate stability verdict. Reads a `StudyData`,
asks `stats` and returns what the figures state, so every sentence on the page comes from one tested place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from avmae.dashboards import robust, stats
from avmae.dashboards.collect import REPEAT, StudyData, axis_values, in_axis_order, score_columns
from avmae.dashboards.power import SeedsNeeded, next_run_paired
from avmae.dashboards.summary import cell_summary, ranking
from avmae.platform.tracking.layout import BASELINES, TRAIN_GRAD_NORM, TrialStatus

BASELINE_LABEL = {"random_init": "random-init encoder", "raw_input": "raw input"}
ENDED = (TrialStatus.FINISHED.value, TrialStatus.PRUNED.value, TrialStatus.DIVERGED.value)
TOLERANCE_SETTING = "lr_tolerance"  # the study file's key (top level) for the stable window's tolerance


class BadSetting(ValueError):
    """A study setting the dashboards read is unusable; the message names it and says what to write."""


def lr_tolerance(data: StudyData) -> float:
    """The study's `lr_tolerance` as its run recorded it, else stats.LR_TOLERANCE (5%)."""
    raw = data.settings.get(TOLERANCE_SETTING)
    if raw is None:
        return stats.LR_TOLERANCE
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise BadSetting(f"study {data.name!r}: {TOLERANCE_SETTING} = {raw!r} is not a fraction in (0, 1); "
                         f"set it in the study file, e.g. `{TOLERANCE_SETTING}: 0.05` (within 5% of the best "
                         "LR)")
    return value


def best_cells(data: StudyData, cells: pd.DataFrame | None = None) -> dict[str, stats.Best]:
    """Per objective, its cells' best configurations compared by their repeats (paired by k, Holm over all
    pairs of cells): the winning cell where it beats every other one, else 'no significant difference'."""
    cells = cell_summary(data) if cells is None else cells
    _, higher = ranking(data.trials)
    return {objective: stats.best_group(dict(zip(group["cell"], group["by_repeat"], strict=True)),
                                        higher_is_better=higher)
            for objective, group in cells.groupby("objective", sort=False)}


def baseline_rows(data: StudyData) -> dict[str, dict[str, stats.Interval]]:
    """Reference rows present on the study run: baseline -> probe column -> mean over repeats with interval,
    for the probe scores the trials log (so the rows line up with the cells)."""
    frame = data.baselines
    columns = set(score_columns(data.trials).values()) or set(frame["probe"])
    rows = {}
    for baseline in [b for b in BASELINES if b in set(frame["baseline"])] + \
            sorted(set(frame["baseline"]) - set(BASELINES)):
        mine = frame[(frame["baseline"] == baseline) & frame["probe"].isin(columns)]
        if len(mine):
            rows[baseline] = {probe: stats.mean_ci(group["value"], bounds=stats.score_bounds(probe))
                              for probe, group in mine.groupby("probe")}
    return rows


def gains_over_random_init(data: StudyData, cells: pd.DataFrame | None = None
                           ) -> dict[str, dict[str, stats.Comparison]]:
    """Per cell, per probe score: its best configuration's score minus the random-init encoder's, paired by
    repeat k (both ran with seed `train.seed + k`), with a t interval: did pretraining beat where it started?
    The reference row's means alone cannot say: seeds move both. The platform draws that encoder with the
    first cell's architecture: for cells built alike it is the very init the trial started from, for others
    (another fusion) a random encoder of the same seed. Empty where no random-init row is logged."""
    gains: dict[str, dict[str, stats.Comparison]] = {}
    for cell, column, pretrained, init in _paired_with_random_init(data, cells):
        gains.setdefault(cell, {})[column] = stats.paired_difference(pretrained, init, cell, "random_init")
    return gains


def _paired_with_random_init(data: StudyData, cells: pd.DataFrame | None
                             ) -> list[tuple[str, str, dict[int, float], dict[int, float]]]:
    """(cell, probe column, its best configuration's score by repeat k, the random-init row's by k)."""
    frame = data.baselines[data.baselines["baseline"] == "random_init"]
    if frame.empty:
        return []
    cells = cell_summary(data) if cells is None else cells
    init = {probe: dict(zip(group[REPEAT].astype(int), group["value"], strict=True))
            for probe, group in frame.groupby("probe")}
    scores = {m: c for m, c in score_columns(data.trials).items() if c in init}
    return [(row["cell"], column, row[f"by_repeat:{m}"], init[column])
            for _, row in cells.iterrows() for m, column in scores.items()]


@dataclass(frozen=True)
class Unsettled:
    """A gain over the random-init encoder whose 95% interval includes 0, and the seeds per cell a paired
    t-test needs to find a gain of that size with 80% power at the spread measured."""

    cell: str
    column: str
    gain: stats.Interval
    needed: SeedsNeeded


def unsettled_gains(data: StudyData, cells: pd.DataFrame | None = None) -> list[Unsettled]:
    """Every gain over the random-init encoder that the seeds run so far do not settle, with its plan."""
    unsettled = []
    for cell, column, pretrained, init in _paired_with_random_init(data, cells):
        gain = stats.paired_difference(pretrained, init, cell, "random_init").diff
        if gain.n and not (gain.has_interval and (gain.lo > 0 or gain.hi < 0)):
            unsettled.append(Unsettled(cell, column, gain, next_run_paired(pretrained, init)))
    return unsettled


def seeds_to_settle(unsettled: list[Unsettled]) -> int | None:
    """The seeds per configuration that settle every open gain a plan can settle within its cap (the largest
    such plan); None where none can (no spread measured, a gain too small for the cap)."""
    plans = [u.needed.n for u in unsettled if u.needed.n is not None and not u.needed.capped]
    return max(plans) if plans else None


def lr_verdicts(data: StudyData, by: str = "objective") -> list[stats.LrVerdict]:
    """The LR-stability verdict per objective (`by="objective"`, pooled over its cells) or per cell
    (`by="cell"`), on the primary probe score, else the final loss, with the study's `lr_tolerance`.
    Trials that failed or still run are left out: they say nothing about stability."""
    trials = data.trials
    tolerance = lr_tolerance(data)
    metric, higher = ranking(trials)
    numeric_lr = "lr" in trials and pd.api.types.is_numeric_dtype(trials["lr"])
    if trials.empty or metric is None or not numeric_lr:
        return []
    ended = trials[trials["status"].isin(ENDED) & (trials["lr"] > 0)]
    spikes = _spikes(data)
    finished = ended["status"] == TrialStatus.FINISHED.value
    if by == "objective":
        order = axis_values(ended[by], by)
    else:  # cells objective-major in the paper's order, as in the ablation table
        firsts = ended.drop_duplicates(by).sort_values(["objective", "fusion", "decoder"], key=in_axis_order)
        order = list(firsts[by])
    verdicts = []
    for name in order:
        group = ended[ended[by] == name]
        scores = group[metric].where(finished[group.index])
        label = stats.OBJECTIVE_LABEL.get(name, name) if by == "objective" else name
        verdicts.append(stats.lr_verdict(
            label, metric, group["lr"], scores, group["status"] == TrialStatus.DIVERGED.value,
            group["trial_id"].map(spikes).fillna(0).astype(int), higher_is_better=higher,
            tolerance=tolerance))
    return verdicts


def _spikes(data: StudyData) -> pd.Series:
    """Grad-norm spikes per trial id (stats.grad_norm_spikes over its logged train/grad_norm)."""
    curves = data.curves
    if curves.empty or TRAIN_GRAD_NORM not in curves:
        return pd.Series(dtype=int)
    ordered = curves.sort_values("step")
    return ordered.groupby("trial_id")[TRAIN_GRAD_NORM].apply(lambda s: stats.grad_norm_spikes(s.to_numpy()))


def gain_text(diff: stats.Interval) -> str:
    """'+0.063 [0.006, 0.120] ↑': a signed difference, with an arrow where its 95% interval excludes 0."""
    if diff.n == 0:
        return "—"
    arrow = " ↑" if diff.has_interval and diff.lo > 0 else " ↓" if diff.has_interval and diff.hi < 0 else ""
    return ("+" if diff.mean >= 0 else "") + diff.text() + arrow


def gains_lines(data: StudyData) -> list[str]:
    """The answer a sweep prints at its end: each cell's gain over the random-init encoder per probe score,
    and the raw input's scores beside them (a probe the raw input already solves cannot show learning)."""
    gains = gains_over_random_init(data)
    if not gains:
        return []
    names = {column: modality for modality, column in score_columns(data.trials).items()}
    width = max(len(cell) for cell in gains)
    lines = ["Gain over the random-init encoder, paired by seed (mean [95% interval], ↑ if it excludes 0):"]
    lines += [f"  {cell.ljust(width)}  " + "   ".join(f"{names.get(column, column)} {gain_text(c.diff)}"
                                                  for column, c in by_column.items())
              for cell, by_column in gains.items()]
    raw = baseline_rows(data).get("raw_input", {})
    if raw:
        scores = " · ".join(f"{name} {raw[c].mean:.3f}" for c, name in names.items() if c in raw)
        lines.append(f"Raw input: {scores} (where it is already high, that probe cannot show learning)")
    return lines + unsettled_lines(unsettled_gains(data), names)


def unsettled_lines(unsettled: list[Unsettled], names: dict[str, str]) -> list[str]:
    """'Not settled: ...' with each open gain's plan, and how many seeds per configuration settle them all."""
    if not unsettled:
        return []
    lines = ["Not settled (interval includes 0) — seeds per cell to find each gain as measured, 80% power:"]
    lines += [f"  {u.cell} {names.get(u.column, u.column)} {gain_text(u.gain)} (n = {u.gain.n}): "
              f"{u.needed.text()}" for u in unsettled]
    settle = seeds_to_settle(unsettled)
    beyond = sum(u.needed.capped for u in unsettled)
    if settle is not None:
        lines.append(f"Seeds per configuration that settle them: {settle}"
                     + (f" ({beyond} would need more than the plan's cap)." if beyond else "."))
    return lines


@dataclass(frozen=True)
class Leads:
    """The leading cell (the best mean primary probe score) and, for every other cell, P(leader > cell) per
    probe score column, paired by seed (`robust.improvement_paired`)."""

    leader: str
    against: dict[str, dict[str, robust.Improvement]]


def leads(data: StudyData, cells: pd.DataFrame | None = None) -> Leads | None:
    """The leader's probability of improvement over each other cell it shares two seeds or more with; None
    where there is no such cell."""
    scores = score_columns(data.trials)
    if not scores:
        return None
    cells = cell_summary(data) if cells is None else cells
    primary = next(iter(scores))
    ranked = cells[cells[primary].notna()].sort_values(primary, ascending=False)
    if len(ranked) < 2:
        return None
    lead = ranked.iloc[0]
    against = {row["cell"]: {column: robust.improvement_paired(lead[f"by_repeat:{m}"], row[f"by_repeat:{m}"],
                                                               lead["cell"], row["cell"])
                             for m, column in scores.items()}
               for _, row in ranked.iloc[1:].iterrows()}
    against = {cell: by for cell, by in against.items() if max(i.probability.n for i in by.values()) >= 2}
    return Leads(lead["cell"], against) if against else None


def leads_lines(data: StudyData, cells: pd.DataFrame | None = None) -> list[str]:
    """'P(leader > cell), paired by seed' per other cell and probe score; nothing without two seeds."""
    found = leads(data, cells)
    if found is None:
        return []
    names = {column: modality for modality, column in score_columns(data.trials).items()}
    width = max(len(cell) for cell in found.against)
    lines = [f"P({found.leader} > another cell), paired by seed (95% Wilson interval):"]
    lines += [f"  > {cell.ljust(width)}  " + "   ".join(f"{names.get(c, c)} {i.probability.text(2)}"
                                                    for c, i in by_column.items())
              + f"  (n = {max(i.probability.n for i in by_column.values())})"
              for cell, by_column in found.against.items()]
    return lines
