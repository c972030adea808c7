"""`avmae status [STUDY]`: how the studies in a tracking store are doing, read from MLflow alone.

Only MLflow's client and the run layout of `tracking` are used (no torch, no Ray, no storage access), so it
works from a laptop against a cluster's MLflow server, while the sweep runs or long after. Study names are
never put into MLflow filter strings (their grammar has no escape); runs are found by their experiment and
fixed tag values, then matched here. A study run still RUNNING whose driver stopped beating
(`layout.driver_lost`) is shown as `driver lost`, never as running.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click
from avmae.platform.tracking import layout as T
from avmae.platform.tracking.uris import redact

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

STATUSES = tuple(s.value for s in T.TrialStatus)  # running, finished, pruned, diverged, failed, interrupted
ENDED = frozenset(STATUSES) - {T.TrialStatus.RUNNING.value}
# What an MLflow run status means for a trial run without the status tag (written by hand or an old sweep).
FROM_MLFLOW = {"RUNNING": "running", "SCHEDULED": "running", "FINISHED": "finished", "KILLED": "interrupted"}
STUDY_STATE = {"RUNNING": "running", "FINISHED": "finished", "FAILED": "failed", "KILLED": "interrupted"}
PAGE = 1000


@dataclass
class Trials:
    """The trial runs of one study (or one cell of it)."""

    counts: Counter = field(default_factory=Counter)
    best: float = math.inf  # lowest finite value of the study's metric; every study metric is a loss
    ended_ms: list[int] = field(default_factory=list)  # when each ended trial ended
    first_start_ms: int | None = None

    def add(self, run: Run, metric: str | None) -> None:
        status = run.data.tags.get(T.STATUS_TAG) or FROM_MLFLOW.get(run.info.status, "failed")
        self.counts[status] += 1
        value = run.data.metrics.get(metric) if metric else None
        # A diverged trial's last value is a placeholder (or a blow-up), not a measurement.
        if value is not None and math.isfinite(value) and status != T.TrialStatus.DIVERGED.value:
            self.best = min(self.best, value)
        if status in ENDED and run.info.end_time:
            self.ended_ms.append(run.info.end_time)
        if run.info.start_time:
            self.first_start_ms = min(self.first_start_ms or run.info.start_time, run.info.start_time)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def ended(self) -> int:
        return sum(n for s, n in self.counts.items() if s in ENDED)


def expected_trials(params: dict[str, str]) -> int | None:
    """How many trials the study file asks for (cells not excluded x trials per cell x grid points x
    repeats), from the resolved config the study run logged as params; None where they are missing."""
    try:
        per_cell = int(params["trials_per_cell"]) * int(params.get("repeats", "1"))
        axes = {k.removeprefix("axes."): json.loads(v) for k, v in params.items() if k.startswith("axes.")}
        exclude = json.loads(params.get("exclude", "[]"))
        combos = (dict(zip(axes, c, strict=True)) for c in itertools.product(*axes.values()))
        cells = sum(not any(all(str(cell.get(a)) == str(v) for a, v in e.items()) for e in exclude)
                    for cell in combos)
        grids = {k.split(".")[1] for k, v in params.items() if k.startswith("search.") and v == "grid"}
        grid = math.prod(len(json.loads(params[f"search.{name}.values"])) for name in grids)
    except (KeyError, ValueError, TypeError):
        return None
    return cells * per_cell * grid


def eta_seconds(trials: Trials, expected: int | None, now_ms: int) -> float | None:
    """Seconds until the last trial ends, at the rate trials have ended so far (concurrency included):
    ended trials over the time from the first trial's start to now. None before any trial ended."""
    if expected is None or not trials.ended or trials.first_start_ms is None:
        return None
    remaining = max(expected, trials.total) - trials.ended
    elapsed_s = max(now_ms - trials.first_start_ms, 1) / 1000
    return remaining * elapsed_s / trials.ended


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours} h {minutes:02d} min" if hours < 48 else f"{hours // 24} d {hours % 24} h"


def score(value: float) -> str:
    return f"{value:.4g}" if value < math.inf else "-"


def when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000)) if ms else "-"


def table(header: list[str], rows: Iterable[list[str]]) -> str:
    rows = [header, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def counts_text(counts: Counter) -> str:
    return ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s]) or "no trials yet"


