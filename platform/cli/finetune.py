"""`avmae finetune STUDY`: the fine-tuning stage of a study whose pretraining ended, run later. It reads the
study's record (`<storage>/<STUDY>/study.json`) for its spec and MLflow for each cell's best configuration and
its seeds' checkpoints; the `finetune:` section is the record's, or the one in `--finetune FILE`. Run it again
after an interruption: it goes on where it stopped."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from avmae.platform.cli.sweep import DEFAULT_STORAGE, default_tracking_uri, study_storage
from avmae.platform.tracking.uris import redact


@click.command()
@click.argument("study")
@click.option("--storage", default=DEFAULT_STORAGE, show_default=True,
              help="The folder or URI the study's sweep used (--storage).")
@click.option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db).")
@click.option("--address", envvar="RAY_ADDRESS", help="Join the Ray cluster at this address.")
@click.option("--finetune", "section", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A YAML file with a `finetune:` section (a study file will do), instead of the record's.")
def finetune(study: str, storage: str, tracking_uri: str | None, address: str | None,
             section: Path | None) -> None:
    """Fine-tune each cell's best configuration of STUDY (and the from-scratch row)."""
    import yaml
    from avmae.platform.study.finetune_stage import FinetunePlanError, finetune_study, recorded_study
    from avmae.platform.study.record import Launch
    from avmae.platform.study.spec import SpecError, parse_spec

    folder, tracking_uri = study_storage(storage, study), tracking_uri or default_tracking_uri()
    try:
        spec = recorded_study(folder)
    except FileNotFoundError:
        raise click.ClickException(f"no study record at {folder}: pass the sweep's --storage") from None
    if section is not None:
        raw = yaml.safe_load(section.read_text()) or {}
        try:
            given = raw.get("finetune", raw)
            spec = parse_spec({**spec.model_dump(mode="json"), "finetune": given}, str(section))
        except SpecError as err:
            raise click.ClickException(str(err)) from None
    if spec.finetune is None:
        raise click.ClickException(f"study {study!r} has no `finetune:` section: give one with "
                                   "--finetune FILE")
    try:
        done = finetune_study(spec, Launch(study, folder, tracking_uri, address, resume=True))
    except FinetunePlanError as err:
        raise click.ClickException(str(err)) from None
    if not done:
        click.echo(f"Interrupted. Continue with: avmae finetune {study} --storage {storage}", err=True)
        sys.exit(130)
    from avmae.dashboards import study_outcome

    outcome = study_outcome(study, tracking_uri, Path(f"{study}-dashboard.html"))
    click.echo(f"MLflow: {redact(tracking_uri)}\nDashboard: {outcome.page}\n" + "\n".join(outcome.lines))
