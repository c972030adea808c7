"""`avmae sweep experiments/FILE.yaml`: validate a study, then run it on Ray and record it in MLflow.

Nothing needs to be running: by default a local Ray runtime is started for the job, MLflow writes to
`./mlflow.db` (MLflow's own default store) and checkpoints go to `./avmae_runs/<study>`.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from pathlib import Path

import click
from avmae.platform.uris import redact

DEFAULT_STORAGE = "avmae_runs"


def study_storage(storage: str, name: str) -> str:
    """`<storage>/<name>`, absolute for a local folder, untouched for a URI (shared storage)."""
    if "://" in storage:
        return f"{storage.rstrip('/')}/{name}"
    return str(Path(storage).resolve() / name)


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


@click.command()
@click.argument("spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--address", envvar="RAY_ADDRESS",
              help="Join the Ray cluster at this address (default: $RAY_ADDRESS, else a local runtime).")
@click.option("--tracking-uri", help="MLflow tracking URI, e.g. http://mlflow:5000 (default: ./mlflow.db).")
@click.option("--storage", default=DEFAULT_STORAGE, show_default=True,
              help="Folder or URI for checkpoints and Tune state (shared storage on a cluster).")
@click.option("--name", help="Study name (default: the file's `name`); also the MLflow experiment.")
@click.option("--resume", is_flag=True, help="Continue a study: restore its Tuners, reuse its MLflow runs.")
@click.option("--restart", is_flag=True,
              help="Archive what an earlier run of this study left (its MLflow experiment is renamed "
                   "NAME.archived-TIME, its storage folder likewise) and start it afresh.")
@click.option("--dry-run", is_flag=True, help="Validate and print the cells, search space and resource plan.")
@click.option("--cluster-gpus", type=click.IntRange(min=1),
              help="With --dry-run: the trials so many GPUs run at once, and in how many waves.")
@click.option("--speech", type=click.Path(exists=True, file_okay=False),
              help="AV-Digits: FSDD recordings for real spoken digits (default: DTMF tones).")
def sweep(spec_file: Path, address: str | None, tracking_uri: str | None, storage: str, name: str | None,
          resume: bool, restart: bool, dry_run: bool, cluster_gpus: int | None, speech: str | None) -> None:
    """Run the study in SPEC_FILE: every cell of its ablation axes, searched, trained and probed.

    Ctrl-C, SIGTERM and SIGHUP stop it cleanly (exit 130, 143, 129): everything logged is kept and the
    command to continue it with --resume is printed."""
    from avmae.platform.plan import describe
    from avmae.platform.prepare import absolute
    from avmae.platform.resources import ResourceError, check_fits, local_nodes
    from avmae.platform.spec import SpecError, check_name, load_spec

    if resume and restart:
        raise click.UsageError("--resume continues a study; --restart archives it and starts afresh")
    try:
        spec = load_spec(spec_file)
        spec = absolute(spec, speech)
        name = check_name(name, "--name") if name else spec.name
    except (SpecError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    tracking_uri = tracking_uri or default_tracking_uri()
    shown_uri = redact(tracking_uri)  # printed and stored without credentials
    resume_args = ["avmae", "sweep", str(spec_file), "--resume", "--name", name, "--storage", storage,
                   "--tracking-uri", shown_uri, *(["--address", address] if address else []),
                   *(["--speech", speech] if speech else [])]
    storage = study_storage(storage, name)
    if dry_run:
        named = spec.model_copy(update={"name": name})
        click.echo(describe(named, storage, shown_uri, address, cluster_gpus))
    try:  # a local runtime that can never place a trial: refused now, not after every trial timed out
        if address is None:
            check_fits(spec, local_nodes(), "this machine")
    except ResourceError as err:
        raise click.ClickException(str(err)) from None
    if dry_run:
        return

    from avmae.platform.progress import summary_table
    from avmae.platform.study import (
        Launch,
        StudyDataError,
        StudyExistsError,
        StudyInterrupted,
        run_study,
    )

    launch = Launch(name, storage, tracking_uri, address, resume, restart)
    try:
        summaries = run_study(spec, spec_file.resolve(), launch, speech)
    except StudyExistsError as err:
        raise click.ClickException(str(err)) from None
    except StudyDataError as err:
        raise click.ClickException(f"data: {err}") from None
    except (StudyInterrupted, KeyboardInterrupt) as err:
        signum = getattr(err, "signum", signal.SIGINT)
        click.echo(f"\nInterrupted by {signal.Signals(signum).name}. Everything logged so far is kept: "
                   f"MLflow {shown_uri}, checkpoints {storage}.\nContinue with: {shlex.join(resume_args)}",
                   err=True)
        sys.exit(128 + signum)
    click.echo("\n" + summary_table(summaries, spec.metric) + "\n")
    click.echo(f"MLflow:      {shown_uri}  (experiment {name!r}: mlflow ui --backend-store-uri URI)")
    click.echo(f"Checkpoints: {storage}")
    try:
        from avmae.dashboards import study_outcome
    except ImportError:
        return
    page, gains = study_outcome(name, tracking_uri, Path(f"{name}-dashboard.html"))
    click.echo(f"Dashboard:   {page}")
    if gains:
        click.echo("\n" + "\n".join(gains))
