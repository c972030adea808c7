"""One plotly figure per question a study has to answer. Each takes a `StudyData` and never raises on thin
data: a panel with nothing to show says why instead.

Traces carry `meta` (trial id, metric, role) so the figures can be checked by their data, not their pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from avmae.dashboards import robust
from avmae.dashboards.collect import (
    CELL_AXES,
    StudyData,
    axis_values,
    loss_metric,
    primary_score,
    score_columns,
)
from avmae.dashboards.importance import NotEnoughTrials, param_importances
from avmae.dashboards.power import SeedsNeeded
from avmae.dashboards.stats import (
    Best,
    Comparison,
    Interval,
    lr_verdict,
    mean_ci,
    score_bounds,
    stability_sentence,
)
from avmae.dashboards.summary import (
    CONFIG,
    STATUSES,
    cell_axes,
    cell_summary,
    configurations,
    searched_params,
    status_counts,
)
from avmae.dashboards.verdicts import (
    BASELINE_LABEL,
    Leads,
    baseline_rows,
    best_cells,
    gain_text,
    gains_over_random_init,
    leads,
    lr_verdicts,
    unsettled_gains,
)
from avmae.platform.tracking import layout as T
from plotly.colors import sample_colorscale, sequential
from plotly.subplots import make_subplots

FINISHED, PRUNED, DIVERGED, FAILED, RUNNING, INTERRUPTED = (
    T.TrialStatus.FINISHED.value, T.TrialStatus.PRUNED.value, T.TrialStatus.DIVERGED.value,
    T.TrialStatus.FAILED.value, T.TrialStatus.RUNNING.value, T.TrialStatus.INTERRUPTED.value,
)
STATUS_COLOR = {FINISHED: "#2a9d5c", PRUNED: "#f28e2b", DIVERGED: "#d62728", FAILED: "#7f7f7f",
                RUNNING: "#4e79a7", INTERRUPTED: "#b07aa1"}
STATUS_DASH = {FINISHED: "solid", PRUNED: "dot", DIVERGED: "solid", FAILED: "dashdot", RUNNING: "dash",
               INTERRUPTED: "longdash"}
DIVERGED_MARKER = {"symbol": "x-thin-open", "size": 14, "color": STATUS_COLOR[DIVERGED],
                   "line": {"width": 3, "color": STATUS_COLOR[DIVERGED]}}
LR_SCALE = sequential.Plasma[:-2]  # without the pale yellow end, every line stays visible on white
SCORE_SCALE = sequential.Blues[2:]
TEMPLATE = "plotly_white"
LOG_TICKS = [m * 10.0**k for k in range(-4, 5) for m in (1, 2, 5)]  # plain 0.2 / 0.5 / 1 labels on log axes
MODALITY_LABEL = {"av": "AV", "audio": "A", "video": "V"}
GAIN_LABEL = "Δ vs random init"  # the ablation table's rows: pretrained - random init, paired by seed
IQM_LABEL = "IQM"  # the ablation table's rows: interquartile mean over seeds (rliable), from 5 seeds
PANEL_HEIGHT = 260


def learning_curves(data: StudyData) -> go.Figure:
    """How did pretraining go? Loss per trial vs step (train) or epoch (val), coloured by learning rate,
    faceted by objective (columns) and fusion (rows); a dropdown picks total, audio or video loss."""
    views = [(m, data.curves, "step") for m in (T.TRAIN_LOSS, T.TRAIN_LOSS_AUDIO, T.TRAIN_LOSS_VIDEO)
             if m in data.curves] + \
            [(m, data.epochs, "epoch") for m in (T.VAL_LOSS, T.VAL_LOSS_AUDIO, T.VAL_LOSS_VIDEO)
             if m in data.epochs]
    title = "Learning curves"
    if not views:
        return _empty(title, "no training loss logged yet")
    trials = data.trials.set_index("trial_id")
    objectives = axis_values(trials["objective"], "objective")
    fusions = axis_values(trials["fusion"], "fusion")
    fig = make_subplots(
        rows=len(fusions), cols=len(objectives), shared_xaxes=True, shared_yaxes="rows",
        column_titles=[f"objective={o}" for o in objectives], row_titles=[f"fusion={f}" for f in fusions],
        vertical_spacing=0.06, horizontal_spacing=0.05,
    )
    lrs = trials["lr"] if "lr" in trials else pd.Series(dtype=float)
    for metric, frame, x in views:
        _curve_traces(fig, trials, frame, metric, x, visible=metric == views[0][0], color=_lr_colors(lrs),
                      cells=(fusions, objectives))
    _status_legend(fig, trials)
    fig.add_trace(_lr_colorbar(lrs))
    for r, fusion in enumerate(fusions, start=1):
        for c, objective in enumerate(objectives, start=1):
            if not ((trials["fusion"] == fusion) & (trials["objective"] == objective)).any():
                _note(fig, "not run", r, c)
    _curve_layout(fig, title, views, fusions, objectives)
    return fig


def _curve_traces(fig: go.Figure, trials: pd.DataFrame, frame: pd.DataFrame, metric: str, x: str,
                  visible: bool, color: Any, cells: tuple[list[str], list[str]]) -> None:
    """One line per trial of `metric` vs `x` in its (fusion, objective) panel, and a ✕ where it diverged."""
    fusions, objectives = cells
    legend_shown = False
    for trial_id, points in frame.dropna(subset=[metric]).groupby("trial_id", sort=False):
        trial = trials.loc[trial_id]
        row, col = fusions.index(trial["fusion"]) + 1, objectives.index(trial["objective"]) + 1
        lr = trial.get("lr", math.nan)
        fig.add_trace(go.Scatter(
            x=points[x], y=points[metric], mode="lines", showlegend=False, visible=visible,
            line={"color": color(lr), "dash": STATUS_DASH.get(trial["status"], "solid"), "width": 1.5},
            name=f"trial {trial_id}", meta={"role": "curve", "trial_id": trial_id, "metric": metric},
            hovertemplate=f"trial {trial_id} ({trial['status']})<br>{trial['cell']}<br>lr={_fmt(lr)}"
                          f"<br>{x}=%{{x}}<br>{metric}=%{{y:.4f}}<extra></extra>",
        ), row=row, col=col)
        if trial["status"] == DIVERGED:
            at = trial["diverged_step"] if x == "step" else points[x].iloc[-1]
            fig.add_trace(go.Scatter(
                x=[at], y=[points[metric].iloc[-1]], mode="markers", visible=visible,
                marker=DIVERGED_MARKER, name="diverged", legendgroup=DIVERGED,
                showlegend=not legend_shown,
                meta={"role": "diverged", "trial_id": trial_id, "metric": metric},
                hovertemplate=f"trial {trial_id} diverged at step {trial['diverged_step']:.0f}"
                              f"<br>lr={_fmt(lr)}<br>last finite {metric}=%{{y:.4f}}<extra></extra>",
            ), row=row, col=col)
            legend_shown = True


def _status_legend(fig: go.Figure, trials: pd.DataFrame) -> None:
    """Legend entries that explain the line styles of the statuses present."""
    for status in STATUSES:
        if status != DIVERGED and (trials["status"] == status).any():
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"{status} trial",
                                     line={"color": "#555", "dash": STATUS_DASH[status]}))


def _curve_layout(fig: go.Figure, title: str, views: list[tuple[str, pd.DataFrame, str]], fusions: list[str],
                  objectives: list[str]) -> None:
    """Log loss axes, the x title of the bottom row, and the dropdown that shows one metric at a time."""
    bottom = [fig.get_subplot(len(fusions), c + 1).xaxis.plotly_name for c in range(len(objectives))]
    heading = "{} per trial vs {}, colour = learning rate, ✕ = diverged"
    buttons = [
        {"label": metric, "method": "update",
         "args": [{"visible": [_view(t) in (None, metric) for t in fig.data]},
                  {"title.text": f"{title}: {heading.format(metric, x)}",
                   **{f"{axis}.title.text": x for axis in bottom}}]}
        for metric, _, x in views
    ]
    fig.update_yaxes(type="log", tickvals=LOG_TICKS)
    for axis in bottom:
        fig.layout[axis].title.text = views[0][2]
    fig.update_yaxes(title_text="loss (log)", col=1)
    fig.update_layout(
        title=f"{title}: {heading.format(views[0][0], views[0][2])}",
        height=120 + PANEL_HEIGHT * len(fusions),
        updatemenus=[{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.08, "yanchor": "bottom"}],
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
        margin={"t": 110}, template=TEMPLATE,
    )


def lr_stability(data: StudyData) -> go.Figure:
    """Is the objective stable over learning rates (the paper's Fig. 4)? The verdict sentence on top (stable
    LR window, divergences, grad-norm spikes, best score with its interval), then per objective: final loss
    and probe score vs lr on a log axis, the mean per lr with its 95% interval over finished trials, one
    marker per configuration (mean over its seeds), pruned runs hollow, diverged runs ✕; per-cell verdicts
    in the table below."""
    trials = data.trials
    title = "Learning-rate stability"
    if "lr" not in trials or not pd.api.types.is_numeric_dtype(trials["lr"]) or not (trials["lr"] > 0).any():
        return _empty(title, "no trial has a numeric learning rate yet")
    lrs = sorted(set(trials.loc[trials["lr"] > 0, "lr"]))
    if len(lrs) == 1:
        return _empty(title, f"this study asked no learning-rate question: every trial ran at base lr "
                             f"{lrs[0]:g}")
    trials = trials[trials["lr"] > 0].assign(**{CONFIG: configurations(data)})
    objectives = axis_values(trials["objective"], "objective")
    loss, score = loss_metric(trials), primary_score(trials)
    rows = [(f"final {loss}", loss, "top")] + ([(score, score, "bottom")] if score else [])
    per_cell = lr_verdicts(data, by="cell")
    table_px = 60 + 26 * len(per_cell)
    fig = make_subplots(
        rows=len(rows) + 1, cols=len(objectives), vertical_spacing=0.08, horizontal_spacing=0.06,
        row_heights=[300] * len(rows) + [table_px],
        specs=[[{"type": "xy"}] * len(objectives) for _ in rows]
        + [[{"type": "table", "colspan": len(objectives)}] + [None] * (len(objectives) - 1)],
        column_titles=[f"objective={o}" for o in objectives])
    for c, objective in enumerate(objectives, start=1):
        group = trials[trials["objective"] == objective]
        for r, (label, metric, diverged_at) in enumerate(rows, start=1):
            _stability_panel(fig, group, metric, diverged_at, r, c)
            fig.update_yaxes(title_text=label if c == 1 else None, row=r, col=c)
            fig.update_xaxes(type="log", tickformat=".0e", dtick="D2", matches="x", row=r, col=c)
    fig.update_xaxes(title_text="learning rate (log)", row=len(rows))
    fig.add_trace(go.Table(
        header={"values": ["cell", "verdict per cell"], "fill_color": "#e8edf3", "align": "left"},
        cells={"values": [[_cell_label(v.label) for v in per_cell],
                          [v.sentence().split(": ", 1)[1] for v in per_cell]],
               "align": "left"}, columnwidth=[20, 80], meta={"role": "cell_verdicts"},
    ), row=len(rows) + 1, col=1)
    sentence = stability_sentence(lr_verdicts(data)) or "no verdict: no trial has ended yet"
    left_out = trials[~trials["status"].isin([FINISHED, PRUNED, DIVERGED])]
    note = f" — not shown: {status_counts(left_out)} (no final value)" if len(left_out) else ""
    fig.add_annotation(text=_wrap(sentence), x=0, y=1.0, xref="paper", yref="paper", yanchor="bottom",
                       xanchor="left", yshift=36,
                       align="left", showarrow=False, font={"size": 13}, name="verdict")
    fig.update_layout(title={"text": f"{title}: mean and 95% interval over finished trials per lr{note}",
                             "y": 1, "yref": "container", "yanchor": "top", "pad": {"t": 16}},
                      height=260 + 300 * len(rows) + table_px, margin={"t": 200},
                      legend={"orientation": "h", "y": -0.06}, template=TEMPLATE, meta={"verdict": sentence})
    return fig


def _wrap(sentence: str) -> str:
    """The verdict sentence, one objective per line (the clauses stay one sentence, joined by ';')."""
    return ";<br>".join(clause for clause in sentence.split("; ") if clause)


def _stability_panel(fig: go.Figure, group: pd.DataFrame, metric: str, diverged_at: str, row: int, col: int
                     ) -> None:
    """One objective's `metric` vs lr: the per-lr mean of finished trials, each finished configuration, the
    pruned trials, and the diverged ones drawn in a band beyond the data."""
    has_value = group[metric].notna() if metric in group else pd.Series(False, index=group.index)
    finished = group[(group["status"] == FINISHED) & has_value]
    if len(finished):
        fig.add_trace(_lr_means(fig, group, metric), row=row, col=col)
        fig.add_trace(_finished_configurations(fig, finished, metric), row=row, col=col)
    points = group[(group["status"] == PRUNED) & has_value]
    if len(points):
        fig.add_trace(go.Scatter(
            x=points["lr"], y=points[metric], mode="markers", name=f"{PRUNED} trial",
            marker={"symbol": "circle-open", "size": 8, "color": STATUS_COLOR[PRUNED], "opacity": 0.8},
            showlegend=_once(fig, PRUNED), legendgroup=PRUNED, customdata=points["trial_id"],
            meta={"role": PRUNED, "metric": metric},
            hovertemplate="trial %{customdata}<br>lr=%{x:.3g}<br>" + metric + "=%{y:.4f}<extra></extra>",
        ), row=row, col=col)
    diverged = group[group["status"] == DIVERGED]
    if len(diverged):
        y = _band(group.loc[has_value & group["status"].isin([FINISHED, PRUNED]), metric], diverged_at)
        fig.add_trace(_diverged_band(fig, diverged, metric, y, diverged_at), row=row, col=col)
    if not has_value.any() and not len(diverged):
        _note(fig, f"no {metric} yet", row, col)


def _lr_means(fig: go.Figure, group: pd.DataFrame, metric: str) -> go.Scatter:
    """The per-lr mean of finished trials with its 95% interval: the same binning as the verdict
    (`stats.lr_verdict`), so the line and the sentence agree."""
    ended = group[group["status"].isin([FINISHED, PRUNED, DIVERGED])]
    scores = ended[metric].where(ended["status"] == FINISHED)
    verdict = lr_verdict("", metric, ended["lr"], scores, ended["status"] == DIVERGED,
                         higher_is_better=metric.startswith(T.PROBE_PREFIX))
    points = [p for p in verdict.points if p.score.n]
    mean = np.array([p.score.mean for p in points])
    upper = np.array([p.score.hi - p.score.mean if p.score.has_interval else 0.0 for p in points])
    lower = np.array([p.score.mean - p.score.lo if p.score.has_interval else 0.0 for p in points])
    return go.Scatter(
        x=[p.lr for p in points], y=mean, mode="lines+markers", name="mean of finished trials, 95% CI",
        line={"color": "#333"}, marker={"size": 6}, showlegend=_once(fig, "mean"), legendgroup="mean",
        error_y={"type": "data", "symmetric": False, "array": upper, "arrayminus": lower, "color": "#999"},
        customdata=[[p.score.n, p.n_diverged, p.n_trials, p.spikes] for p in points],
        meta={"role": "mean", "metric": metric},
        hovertemplate="lr≈%{x:.3g}<br>mean=%{y:.4f}<br>n=%{customdata[0]} finished<br>"
                      "diverged %{customdata[1]}/%{customdata[2]}<br>grad-norm spikes %{customdata[3]}"
                      "<extra></extra>",
    )


def _finished_configurations(fig: go.Figure, finished: pd.DataFrame, metric: str) -> go.Scatter:
    """One marker per finished configuration: its mean over seeds with the 95% interval."""
    configs = [(config, mean_ci(runs[metric], bounds=score_bounds(metric)), runs)
               for config, runs in finished.groupby(CONFIG, sort=False)]
    return go.Scatter(
        x=[t["lr"].iloc[0] for _, _, t in configs], y=[ci.mean for _, ci, _ in configs], mode="markers",
        name="finished configuration (mean over seeds)",
        marker={"symbol": "circle", "size": 8, "color": STATUS_COLOR[FINISHED], "opacity": 0.8},
        error_y={"type": "data", "symmetric": False, "color": STATUS_COLOR[FINISHED],
                 "array": [ci.hi - ci.mean if ci.has_interval else 0.0 for _, ci, _ in configs],
                 "arrayminus": [ci.mean - ci.lo if ci.has_interval else 0.0 for _, ci, _ in configs]},
        showlegend=_once(fig, FINISHED), legendgroup=FINISHED,
        customdata=[[", ".join(t["trial_id"].astype(str)), ci.n, ci.text()] for _, ci, t in configs],
        meta={"role": FINISHED, "metric": metric},
        hovertemplate="trial(s) %{customdata[0]}<br>lr=%{x:.3g}<br>" + metric
                      + "=%{customdata[2]}<br>n=%{customdata[1]} seed(s)<extra></extra>",
    )


def _diverged_band(fig: go.Figure, diverged: pd.DataFrame, metric: str, y: float, where: str) -> go.Scatter:
    """Diverged trials have no final value: a ✕ per trial at `y`, labelled, with the step it diverged at."""
    steps = diverged["diverged_step"].fillna(-1).astype(int)
    return go.Scatter(
        x=diverged["lr"], y=[y] * len(diverged), mode="markers+text", name="diverged (no final value)",
        text=["diverged"] * len(diverged), textfont={"color": STATUS_COLOR[DIVERGED], "size": 10},
        textposition="bottom center" if where == "top" else "top center",
        marker=DIVERGED_MARKER, showlegend=_once(fig, DIVERGED), legendgroup=DIVERGED,
        meta={"role": DIVERGED, "metric": metric},
        customdata=np.stack([diverged["trial_id"].astype(str), steps], axis=-1),
        hovertemplate="trial %{customdata[0]} diverged at step %{customdata[1]}"
                      "<br>lr=%{x:.3g}<extra></extra>",
    )


def _band(values: pd.Series, where: str) -> float:
    """A y just above (or below) the panel's data, where trials without a value are drawn."""
    if values.empty:
        return 1.0 if where == "top" else 0.0
    span = float(values.max() - values.min()) or abs(float(values.max())) or 1.0
    return float(values.max() + 0.15 * span) if where == "top" else float(values.min() - 0.15 * span)


