"""`avmae dashboard STUDY [STUDY ...]`: rebuild a study's dashboard from MLflow, also while the study still
runs; with two or more studies, compare them side by side, matched by ablation cell."""

from __future__ import annotations

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
@click.option("--log-to-mlflow/--no-log-to-mlflow", default=True, show_default=True,
              help="Also log the page and figures under the study run's dashboard/ artifacts (one study "
                   "only: a comparison belongs to no single study).")
def dashboard(studies: tuple[str, ...], tracking_uri: str | None, out: Path | None, open_browser: bool,
              log_to_mlflow: bool) -> None:
    """Build STUDY's HTML dashboard from its MLflow runs; with several STUDYs, a page comparing them."""
    import mlflow  # imported here so `avmae --help` stays fast
    from avmae.dashboards import StudyNotFound, build_study_dashboard
    from avmae.dashboards.compare import build_comparison_dashboard
    from avmae.dashboards.verdicts import BadSetting
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or mlflow.get_tracking_uri()
    try:
        if len(studies) == 1:
            page = build_study_dashboard(studies[0], uri, out=out, log_to_mlflow=log_to_mlflow)
        else:
            page = build_comparison_dashboard(list(studies), uri, out=out)
    except (StudyNotFound, BadSetting, MlflowException) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"dashboard for {' vs '.join(studies)}: {page}")
    if open_browser:
        click.launch(page.resolve().as_uri())
