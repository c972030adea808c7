"""`avmae mlflow flush STUDY_DIR`: send to MLflow what a sweep left in its queue (`tracking.queue`): its
trials' records and its study-level writes (reference rows, failures, its end), for a study that is not
running (a sweep that ended while the server was down, or whose driver was killed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import pyarrow.fs
from avmae.platform.tracking.uris import MASK, redact

STUDY_FILE = "study.json"  # study.STUDY_FILE (study.py imports Ray, which this command does not need)


def study_tracking_uri(study_dir: str) -> str | None:
    """The tracking URI the study recorded, unless its credentials were masked; else $MLFLOW_TRACKING_URI."""
    fs, folder = pyarrow.fs.FileSystem.from_uri(study_dir)
    try:
        with fs.open_input_stream(f"{folder}/{STUDY_FILE}") as f:
            recorded = json.loads(f.read())["tracking_uri"]
    except FileNotFoundError:
        recorded = None
    own = os.environ.get("MLFLOW_TRACKING_URI")
    if recorded and MASK in recorded:
        return own if own and redact(own) == recorded else None
    return recorded or own


@click.group("mlflow")
def mlflow_group() -> None:
    """A study's MLflow records."""


@click.command()
@click.argument("study_dir")
@click.option("--tracking-uri", help="MLflow tracking URI (default: the study's, from its study.json).")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="Give up after so many seconds without an empty queue (what is left stays queued).")
def flush(study_dir: str, tracking_uri: str | None, wait_s: float) -> None:
    """Send the writes queued in STUDY_DIR (`<storage>/<study>`) to MLflow; exit 1 if some are left."""
    from avmae.platform.tracking.journal import Journal
    from avmae.platform.tracking.queue import JOURNAL_DIR, open_queue

    if "://" not in study_dir:
        study_dir = str(Path(study_dir).resolve())
    uri = tracking_uri or study_tracking_uri(study_dir)
    if uri is None:
        raise click.ClickException("no tracking URI without credentials was found for the study: pass "
                                   "--tracking-uri")
    journal = f"{study_dir}/{JOURNAL_DIR}"
    queued = len(Journal(journal).pending())
    queue = open_queue(journal, uri)
    left = queue.close(wait_s)
    click.echo(f"Sent {queued - left} of {queued} queued writes to MLflow at {redact(uri)}.")
    if left:
        raise click.ClickException(f"{left} writes are still queued in {queue.journal.uri}: run this again "
                                   "once MLflow answers")


mlflow_group.add_command(flush)
