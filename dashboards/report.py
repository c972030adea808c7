"""A study's dashboard as one self-contained HTML file, also logged to the study's MLflow run.

The HTML embeds plotly.js once and loads nothing from the network, so it opens offline, from a laptop or
straight from the MLflow UI's artifact view.
"""

from __future__ import annotations

import html
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import plotly.graph_objects as go
from avmae.dashboards import figures
from avmae.dashboards.budget_view import budget_view
from avmae.dashboards.collect import StudyData, collect_study
from avmae.dashboards.cost import cost_lines
from avmae.dashboards.finetune import finetune_figure, finetune_lines
from avmae.dashboards.verdicts import gains_lines, leads_lines, seeds_to_settle, unsettled_gains
from avmae.platform.tracking.layout import DRIVER_LOST_AFTER_S, TrialStatus
from mlflow.tracking import MlflowClient

ARTIFACT_DIR = "dashboard"  # under the study run: dashboard.html, trials.csv, figures/<name>.json
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}


@dataclass(frozen=True)
class Section:
    name: str  # the figure's div is `fig-<name>`, its JSON artifact `figures/<name>.json`
    question: str
    build: Callable[[StudyData], go.Figure]


SECTIONS = (
    Section("overview", "Where does the study stand?", figures.overview),
    Section("learning_curves", "How did pretraining go, and where did runs diverge?",
            figures.learning_curves),
    Section("lr_stability", "Which objective is stable over which learning rates?", figures.lr_stability),
    Section("ablation", "Which fusion × decoder works best, for each objective?", figures.ablation_table),
    Section("budget", "What does each cell reach for its compute, and which is ahead at equal compute?",
            budget_view),
    Section("masking", "Which audio / video masking ratios work?", figures.masking_ratios),
    Section("importance", "Which searched parameter mattered?", figures.importances),
    Section("parallel", "How do the searched parameters go with the study metric and the probes?",
            figures.parallel_coordinates),
    Section("load", "Was a slow trial slow, or starved of data or CPU?", figures.machine_load),
    Section("finetune", "Does fine-tuning confirm the cells, and does the probe rank them as it does?",
            finetune_figure),
)


def build_study_dashboard(
    study: str, tracking_uri: str, out: Path | None = None, log_to_mlflow: bool = True
) -> Path:
    """Collect `study` from MLflow, write its dashboard to `out` (default `<study>-dashboard.html`), and
    log it under the study run's `dashboard/` artifacts. Returns the HTML's path.

    Raises `StudyNotFound` (listing the studies there are) when the store has no such study.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    return write_dashboard(client, collect_study(client, study), out, log_to_mlflow)


@dataclass(frozen=True)
class StudyOutcome:
    """What a sweep ends with: its dashboard, the lines of each cell's gain over the random-init encoder
    (`verdicts.gains_lines`; none where the study logged no reference rows), and the seeds per configuration
    that would settle the gains still open (None where none is open, or no number of seeds can)."""

    page: Path
    lines: list[str]
    settle_repeats: int | None


def study_outcome(study: str, tracking_uri: str, out: Path | None = None) -> StudyOutcome:
    """The study's outcome from one read of MLflow; the dashboard written and logged as
    `build_study_dashboard` does."""
    client = MlflowClient(tracking_uri=tracking_uri)
    data = collect_study(client, study)
    page = write_dashboard(client, data, out, log_to_mlflow=True)
    return StudyOutcome(page, gains_lines(data) + leads_lines(data) + cost_lines(data) + finetune_lines(data),
                        seeds_to_settle(unsettled_gains(data)))


def write_dashboard(client: MlflowClient, data: StudyData, out: Path | None, log_to_mlflow: bool) -> Path:
    built = {s.name: s.build(data) for s in SECTIONS}
    out = Path(out) if out is not None else Path(f"{_safe(data.name)}-dashboard.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(data, built), encoding="utf-8")
    if log_to_mlflow:
        log_dashboard(client, data, out, built)
    return out


def render_html(data: StudyData, built: dict[str, go.Figure]) -> str:
    """The page: a header with the study's state, then one section per figure."""
    parts = [_header(data)]
    for i, section in enumerate(SECTIONS):
        div = built[section.name].to_html(
            full_html=False, include_plotlyjs=i == 0, div_id=f"fig-{section.name}", config=PLOTLY_CONFIG
        )
        parts.append(f'<section><h2>{html.escape(section.question)}</h2>'
                     f'<div class="figure" data-figure="{section.name}">{div}</div></section>')
    return PAGE.format(title=html.escape(f"{data.name} — avmae dashboard"), body="\n".join(parts))


def log_dashboard(client: MlflowClient, data: StudyData, page: Path, built: dict[str, go.Figure]) -> None:
    """Log the page, each figure's JSON and the trials table under the study run's `dashboard/` folder."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "figures").mkdir()
        (folder / "dashboard.html").write_bytes(page.read_bytes())
        for name, fig in built.items():
            (folder / "figures" / f"{name}.json").write_text(fig.to_json(), encoding="utf-8")
        data.trials.to_csv(folder / "trials.csv", index=False)
        client.log_artifacts(data.parent_run_id, str(folder), artifact_path=ARTIFACT_DIR)


def _header(data: StudyData) -> str:
    trials = data.trials
    counts = trials["status"].value_counts()
    summary = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no trials yet"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    banner = ""
    if data.partial and data.interrupted:
        stopped = int(counts.get(TrialStatus.INTERRUPTED.value, 0))
        banner = ('<div class="banner" id="partial-banner">partial: study interrupted — '
                  f"{stopped} trial(s) stopped mid-run (`avmae sweep FILE --resume` continues it); "
                  "figures show a snapshot</div>")
    elif data.driver_lost:
        banner = ('<div class="banner" id="partial-banner">partial: driver lost — the study run says running '
                  f"but its driver has not beaten for over {DRIVER_LOST_AFTER_S:.0f} s (`avmae sweep FILE "
                  "--resume` continues it); figures show a snapshot</div>")
    elif data.partial:
        running = int(counts.get(TrialStatus.RUNNING.value, 0))
        banner = ('<div class="banner" id="partial-banner">partial: study still running — '
                  f"{running} trial(s) running; figures show a snapshot</div>")
    return (f"<header><h1>{html.escape(data.name)}</h1>{banner}"
            f"<p>{len(trials)} trials: {html.escape(summary)} · study run <code>{data.parent_run_id}</code>"
            f" ({html.escape(data.parent_status)}) · built {stamp}</p></header>")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "study"


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1400px; padding: 0 24px; }}
header p {{ color: #555; }}
h2 {{ font-size: 1.1rem; margin: 32px 0 4px; color: #333; }}
.banner {{ background: #fff3cd; border: 1px solid #e0b000; padding: 8px 12px; font-weight: 600; }}
.figure {{ border-top: 1px solid #ddd; }}
</style></head>
<body>
{body}
</body></html>
"""
