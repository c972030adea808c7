"""`avmae dashboard STUDY [STUDY ...]`: rebuild a study's dashboard from MLflow, also while the study still
runs; with two or more studies, compare them side by side, matched by ablation cell."""

from __future__ import annotations

import time
from pathlib import Path

import click


@click.command()
@click.argument("studies", nargs=-1, required=True, metavar="STUDY [STUDY ...]")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None,
              help="MLflow tracking URI (a local store or a server); default: $MLFLOW_TRACKING_URI, else "
                   "MLflow's default.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the HTML; default: ./<STUDY>-dashboard.html, or "
                   "./compare-<A>-<B>-dashboard.html for several studies.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a browser when built.")
@click.option("--watch", type=click.IntRange(min=5), default=None, metavar="SECONDS",
              help="Rebuild every SECONDS while the study runs (reload the page to see it); stops when the "
                   "study run has ended, or on Ctrl-C.")
@click.option("--log-to-mlflow/--no-log-to-mlflow", default=True, show_default=True,
              help="Also log the page and figures under the study run's dashboard/ artifacts (one study "
                   "only: a comparison belongs to no single study).")
def dashboard(studies: tuple[str, ...], tracking_uri: str | None, out: Path | None, open_browser: bool,
              watch: int | None, log_to_mlflow: bool) -> None:
    """Build STUDY's HTML dashboard from its MLflow runs; with several STUDYs, a page comparing them."""
    import mlflow  # imported here so `avmae --help` stays fast
    from avmae.dashboards import StudyNotFound, build_study_dashboard
    from avmae.dashboards.compare import build_comparison_dashboard
    from avmae.dashboards.verdicts import BadSetting
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or mlflow.get_tracking_uri()
    opened = False
    while True:
        try:
            if len(studies) == 1:
                page = build_study_dashboard(studies[0], uri, out=out, log_to_mlflow=log_to_mlflow)
            else:
                page = build_comparison_dashboard(list(studies), uri, out=out)
        except (StudyNotFound, BadSetting, MlflowException) as error:
            raise click.ClickException(str(error)) from None
        click.echo(f"dashboard for {' vs '.join(studies)}: {page} ({time.strftime('%H:%M:%S')})")
        if open_browser and not opened:
            click.launch(page.resolve().as_uri())
            opened = True
        if watch is None or not any(_running(uri, study) for study in studies):
            return
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            return


def _running(uri: str, study: str) -> bool:
    """Whether the study's parent run is still RUNNING (its sweep has not ended)."""
    from avmae.platform.tracking import layout as T
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        return False
    runs = client.search_runs([experiment.experiment_id], f"tags.`{T.ROLE_TAG}` = 'study'", max_results=1)
    return bool(runs) and runs[0].info.status == "RUNNING"