def search(client: MlflowClient, exp_ids: list[str], role: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(exp_ids, f"tags.`{T.ROLE_TAG}` = '{role}'", max_results=PAGE,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def study_state(run: Run, now_ms: int) -> str:
    """running, finished, failed, interrupted, or `layout.DRIVER_LOST` for a running study whose driver
    stopped beating."""
    if T.driver_lost(run.info.status, T.heartbeat_ms(run.data.tags), now_ms):
        return T.DRIVER_LOST
    return STUDY_STATE.get(run.info.status, run.info.status.lower())


def driver_lost_line(run: Run, now_ms: int) -> str:
    beat = T.heartbeat_ms(run.data.tags) or now_ms
    return (f"Driver lost: no heartbeat since {when(beat)} ({duration((now_ms - beat) / 1000)} ago; it beats "
            f"every {T.HEARTBEAT_INTERVAL_S:.0f} s). The sweep is gone (killed, or its machine lost): "
            "`avmae sweep FILE --resume` continues it. A sweep that ended while MLflow was down left its "
            "last writes queued: `avmae mlflow flush STUDY_DIR` sends them.")


def list_studies(client: MlflowClient, now_ms: int) -> str:
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    studies = search(client, exp_ids, "study") if exp_ids else []
    if not studies:
        return f"no studies in {redact(client.tracking_uri)}"
    trials: dict[str, Trials] = defaultdict(Trials)
    for run in search(client, exp_ids, "trial"):
        trials[run.data.tags.get(T.STUDY_TAG, "")].add(run, None)
    rows = [
        [name, study_state(run, now_ms), str(trials[name].total),
         counts_text(trials[name].counts), when(run.info.start_time)]
        for run in sorted(studies, key=lambda r: r.info.start_time or 0, reverse=True)
        for name in [run.data.tags.get(T.STUDY_TAG, run.info.run_name)]
    ]
    header = f"Studies in {redact(client.tracking_uri)} (latest first):"
    return header + "\n" + table(["study", "state", "trials", "how they ended", "started"], rows)


def study_report(client: MlflowClient, study: str, now_ms: int) -> str:
    experiment = client.get_experiment_by_name(study)
    runs = search(client, [experiment.experiment_id], "study") if experiment else []
    parents = [r for r in runs if r.data.tags.get(T.STUDY_TAG) == study]
    if not parents:
        exp_ids = [e.experiment_id for e in client.search_experiments()]
        names = sorted({r.data.tags.get(T.STUDY_TAG, "") for r in search(client, exp_ids, "study")} - {""})
        raise click.ClickException(f"no study {study!r} in {redact(client.tracking_uri)}; studies there: "
                                   + (", ".join(names) or "none"))
    parent = parents[0]
    params = parent.data.params
    metric = params.get("metric")
    cells: dict[str, Trials] = defaultdict(Trials)
    overall = Trials()
    for run in search(client, [experiment.experiment_id], "trial"):
        if run.data.tags.get(T.STUDY_TAG) == study:
            cells[run.data.tags.get(T.CELL_TAG, "?")].add(run, metric)
            overall.add(run, metric)
    best_name = f"best {metric}" if metric else "best"
    rows = [[cell, *(str(trials.counts[s]) for s in STATUSES), score(trials.best)]
            for cell, trials in sorted(cells.items())]
    state = study_state(parent, now_ms)
    expected = expected_trials(params)
    lines = [
        f"Study {study} in {redact(client.tracking_uri)}: {state}, started {when(parent.info.start_time)}",
        table(["cell", *STATUSES, best_name], rows) if rows else "no trials yet",
        f"Trials: {overall.total}{f' of {expected}' if expected else ''} ({counts_text(overall.counts)})",
    ]
    if overall.best < math.inf:
        lines.append(f"Best {metric} so far: {score(overall.best)}")
    if state == "running":
        eta = eta_seconds(overall, expected, now_ms)
        lines.append(f"ETA: {duration(eta)} at the rate trials have ended so far" if eta is not None
                     else "ETA: after the first trial ends")
    elif state == T.DRIVER_LOST:
        lines.append(driver_lost_line(parent, now_ms))
    elif overall.counts[T.TrialStatus.RUNNING.value]:
        lines.append(f"{overall.counts[T.TrialStatus.RUNNING.value]} trial run(s) still say running, but the "
                     f"study run is {state}: its sweep is gone. `avmae sweep FILE --resume` continues them.")
    elif state == "interrupted":
        lines.append("Interrupted: `avmae sweep FILE --resume` continues it.")
    if client.tracking_uri.startswith(("http://", "https://")):
        lines.append(f"MLflow UI: {T.runs_page(redact(client.tracking_uri), experiment.experiment_id)}")
    return "\n".join(lines)


@click.command()
@click.argument("study", required=False)
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None,
              help="MLflow tracking URI, e.g. http://mlflow:5000 "
                   "(default: $MLFLOW_TRACKING_URI, else ./mlflow.db).")
def status(study: str | None, tracking_uri: str | None) -> None:
    """List the studies in a tracking store, or show STUDY's progress per cell, best score and ETA.

    A server asking for a login reads MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, or
    ~/.mlflow/credentials.
    """
    if tracking_uri is None:
        local = Path("mlflow.db").resolve()
        if not local.is_file():  # opening it would create an empty store
            raise click.ClickException(f"no MLflow store at {local}; pass --tracking-uri (or set "
                                       "MLFLOW_TRACKING_URI) to read a server or another store")
        tracking_uri = f"sqlite:///{local}"
    from mlflow.exceptions import MlflowException  # imported here so `avmae --help` stays fast
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        now_ms = int(time.time() * 1000)
        report = study_report(client, study, now_ms) if study else list_studies(client, now_ms)
    except MlflowException as error:
        raise click.ClickException(f"{redact(tracking_uri)}: {error.message}") from None
    click.echo(report)