def ablation_table(data: StudyData) -> go.Figure:
    """Which encoder fusion x decoder works best? One panel per objective; each cell shows its best
    configuration's mean AV / audio-only / video-only probe scores over its seeds, with the 95% interval of
    the primary one. A cell is boxed only where it beats every other cell of its objective significantly
    (paired by seed, Holm-corrected); otherwise the panel says 'no significant difference at n = ...'. The
    table below lists every cell's means and intervals with n, and the reference rows (random-init encoder,
    raw input) where the study logged them, and then each cell's gain over the random-init encoder (paired
    by seed: did pretraining learn anything a probe reads?), the leader's P(A > B) over each other cell and,
    from 5 seeds, each cell's IQM."""
    title = "Ablation: fusion × decoder"
    trials = data.trials
    if trials.empty:
        return _empty(title, "no trials yet")
    scores = score_columns(trials)
    modality = next(iter(scores), None)  # the primary score's modality: AV when logged
    summary = cell_summary(data)
    best = best_cells(data, summary)
    cells = _one_per_square(summary, modality)
    objectives = axis_values(trials["objective"], "objective")
    axes = axis_values(trials["fusion"], "fusion"), axis_values(trials["decoder"], "decoder")
    grids = {o: _score_grid(cells, modality, o, *axes) for o in objectives}
    finite = np.concatenate([g[np.isfinite(g)] for g in grids.values()])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 0.01  # one score still needs a colour range
    verdict = {o: _verdict_text(best[o], summary) if o in best else "" for o in objectives}
    table = _table(data, summary, scores, best)
    table_px, grid_px = 60 + 26 * len(table.cells.values[0]), 110 * len(axes[0]) + 60
    fig = make_subplots(
        rows=2, cols=len(objectives), row_heights=[grid_px, table_px], horizontal_spacing=0.08,
        vertical_spacing=90 / (grid_px + table_px + 90),
        specs=[[{"type": "xy"}] * len(objectives),
               [{"type": "table", "colspan": len(objectives)}] + [None] * (len(objectives) - 1)],
        subplot_titles=[f"objective={o}<br><sub>{verdict[o]}</sub>" for o in objectives] + [""])
    for c, objective in enumerate(objectives, start=1):
        winner = best[objective].winner if objective in best else None
        _ObjectivePanel(objective, grids[objective], verdict[objective], *axes, col=c).draw(
            fig, cells, scores, (lo, hi), winner, summary)
    fig.add_trace(table, row=2, col=1)
    fig.update_yaxes(title_text="encoder fusion", row=1, col=1)
    ranked_by = scores.get(modality) or loss_metric(trials)
    fig.update_layout(
        title=f"{title}: best configuration per cell by mean {ranked_by} over seeds, 95% interval "
              "(boxed only where significantly best)",
        coloraxis={"colorscale": SCORE_SCALE, "cmin": lo, "cmax": hi, "showscale": bool(finite.size),
                   "colorbar": {"title": {"text": scores.get(modality)},
                                "len": grid_px / (grid_px + table_px),
                                "y": 1, "yanchor": "top"}},
        height=grid_px + table_px + 190, margin={"t": 130}, template=TEMPLATE,
    )
    return fig


