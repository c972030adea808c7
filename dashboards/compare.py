"""`avmae dashboard A B [C ...]`: studies side by side, matched by ablation cell.

Each cell shows every study's best configuration (mean over its seeds, 95% interval, n), and each later
study's difference from the first one with Welch's interval and a Holm-corrected p over the page's
comparisons (studies are not paired: their seeds need not share data or init). Below: each study's
LR-stability sentence and reference rows. Built from MLflow alone, like a study's own dashboard.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from avmae.dashboards import stats
from avmae.dashboards.collect import CELL_AXES, StudyData, collect_study, in_axis_order, score_columns
from avmae.dashboards.figures import TEMPLATE, _cell_label, _empty
from avmae.dashboards.report import PAGE, PLOTLY_CONFIG, _safe
from avmae.dashboards.summary import cell_summary, ranking
from avmae.dashboards.verdicts import BASELINE_LABEL, baseline_rows, lr_verdicts
from mlflow.tracking import MlflowClient

STUDY_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948")


@dataclass(frozen=True)
class CellMatch:
    """One cell across the studies: each study's interval (n = 0 where it did not run the cell), and each
    later study's difference from the first."""

    cell: str
    scores: dict[str, stats.Interval]
    differences: dict[str, stats.Comparison]


def match_cells(datas: list[StudyData]) -> tuple[str | None, list[CellMatch]]:
    """The score the studies are compared by (the first study's ranking column) and the cells of all studies
    in the paper's order, with Holm's correction over every difference on the page."""
    metric, _ = ranking(datas[0].trials)
    summaries = {d.name: cell_summary(d).set_index("cell") for d in datas}
    modality = next((m for m, c in score_columns(datas[0].trials).items() if c == metric), None)
    cells = pd.concat([s.reset_index()[["cell", *CELL_AXES]] for s in summaries.values()])
    order = cells.drop_duplicates("cell").sort_values(["objective", "fusion", "decoder"], key=in_axis_order)

    ranked_by = {d.name: ranking(d.trials)[0] for d in datas}

    def values(study: str, cell: str) -> list[float]:
        summary = summaries[study]
        if cell not in summary.index or ranked_by[study] != metric:  # scored otherwise: nothing to test
            return []
        return list(summary.loc[cell, "by_repeat"].values())

    def interval(study: str, cell: str) -> stats.Interval:
        summary = summaries[study]
        if cell not in summary.index:
            return stats.mean_ci([])
        if modality is not None and f"ci:{modality}" in summary:
            return summary.loc[cell, f"ci:{modality}"]
        return stats.mean_ci(values(study, cell))

    reference = datas[0].name
    raw = [(cell, {d.name: interval(d.name, cell) for d in datas},
            {d.name: stats.welch_difference(values(d.name, cell), values(reference, cell), d.name, reference)
             for d in datas[1:]}) for cell in order["cell"]]
    family = stats.with_holm([c for _, _, diffs in raw for c in diffs.values()])
    adjusted = iter(family)
    return metric, [CellMatch(cell, scores, {name: next(adjusted) for name in diffs})
                    for cell, scores, diffs in raw]


def side_by_side(datas: list[StudyData], metric: str | None, matches: list[CellMatch]) -> go.Figure:
    """Each cell's best configuration per study: mean with its 95% interval, n on the bar."""
    title = "Cells side by side"
    if metric is None or not matches:
        return _empty(title, "the first study has nothing to rank by yet")
    labels = [_cell_label(m.cell) for m in matches]
    fig = go.Figure()
    for i, data in enumerate(datas):
        scores = [m.scores[data.name] for m in matches]
        fig.add_trace(go.Bar(
            x=labels, y=[s.mean if s.n else None for s in scores], name=data.name,
            marker={"color": STUDY_COLORS[i % len(STUDY_COLORS)]},
            error_y={"type": "data", "symmetric": False, "color": "#333",
                     "array": [s.hi - s.mean if s.has_interval else 0.0 for s in scores],
                     "arrayminus": [s.mean - s.lo if s.has_interval else 0.0 for s in scores]},
            text=[f"n={s.n}" if s.n else "not run" for s in scores], textposition="outside",
            customdata=[s.text() for s in scores], meta={"role": "study", "study": data.name},
            hovertemplate=f"%{{x}}<br>{html.escape(data.name)}: {metric} %{{customdata}}<extra></extra>",
        ))
    finite = [s.lo if s.has_interval else s.mean for m in matches for s in m.scores.values() if s.n]
    low = min(finite) if finite else 0.0
    fig.update_layout(title=f"{title}: best configuration per cell, mean {metric} over seeds, 95% interval",
                      barmode="group", yaxis={"title": metric, "range": [low - 0.05 * abs(low), None]},
                      height=460, legend={"title": {"text": "study"}}, template=TEMPLATE)
    return fig


