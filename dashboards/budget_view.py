"""The dashboard's answer per unit of compute: each cell's expected best score against the number of trials
and against the hours it costs (Dodge et al. 2019, with a band of one sd over draws), each cell's spend, and
the compute-matched verdict on top (`cost`)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from avmae.dashboards.collect import StudyData
from avmae.dashboards.cost import budget_curves, budget_text, cell_costs, matched_verdict, resources
from avmae.dashboards.figures import TEMPLATE, _cell_label, _empty
from avmae.dashboards.summary import ranking
from plotly.colors import qualitative
from plotly.subplots import make_subplots

TITLE = "Answers per unit of compute"


def budget_view(data: StudyData) -> go.Figure:
    """Left: expected best vs trials; right: vs compute; the spend per cell and the verdict as text."""
    curves = budget_curves(data)
    if not curves:
        return _empty(TITLE, "no finished trial with a score yet")
    metric, _ = ranking(data.trials)
    unit = resources(data).unit
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08,
                        subplot_titles=["expected best vs trials run", f"expected best vs {unit}"])
    colours = qualitative.D3
    for i, curve in enumerate(curves):
        colour = colours[i % len(colours)]
        _curve(fig, (curve.k, curve.best_by_k, curve.sd_by_k), curve.cell, colour, col=1, legend=True)
        _curve(fig, (curve.hours, curve.best_by_hours, curve.sd_by_hours), curve.cell, colour, col=2,
               legend=False)
    verdict = matched_verdict(data)
    costs = cell_costs(data)
    lines = [budget_text(data, costs), *(f"{_cell_label(c.cell)}: {c.text()}" for c in costs)]
    if verdict is not None:
        lines.insert(0, f"compute-matched: {verdict.text()}")
    fig.add_annotation(text="<br>".join(lines), x=0, y=1.0, xref="paper", yref="paper", yanchor="bottom",
                       xanchor="left", yshift=40, align="left", showarrow=False, font={"size": 12},
                       name="verdict")
    fig.update_xaxes(title_text="trials", dtick=1, row=1, col=1)
    fig.update_xaxes(title_text=unit, row=1, col=2)
    fig.update_yaxes(title_text=f"expected best {metric}", row=1, col=1)
    fig.update_layout(title={"text": f"{TITLE}: expected best {metric} (± 1 sd over draws)", "y": 1,
                             "yref": "container", "yanchor": "top", "pad": {"t": 16}},
                      height=420 + 18 * len(lines), margin={"t": 110 + 18 * len(lines)}, template=TEMPLATE,
                      legend={"orientation": "h", "y": -0.2},
                      meta={"verdict": verdict.text() if verdict is not None else None})
    return fig


def _curve(fig: go.Figure, points: tuple[np.ndarray, np.ndarray, np.ndarray], cell: str, colour: str,
           col: int, legend: bool) -> None:
    """A cell's expected best (x, mean, sd) with its ±1 sd band, where the budget buys a trial."""
    x, mean, sd = points
    keep = np.isfinite(mean)
    x, mean, sd = x[keep], mean[keep], sd[keep]
    label = _cell_label(cell)
    fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([mean + sd, (mean - sd)[::-1]]),
                             fill="toself", line={"width": 0}, fillcolor=colour, opacity=0.15,
                             hoverinfo="skip", showlegend=False, legendgroup=cell), row=1, col=col)
    fig.add_trace(go.Scatter(x=x, y=mean, mode="lines+markers", name=label, line={"color": colour},
                             legendgroup=cell, showlegend=legend,
                             meta={"role": "expected_best", "cell": cell},
                             hovertemplate=f"{label}<br>%{{x:.3g}}: %{{y:.4f}}<extra></extra>"),
                  row=1, col=col)