def _table(data: StudyData, summary: pd.DataFrame, scores: dict[str, str], best: dict[str, Best]) -> go.Table:
    """The table under the panels (`_ablation_rows`), from the study's verdicts."""
    plans = {(u.cell, u.column): u.needed for u in unsettled_gains(data, summary)}
    return _ablation_rows(summary, scores, baseline_rows(data), best, gains_over_random_init(data, summary),
                          plans, leads(data, summary))


def _one_per_square(summary: pd.DataFrame, modality: str | None) -> pd.DataFrame:
    """Cells indexed by (fusion, decoder, objective); cells that differ on a further axis share a square, and
    the best of them by the primary score shows."""
    cells = summary.sort_values(modality, ascending=False, na_position="last") if modality else summary
    return cells.drop_duplicates(list(CELL_AXES)).set_index(list(CELL_AXES))


def _score_grid(cells: pd.DataFrame, modality: str | None, objective: str, fusions: list[str],
                decoders: list[str]) -> np.ndarray:
    """The primary score of each (fusion, decoder) square of one objective; NaN where no cell ran."""
    return np.array([[cells.loc[(f, d, objective), modality]
                      if modality and (f, d, objective) in cells.index else np.nan
                      for d in decoders] for f in fusions], dtype=float)


@dataclass(frozen=True)
class _ObjectivePanel:
    """One objective's fusion x decoder heatmap in column `col` of the ablation figure."""

    objective: str
    z: np.ndarray
    verdict: str
    fusions: list[str]
    decoders: list[str]
    col: int

    def draw(self, fig: go.Figure, cells: pd.DataFrame, scores: dict[str, str], span: tuple[float, float],
             winner: str | None, summary: pd.DataFrame) -> None:
        """The scores as colour, each square's text, and a box around the significantly best cell."""
        lo, hi = span
        fig.add_trace(go.Heatmap(
            x=self.decoders, y=self.fusions, z=self.z, coloraxis="coloraxis", xgap=3, ygap=3,
            hoverinfo="skip",
            meta={"role": "scores", "objective": self.objective},
        ), row=1, col=self.col)
        xs, ys = np.meshgrid(self.decoders, self.fusions)
        dark = np.nan_to_num((self.z - lo) / (hi - lo or 1.0)) > 0.6  # white text on the darker cells
        fig.add_trace(go.Scatter(
            x=xs.ravel(), y=ys.ravel(), mode="text", showlegend=False, hoverinfo="text",
            text=[_cell_text(cells, (f, d, self.objective), scores)
                  for f in self.fusions for d in self.decoders],
            textfont={"size": 12, "color": np.where(dark.ravel(), "white", "#222")},
            meta={"role": "cell_text", "objective": self.objective, "verdict": self.verdict},
        ), row=1, col=self.col)
        if winner is not None:
            f, d = (summary.set_index("cell").loc[winner, axis] for axis in ("fusion", "decoder"))
            i, j = self.fusions.index(f), self.decoders.index(d)
            fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5, row=1, col=self.col,
                          line={"color": "#e15759", "width": 4}, name=f"best:{f},{d}")
        fig.update_xaxes(title_text="decoder", row=1, col=self.col)
        fig.update_yaxes(autorange="reversed", row=1, col=self.col)


