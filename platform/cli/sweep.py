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
from typing import TYPE_CHECKING

import click
from avmae.platform.tracking.uris import redact

if TYPE_CHECKING:  # the command loads torch and Ray only when it runs
    from avmae.platform.study.progress import CellSummary
    from avmae.platform.study.record import Launch
    from avmae.platform.study.spec import StudySpec

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
@click.option("--resume", is_flag=True,
              help="Continue a study: restore its Tune experiment, reuse its MLflow runs.")
@click.option("--restart", is_flag=True,
              help="Archive what an earlier run of this study left (its MLflow experiment is renamed "
                   "NAME.archived-TIME, its storage folder likewise) and start it afresh.")
@click.option("--dry-run", is_flag=True, help="Validate and print the cells, search space and resource plan.")
@click.option("--cluster-gpus", type=click.IntRange(min=1),
              help="With --dry-run: the trials so many GPUs run at once, and in how many waves.")
@click.option("--clips-per-s", type=click.FloatRange(min=0, min_open=True),
              help="With --dry-run: clips/s each worker trains on, for the data feed it needs (default for "
                   "GPU studies: 1,066, the ViT-B step on an H200; docs/benchmarks.md).")
@click.option("--speech", type=click.Path(exists=True, file_okay=False),
              help="AV-Digits: FSDD recordings for real spoken digits (default: DTMF tones).")
@click.option("--repeats", type=click.IntRange(min=1),
              help="Seeds per configuration, instead of the file's `repeats`. With --resume only the missing "
                   "seeds run; the finished ones are kept. A study's closing lines say how many settle the "
                   "gains still open.")
def sweep(spec_file: Path, address: str | None, tracking_uri: str | None, storage: str, name: str | None,
          resume: bool, restart: bool, dry_run: bool, cluster_gpus: int | None, clips_per_s: float | None,
          speech: str | None, repeats: int | None) -> None:
    """Run the study in SPEC_FILE: every cell of its ablation axes, searched, trained and probed.

    Ctrl-C, SIGTERM and SIGHUP stop it cleanly (exit 130, 143, 129): everything logged is kept and the
    command to continue it with --resume is printed."""
    if resume and restart:
        raise click.UsageError("--resume continues a study; --restart archives it and starts afresh")
    spec, name = load_study(spec_file, speech, name)
    tracking_uri = tracking_uri or default_tracking_uri()
    shown_uri = redact(tracking_uri)  # printed and stored without credentials
    resume_args = ["avmae", "sweep", str(spec_file), "--resume", "--name", name, "--storage", storage,
                   "--tracking-uri", shown_uri, *(["--address", address] if address else []),
                   *(["--speech", speech] if speech else [])]
    storage = study_storage(storage, name)
    spec = with_seeds(spec, repeats, storage if resume else None)
    if dry_run:
        from avmae.platform.study.plan import describe

        named = spec.model_copy(update={"name": name})
        click.echo(describe(named, storage, shown_uri, address, cluster_gpus, clips_per_s))
    if not (dry_run and cluster_gpus):  # a plan for a cluster is not refused for what this machine lacks
        refuse_unplaceable(spec, address)
    if dry_run:
        return

    from avmae.platform.study.record import Launch

    launch = Launch(name, storage, tracking_uri, address, resume, restart)
    summaries = run_or_exit(spec, spec_file, launch, speech, [*resume_args, "--repeats", str(spec.repeats)])
    report(summaries, spec, name, tracking_uri, storage, resume_args)


def load_study(spec_file: Path, speech: str | None, name: str | None) -> tuple[StudySpec, str]:
    """The validated study with absolute data paths, and its name (`--name` or the file's)."""
    from avmae.platform.study.prepare import absolute
    from avmae.platform.study.spec import SpecError, check_name, load_spec

    try:
        spec = absolute(load_spec(spec_file), speech)
        return spec, check_name(name, "--name") if name else spec.name
    except (SpecError, ValueError) as err:
        raise click.ClickException(str(err)) from None


def with_seeds(spec: StudySpec, repeats: int | None, resumed_storage: str | None) -> StudySpec:
    """The study with `--repeats` seeds per configuration, else its file's; a resumed study keeps the seeds a
    `--resume --repeats` gave it, so a later plain `--resume` goes on with them."""
    from avmae.platform.study.record import recorded_repeats

    recorded = recorded_repeats(resumed_storage) if resumed_storage else None
    wanted = repeats or max(spec.repeats, recorded or 0)
    return spec if wanted == spec.repeats else spec.model_copy(update={"repeats": wanted})


def refuse_unplaceable(spec: StudySpec, address: str | None) -> None:
    """A local runtime that can never place a trial is refused now, not after every trial timed out."""
    from avmae.platform.study.resources import ResourceError, check_fits, local_nodes

    try:
        if address is None:
            check_fits(spec, local_nodes(), "this machine")
    except ResourceError as err:
        raise click.ClickException(str(err)) from None


def run_or_exit(spec: StudySpec, spec_file: Path, launch: Launch, speech: str | None,
                resume_args: list[str]) -> list[CellSummary]:
    """Run the study; a refusal becomes a one-line error, an interruption the exit code 128 + signal with
    the command that resumes it."""
    from avmae.platform.study.record import StudyExistsError
    from avmae.platform.study.runner import StudyDataError, StudyInterrupted, run_study

    try:
        return run_study(spec, spec_file.resolve(), launch, speech)
    except StudyExistsError as err:
        raise click.ClickException(str(err)) from None
    except StudyDataError as err:
        raise click.ClickException(f"data: {err}") from None
    except (StudyInterrupted, KeyboardInterrupt) as err:
        signum = getattr(err, "signum", signal.SIGINT)
        click.echo(f"\nInterrupted by {signal.Signals(signum).name}. Everything logged so far is kept: "
                   f"MLflow {redact(launch.tracking_uri)}, checkpoints {launch.storage}.\n"
                   f"Continue with: {shlex.join(resume_args)}", err=True)
        sys.exit(128 + signum)


def report(summaries: list[CellSummary], spec: StudySpec, name: str, tracking_uri: str, storage: str,
           resume_args: list[str]) -> None:
    """The closing lines: the summary table, where the results are, the dashboard, the gain lines, and the
    command that adds the seeds which would settle the gains still open."""
    from avmae.platform.study.progress import summary_table

    click.echo("\n" + summary_table(summaries, spec.metric) + "\n")
    shown_uri = redact(tracking_uri)
    click.echo(f"MLflow:      {shown_uri}  (experiment {name!r}: mlflow ui --backend-store-uri URI)")
    click.echo(f"Checkpoints: {storage}")
    try:
        from avmae.dashboards import study_outcome
    except ImportError:
        return
    outcome = study_outcome(name, tracking_uri, Path(f"{name}-dashboard.html"))
    click.echo(f"Dashboard:   {outcome.page}")
    if outcome.lines:
        click.echo("\n" + "\n".join(outcome.lines))
    if outcome.settle_repeats is not None and outcome.settle_repeats > spec.repeats:
        more = shlex.join([*resume_args, "--repeats", str(outcome.settle_repeats)])
        click.echo(f"Add them (only the missing seeds run; the {spec.repeats} per configuration are kept): "
                   f"{more}")