def comparison_table(datas: list[StudyData], metric: str | None, matches: list[CellMatch]) -> go.Figure:
    """Per cell: every study's mean [interval] (n), every later study's difference from the first with its
    Welch interval and Holm-adjusted p (★ where significant); then each study's reference rows."""
    reference = datas[0].name
    columns: dict[str, list[str]] = {"fusion · decoder · objective": [_cell_label(m.cell) for m in matches]}
    for data in datas:
        columns[f"{data.name}: {metric}"] = [_score_text(m.scores[data.name]) for m in matches]
    for data in datas[1:]:
        columns[f"{data.name} − {reference}"] = [_difference_text(m.differences[data.name]) for m in matches]
    score = dict(score_columns(datas[0].trials)).get("av") or metric
    for baseline in dict.fromkeys(b for d in datas for b in baseline_rows(d)):
        columns["fusion · decoder · objective"].append(f"baseline: {BASELINE_LABEL.get(baseline, baseline)}")
        for data in datas:
            interval = baseline_rows(data).get(baseline, {}).get(score, stats.mean_ci([]))
            columns[f"{data.name}: {metric}"].append(_score_text(interval) if interval.n else "not logged")
        for data in datas[1:]:
            columns[f"{data.name} − {reference}"].append("")
    rows = len(columns["fusion · decoder · objective"])
    fig = go.Figure(go.Table(header={"values": list(columns), "fill_color": "#e8edf3", "align": "left"},
                             cells={"values": list(columns.values()), "align": "left"},
                             meta={"role": "comparison"}))
    tested = sum(math.isfinite(c.p) for m in matches for c in m.differences.values())
    fig.update_layout(title=f"Per cell, against {reference} (Welch 95% interval, Holm over the page's "
                            f"{tested} tested comparisons)",
                      height=140 + 26 * rows, margin={"t": 60, "b": 10}, template=TEMPLATE)
    return fig


def stability_table(datas: list[StudyData]) -> go.Figure:
    """Each study's LR-stability sentence."""
    sentences = [stats.stability_sentence(lr_verdicts(d)) or "no verdict: no trial has ended yet"
                 for d in datas]
    fig = go.Figure(go.Table(
        header={"values": ["study", "learning-rate stability"], "fill_color": "#e8edf3", "align": "left"},
        cells={"values": [[d.name for d in datas], sentences], "align": "left"}, columnwidth=[15, 85],
        meta={"role": "stability"}))
    fig.update_layout(title="Learning-rate stability per study", height=120 + 60 * len(datas),
                      margin={"t": 60, "b": 10}, template=TEMPLATE)
    return fig


def build_comparison_dashboard(studies: list[str], tracking_uri: str, out: Path | None = None) -> Path:
    """Collect `studies` (two or more) from MLflow and write their side-by-side page to `out` (default
    `compare-A-B-dashboard.html`). Raises `StudyNotFound` for a study the store does not have."""
    if len(studies) < 2:
        raise ValueError("a comparison needs two or more studies")
    client = MlflowClient(tracking_uri=tracking_uri)
    datas = [collect_study(client, study) for study in studies]
    metric, matches = match_cells(datas)
    figures = {"side_by_side": side_by_side(datas, metric, matches),
               "comparison": comparison_table(datas, metric, matches), "stability": stability_table(datas)}
    out = Path(out) if out is not None else Path(f"compare-{_safe('-'.join(studies))}-dashboard.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"<header><h1>{html.escape(' vs '.join(studies))}</h1><p>"
             + " · ".join(f"{html.escape(d.name)}: {len(d.trials)} trials ({html.escape(d.parent_status)})"
                          for d in datas) + "</p></header>"]
    for i, (name, fig) in enumerate(figures.items()):
        div = fig.to_html(full_html=False, include_plotlyjs=i == 0, div_id=f"fig-{name}",
                          config=PLOTLY_CONFIG)
        parts.append(f'<section><div class="figure" data-figure="{name}">{div}</div></section>')
    out.write_text(PAGE.format(title=html.escape(" vs ".join(studies) + " — avmae"), body="\n".join(parts)),
                   encoding="utf-8")
    return out


def _score_text(interval: stats.Interval) -> str:
    return "not run" if interval.n == 0 else f"{interval.text()} (n = {interval.n})"


def _difference_text(c: stats.Comparison) -> str:
    if c.test == "none" or not math.isfinite(c.p_holm):
        return "—" if c.n == 0 or math.isnan(c.diff.mean) else f"{c.diff.mean:+.3f} (n < 2: no test)"
    star = "★ " if c.significant() else ""
    return f"{star}{c.diff.mean:+.3f} [{c.diff.lo:+.3f}, {c.diff.hi:+.3f}], Holm p = {c.p_holm:.2g}"