def _verdict_text(best: Best, cells: pd.DataFrame) -> str:
    """The panel's verdict with cell keys written as 'mid · shared · joint'."""
    labels = dict(zip(cells["cell"], _labels(cells), strict=True))
    if best.winner is None:
        return best.text
    return best.text.replace(best.winner, f"best: {labels[best.winner]}")


def _cell_text(cells: pd.DataFrame, key: tuple[str, str, str], scores: dict[str, str]) -> str:
    if key not in cells.index:
        return "not run"
    cell = cells.loc[key]
    count = f"{cell['n_trials']} trials ({cell['n_finished']} finished)"
    if pd.isna(cell["best_trial"]):
        return f"{cell['why_empty']}<br>{count}"
    values = [m for m in scores if not pd.isna(cell[m])]
    if not values:
        return f"no probe score yet<br>best by loss: trial {cell['best_trial']}<br>{count}"
    primary = f"<b>{MODALITY_LABEL[values[0]]} {cell[f'ci:{values[0]}'].text()}</b>"
    others = " · ".join(f"{MODALITY_LABEL[m]} {cell[m]:.3f}" for m in values[1:])
    seeds = f"best config: n = {cell['n_repeats']} seed{'' if cell['n_repeats'] == 1 else 's'}"
    return f"{primary}<br>{others}<br>{seeds} · {count}"


def _ablation_rows(cells: pd.DataFrame, scores: dict[str, str], baselines: dict[str, dict[str, Interval]],
                   best: dict[str, Best], gains: dict[str, dict[str, Comparison]],
                   plans: dict[tuple[str, str], SeedsNeeded], lead: Leads | None = None) -> go.Table:
    """Every cell's best configuration (mean [95% interval] per score, n seeds), then the reference rows, then
    each cell's gain over the random-init encoder (paired by seed; ↑ where its interval lies above 0), with
    the seeds per cell that would settle a gain its interval leaves open (`plans`); then the leading cell's
    probability of improvement over each other cell, and the IQM of every cell with 5 seeds or more."""
    winners = {b.winner for b in best.values()}
    labels = _labels(cells)
    rows = [(("★ " if cell in winners else "") + label, n, [cells.loc[i, f"ci:{m}"].text() for m in scores])
            for i, (cell, label, n) in enumerate(zip(cells["cell"], labels, cells["n_repeats"], strict=True))]
    for baseline, by_probe in baselines.items():
        intervals = [by_probe.get(column, mean_ci([])) for column in scores.values()]
        rows.append((f"baseline: {BASELINE_LABEL.get(baseline, baseline)}",
                     max(i.n for i in intervals), [i.text() for i in intervals]))
    for cell, label in zip(cells["cell"], labels, strict=True):
        if cell in gains:
            diffs = [gains[cell][column].diff if column in gains[cell] else mean_ci([])
                     for column in scores.values()]
            texts = [gain_text(d) + _plan_text(plans.get((cell, column)))
                     for d, column in zip(diffs, scores.values(), strict=True)]
            rows.append((f"{GAIN_LABEL}: {label}", max(d.n for d in diffs), texts))
    rows += _lead_rows(cells, labels, scores, lead) + _iqm_rows(cells, labels, scores)
    columns = {
        "fusion · decoder · objective": [r[0] for r in rows],
        "n (seeds)": [str(r[1]) for r in rows],
        **{f"{scores[m]} mean [95% CI]": [r[2][j] for r in rows] for j, m in enumerate(scores)},
    }
    shade = ["#f4f1e8" if label.startswith("baseline: ") else "#eef4ec" if label.startswith(GAIN_LABEL)
             else "#f1eef6" if label.startswith(("P(", IQM_LABEL)) else "white"
             for label in columns["fusion · decoder · objective"]]
    return go.Table(header={"values": list(columns), "fill_color": "#e8edf3", "align": "left"},
                    cells={"values": list(columns.values()), "align": "left", "fill_color": [shade]},
                    columnwidth=[38, 10, *([34] * len(scores))], meta={"role": "ablation_rows"})


def _lead_rows(cells: pd.DataFrame, labels: list[str], scores: dict[str, str], lead: Leads | None
               ) -> list[tuple[str, int, list[str]]]:
    """'P(leader > cell)' per other cell, paired by seed (`verdicts.leads`: where they share two seeds)."""
    if lead is None:
        return []
    names = dict(zip(cells["cell"], labels, strict=True))
    rows = []
    for cell, by_column in lead.against.items():
        chances = [by_column[column].probability for column in scores.values()]
        rows.append((f"P({names[lead.leader]} > {names[cell]})", max(p.n for p in chances),
                     [p.text(2) for p in chances]))
    return rows


def _iqm_rows(cells: pd.DataFrame, labels: list[str], scores: dict[str, str]
              ) -> list[tuple[str, int, list[str]]]:
    """Each cell's IQM over its seeds with rliable's bootstrap interval, beside the mean, from 5 seeds."""
    rows = []
    for i, (label, n) in enumerate(zip(labels, cells["n_repeats"], strict=True)):
        if n >= robust.MIN_IQM_N:
            texts = [robust.iqm_ci(list(cells.loc[i, f"by_repeat:{m}"].values())).text() for m in scores]
            rows.append((f"{IQM_LABEL}: {label}", int(n), texts))
    return rows


def _plan_text(plan: SeedsNeeded | None) -> str:
    """' · 11 seeds settle it' after an open gain, ' · >100 seeds' past the plan's cap, else nothing."""
    if plan is None or plan.n is None:
        return ""
    return f" · >{plan.n} seeds" if plan.capped else f" · {plan.n} seeds settle it"


def masking_ratios(data: StudyData) -> go.Figure:
    """Which audio/video masking ratios work? Each configuration at (audio ratio, video ratio), coloured by
    its probe score (the mean over its seeds), one panel per objective; trials without a score are grey
    symbols by status."""
    title = "Masking ratios"
    trials = data.trials
    axes = ("mask_ratio_audio", "mask_ratio_video")
    if any(a not in trials or not pd.api.types.is_numeric_dtype(trials[a]) for a in axes) or trials.empty:
        return _empty(title, "the trials log no numeric mask_ratio_audio / mask_ratio_video")
    trials = trials.assign(**{CONFIG: configurations(data)})
    score = primary_score(trials)
    objectives = axis_values(trials["objective"], "objective")
    fig = make_subplots(rows=1, cols=len(objectives), subplot_titles=[f"objective={o}" for o in objectives],
                        shared_yaxes=True, horizontal_spacing=0.05)
    for c, objective in enumerate(objectives, start=1):
        group = trials[trials["objective"] == objective]
        scored = group[(group["status"] == FINISHED) & group[score].notna()] if score else group[:0]
        if len(scored):
            configs = [(runs.iloc[0], mean_ci(runs[score], bounds=score_bounds(score)), runs)
                       for _, runs in scored.groupby(CONFIG, sort=False)]
            fig.add_trace(go.Scatter(
                x=[first[axes[0]] for first, _, _ in configs], y=[first[axes[1]] for first, _, _ in configs],
                mode="markers", name="finished (colour = mean score over seeds)",
                marker={"color": [ci.mean for _, ci, _ in configs], "coloraxis": "coloraxis", "size": 13,
                        "line": {"width": 1, "color": "#333"}},
                customdata=[[", ".join(runs["trial_id"].astype(str)), first["cell"], ci.text()]
                            for first, ci, runs in configs],
                showlegend=_once(fig, "scored"), legendgroup="scored",
                meta={"role": "scored", "objective": objective},
                hovertemplate="trial(s) %{customdata[0]}<br>%{customdata[1]}<br>audio mask=%{x:.2f}"
                              "<br>video mask=%{y:.2f}<br>" + score + "=%{customdata[2]}<extra></extra>",
            ), row=1, col=c)
        unscored = group.drop(scored.index)
        for status, points in unscored.groupby("status", sort=False):
            fig.add_trace(go.Scatter(
                x=points[axes[0]], y=points[axes[1]], mode="markers", name=f"{status} (no score)",
                marker={"symbol": "x-thin-open" if status == DIVERGED else "circle-open", "size": 11,
                        "color": STATUS_COLOR.get(status, "#999"),
                        "line": {"width": 2, "color": STATUS_COLOR.get(status, "#999")}},
                legendgroup=status, showlegend=_once(fig, status), customdata=points["trial_id"].astype(str),
                meta={"role": status, "objective": objective},
                hovertemplate="trial %{customdata} (" + status + ")<br>audio mask=%{x:.2f}"
                              "<br>video mask=%{y:.2f}<extra></extra>",
            ), row=1, col=c)
        fig.update_xaxes(title_text="audio mask ratio", row=1, col=c)
    fig.update_yaxes(title_text="video mask ratio", col=1)
    fig.update_layout(title=f"{title}: audio vs video, colour = {score or 'no probe score yet'}",
                      coloraxis={"colorscale": SCORE_SCALE, "colorbar": {"title": {"text": score}}},
                      height=460, legend={"orientation": "h", "y": -0.2}, template=TEMPLATE)
    return fig


def parallel_coordinates(data: StudyData) -> go.Figure:
    """How do the searched parameters go with the study's metric and the probe scores? One line per finished
    configuration (means over its seeds) across the cell axes, the searched parameters (log scale where
    they span a decade, like lr), the metric the search optimised and every probe score; colour = the
    primary score. Dragging along an axis filters the lines."""
    title = "Searched parameters vs the study metric and the probes"
    trials = data.trials
    finished = trials[trials["status"] == FINISHED] if len(trials) else trials
    if finished.empty:
        return _empty(title, "no finished trial yet")
    finished = finished.assign(**{CONFIG: configurations(data)[finished.index]})
    metric = data.settings.get("metric", "")
    metric = metric if metric in finished and finished[metric].notna().any() else loss_metric(trials)
    outcomes = list(dict.fromkeys([metric, *score_columns(trials).values()]))
    outcomes = [c for c in outcomes if c in finished and finished[c].notna().any()]
    axes = [a for a in cell_axes(data) if a in finished and finished[a].nunique() > 1]
    inputs = axes + searched_params(data)
    configs = finished.groupby(CONFIG, sort=False)
    firsts, means = configs[inputs].first(), configs[outcomes].mean()
    dimensions = [_dimension(name, firsts[name]) for name in inputs]
    dimensions += [{"label": f"{c} (mean)", "values": means[c].tolist()} for c in outcomes]
    if len(dimensions) < 2:
        return _empty(title, "fewer than two things vary across the finished configurations")
    color = next((c for c in (primary_score(trials), metric) if c in means), None)
    line = {} if color is None else {"color": means[color].tolist(), "colorscale": SCORE_SCALE,
                                     "showscale": True, "colorbar": {"title": {"text": color}}}
    fig = go.Figure(go.Parcoords(dimensions=dimensions, line=line,
                                 meta={"role": "parallel", "configs": list(means.index)}))
    fig.update_layout(title=f"{title}: {len(means)} finished configuration(s), colour = {color or 'none'}",
                      height=480, margin={"l": 90, "r": 90, "t": 110}, template=TEMPLATE)
    return fig


def machine_load(data: StudyData) -> go.Figure:
    """Was a slow trial slow or starved? Each trial's last throughput (clips/s) against the CPU its rank-0
    process tree used (100% = one core) and, where logged, its GPU's utilisation: low throughput at low use
    means the trial waited (on data, on a shared machine), at high use a slow step."""
    title = "Machine load per trial (rank 0, last log window)"
    trials = data.trials
    use = [c for c in (T.SYSTEM_PROCESS_CPU, T.SYSTEM_GPU_UTILIZATION)
           if c in trials and trials[c].notna().any()]
    if T.TRAIN_CLIPS_PER_S not in trials or not use:
        return _empty(title, "no system metrics logged (studies before system metrics, or no step yet)")
    fig = make_subplots(rows=1, cols=len(use), horizontal_spacing=0.12)
    for col, column in enumerate(use, 1):
        for status, group in trials.groupby("status", sort=False):
            fig.add_trace(go.Scatter(
                x=group[column], y=group[T.TRAIN_CLIPS_PER_S], mode="markers", name=status,
                marker={"color": STATUS_COLOR.get(status, "#444"), "size": 9}, customdata=group["trial_id"],
                text=group["cell"], hovertemplate="%{text}<br>trial %{customdata}<br>%{x:.0f}%: %{y:.1f}/s",
                showlegend=_once(fig, f"load-{status}"), legendgroup=status,
                meta={"role": "load", "use": column}), row=1, col=col)
        fig.update_xaxes(title_text=f"{column} (%)", row=1, col=col)
    fig.update_yaxes(title_text=T.TRAIN_CLIPS_PER_S, row=1, col=1)
    fig.update_layout(title=title, height=PANEL_HEIGHT + 80, template=TEMPLATE)
    return fig


def _dimension(name: str, values: pd.Series) -> dict:
    """A parcoords axis: numbers as they are (log10 where they span a decade), anything else as categories."""
    if pd.api.types.is_numeric_dtype(values):
        low, high = float(values.min()), float(values.max())
        if low > 0 and high / low >= 10:
            ticks = [t for t in LOG_TICKS if low <= t <= high] or [low, high]
            return {"label": f"{name} (log)", "values": np.log10(values).tolist(),
                    "tickvals": np.log10(ticks).tolist(), "ticktext": [f"{t:g}" for t in ticks]}
        return {"label": name, "values": values.tolist()}
    categories = axis_values(values, name)
    return {"label": name, "values": [categories.index(str(v)) for v in values],
            "tickvals": list(range(len(categories))), "ticktext": categories}


def importances(data: StudyData) -> go.Figure:
    """Which searched parameter mattered most for the probe score? fANOVA importances via optuna.importance,
    over the finished trials (cell axes count as categorical parameters)."""
    title = "Parameter importance"
    score = primary_score(data.trials)
    if score is None:
        return _empty(title, "no probe score logged yet")
    try:
        found = param_importances(data, score)
    except NotEnoughTrials as why:
        return _empty(title, str(why))
    names = list(found)[::-1]  # plotly draws horizontal bars bottom-up: most important on top
    fig = go.Figure(go.Bar(
        x=[found[n] for n in names], y=names, orientation="h", marker={"color": "#4e79a7"},
        text=[f"{found[n]:.2f}" for n in names], textposition="auto", meta={"role": "importance"},
        hovertemplate="%{y}: %{x:.3f}<extra></extra>",
    ))
    fig.update_layout(title=f"{title} for {score} (optuna fANOVA, normalised to 1)",
                      xaxis_title="importance", yaxis_title="parameter", height=160 + 40 * len(names),
                      template=TEMPLATE)
    return fig


def overview(data: StudyData) -> go.Figure:
    """Where does the study stand? Trials by status, compute time per cell, and each cell's best config."""
    trials = data.trials
    state = "interrupted" if data.interrupted else "driver lost" if data.driver_lost else "still running"
    partial = f" — partial: study {state}" if data.partial else ""
    title = f"Study overview: {data.name}{partial}"
    if trials.empty:
        return _empty(title, "no trials logged yet")
    cells = cell_summary(data)
    labels = _labels(cells)
    top_px, gap_px, table_px = 320, 130, 50 + 21 * len(cells)
    specs = [[{"type": "xy"}, {"type": "xy"}], [{"type": "table", "colspan": 2}, None]]
    fig = make_subplots(rows=2, cols=2, specs=specs, row_heights=[top_px, table_px],
                        vertical_spacing=gap_px / (top_px + gap_px + table_px),
                        subplot_titles=["trials by status", "compute per cell (hours)", ""])
    counts = trials["status"].value_counts()
    present = [s for s in STATUSES if s in counts] + [s for s in counts.index if s not in STATUSES]
    n = [int(counts[s]) for s in present]
    fig.add_trace(go.Bar(x=present, y=n, text=n, showlegend=False, meta={"role": "status_counts"},
                         marker={"color": [STATUS_COLOR.get(s, "#999") for s in present]}), row=1, col=1)
    hours = trials.groupby(["cell", "status"])["compute_s"].sum().div(3600)
    for status in present:
        per_cell = hours.xs(status, level="status").reindex(cells["cell"], fill_value=0.0)
        fig.add_trace(go.Bar(x=labels, y=per_cell.values, name=status, legendgroup=status,
                             marker={"color": STATUS_COLOR.get(status, "#999")},
                             meta={"role": "compute", "status": status}), row=1, col=2)
    fig.update_yaxes(title_text="trials", row=1, col=1)
    fig.update_yaxes(title_text="hours", row=1, col=2)
    table = _best_config_table(cells, labels, score_columns(trials), searched_params(data))
    fig.add_trace(table, row=2, col=1)
    total = trials["compute_s"].sum() / 3600
    fig.update_layout(title=f"{title} — {len(trials)} trials, {total:.2f} compute hours", barmode="stack",
                      height=top_px + gap_px + table_px + 130, margin={"t": 100, "b": 30},
                      legend={"title": {"text": "status"}}, template=TEMPLATE)
    return fig


def _best_config_table(cells: pd.DataFrame, labels: list[str], scores: dict[str, str], params: list[str]
                       ) -> go.Table:
    columns = {
        "fusion · decoder · objective": labels,
        "trials": [f"{n} ({s})" for n, s in zip(cells["n_trials"], cells["statuses"], strict=True)],
        "best trial": [_trials_text(b) for b in cells["best_trial"]],  # "—": the "trials" column says why
        **{p: [_fmt(v) for v in cells[p]] for p in params},
        **{scores[m]: [_fmt(v) for v in cells[m]] for m in scores},
        "compute (h)": [f"{s / 3600:.2f}" for s in cells["compute_s"]],
    }
    widths = [max(len(name), *(len(v) for v in values)) for name, values in columns.items()]
    return go.Table(header={"values": list(columns), "fill_color": "#e8edf3", "align": "left"},
                    cells={"values": list(columns.values()), "align": "left"},
                    columnwidth=[min(w, 40) for w in widths], meta={"role": "best_config"})


def _cell_label(cell: str) -> str:
    """'decoder=shared,fusion=mid,objective=joint' -> 'mid · shared · joint', as `_labels` writes cells."""
    axes = dict(part.split("=", 1) for part in cell.split(",") if "=" in part)
    known = [axes.pop(axis) for axis in CELL_AXES if axis in axes]
    return " · ".join(known + [f"{k}={v}" for k, v in axes.items()])


def _trials_text(trial_ids: object) -> str:
    """A best configuration's trials: the first id, and how many more seeds stand behind it."""
    if trial_ids is None or (isinstance(trial_ids, float) and math.isnan(trial_ids)):
        return "—"
    ids = str(trial_ids).split(", ")
    return ids[0] if len(ids) == 1 else f"{ids[0]} (+{len(ids) - 1} repeats)"


def _labels(cells: pd.DataFrame) -> list[str]:
    """'early · shared · joint' (fusion · decoder · objective): short enough for a crowded axis."""
    return [" · ".join(str(v) for v in axes) for axes in cells[list(CELL_AXES)].values]


def _fmt(value: object) -> str:
    """Numbers for tables and hovers: 1.0e-04 for learning rates, 3 significant digits otherwise."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.1e}" if 0 < abs(value) < 1e-2 else f"{value:.3g}"
    return "" if value is None else str(value)


def _lr_colors(lrs: pd.Series):
    """lr -> line colour on a log scale; NaN lr -> grey."""
    lo, hi = _log_range(lrs)

    def color(lr: float) -> str:
        if not isinstance(lr, int | float) or not lr > 0:
            return "#999"
        t = 0.5 if hi == lo else (math.log10(lr) - lo) / (hi - lo)
        return sample_colorscale(LR_SCALE, [min(max(t, 0.0), 1.0)])[0]

    return color


def _lr_colorbar(lrs: pd.Series) -> go.Scatter:
    """An invisible trace that carries the lr colour bar (plotly lines cannot have one themselves)."""
    lo, hi = _log_range(lrs)
    ticks = sorted({lo, hi, *range(math.ceil(lo), math.floor(hi) + 1)})
    return go.Scatter(
        x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip", meta={"role": "lr_colorbar"},
        marker={"colorscale": LR_SCALE, "cmin": lo, "cmax": hi if hi > lo else lo + 1, "color": [lo],
                "showscale": True, "colorbar": {"title": {"text": "lr"}, "tickvals": ticks,
                                                "ticktext": [f"{10 ** t:.1e}" for t in ticks]}},
    )


def _log_range(lrs: pd.Series) -> tuple[float, float]:
    positive = pd.to_numeric(lrs, errors="coerce")
    positive = positive[positive > 0]
    if positive.empty:
        return -4.0, -4.0
    return float(np.log10(positive.min())), float(np.log10(positive.max()))


def _once(fig: go.Figure, group: str) -> bool:
    """Whether a trace of legend group `group` is the first one: one legend entry per group, any panel."""
    return not any(t.legendgroup == group and t.showlegend is not False for t in fig.data)


def _view(trace) -> str | None:
    """The metric a learning-curve trace belongs to; None for traces shown in every view."""
    return trace.meta.get("metric") if isinstance(trace.meta, dict) else None


def _note(fig: go.Figure, text: str, row: int, col: int) -> None:
    """Say why a panel is empty. The point-less trace makes plotly draw the panel's axes at all."""
    fig.add_trace(go.Scatter(x=[None], y=[None], showlegend=False, hoverinfo="skip"), row=row, col=col)
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="x domain", yref="y domain",
                       font={"color": "#777"}, row=row, col=col)


def _empty(title: str, why: str) -> go.Figure:
    """A figure that says why it has nothing to show, instead of an empty frame or an exception."""
    fig = go.Figure()
    fig.add_annotation(text=why, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 16, "color": "#777"})
    fig.update_layout(title=title, height=260, xaxis={"visible": False}, yaxis={"visible": False},
                      meta={"empty": why}, template=TEMPLATE)
    return fig
