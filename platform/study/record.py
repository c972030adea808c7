"""Where a study runs (`Launch`) and its record in the study folder (`study.json`): whether a study may start,
resume (the same spec and tracking URI) or be archived to start afresh."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import pyarrow.fs
from avmae.platform.study.spec import StudySpec
from avmae.platform.tracking.uris import redact
from pydantic import ValidationError
from ray import tune

STUDY_FILE = "study.json"  # in the study folder: the spec and tracking URI it started with
TUNE_DIR = "tune"  # in the study folder: the study's one Tune experiment


class StudyExistsError(RuntimeError):
    """A fresh run of a study that already has results (resume it, or give it another name)."""


@dataclass(frozen=True)
class Launch:
    """Where a study runs and records."""

    name: str
    storage: str  # the study's folder: a local absolute path or a URI (s3://, gs://, ...)
    tracking_uri: str
    address: str | None = None  # an existing Ray cluster; None starts a local runtime for the job
    resume: bool = False
    restart: bool = False  # archive what a study of this name left (MLflow and storage), then start afresh


def per_cell_experiments(storage: str) -> list[str]:
    """The Tune experiments of the earlier layout (`<storage>/<cell folder>/`, one per cell)."""
    fs, folder = pyarrow.fs.FileSystem.from_uri(storage)
    found = fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
    names = [f.base_name for f in found
             if f.type == pyarrow.fs.FileType.Directory and f.base_name not in (TUNE_DIR, "trials")]
    return [name for name in names if tune.Tuner.can_restore(f"{storage}/{name}")]


def archive_study(launch: Launch, client: Any) -> list[str]:
    """Move what a study of this name left aside (its MLflow experiment renamed, its storage folder moved),
    so that it starts afresh with nothing lost; returns what was archived, in words."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    archived = []
    experiment = client.get_experiment_by_name(launch.name)
    if experiment is not None:
        client.rename_experiment(experiment.experiment_id, f"{launch.name}.archived-{stamp}")
        archived.append(f"MLflow experiment {launch.name!r} -> {launch.name}.archived-{stamp}")
    fs, folder = pyarrow.fs.FileSystem.from_uri(launch.storage)
    if fs.get_file_info(folder).type != pyarrow.fs.FileType.NotFound:
        fs.move(folder, f"{folder}.archived-{stamp}")
        archived.append(f"storage {launch.storage} -> {launch.storage}.archived-{stamp}")
    return archived


def study_record(launch: Launch, spec: StudySpec, write: bool = True) -> None:
    """A fresh study must not exist yet; a resumed one must be the same spec and tracking URI. `write`: record
    a fresh one (not before its data is ready: a study whose data failed can be fixed and run again)."""
    fs, folder = pyarrow.fs.FileSystem.from_uri(launch.storage)
    path = f"{folder}/{STUDY_FILE}"
    record = {"spec": spec.model_dump(mode="json"), "tracking_uri": redact(launch.tracking_uri)}
    exists = fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound
    if not launch.resume and exists:
        raise StudyExistsError(
            f"study {launch.name!r} already ran in {launch.storage}: pass --resume to continue it, "
            "--restart to archive it and start afresh, or --name to start another"
        )
    if launch.resume and exists:
        with fs.open_input_stream(path) as f:
            old = json.loads(f.read())
        if old["tracking_uri"] != record["tracking_uri"]:
            raise StudyExistsError("--resume needs the tracking URI the study started with")
        # The budget may change on resume (that is how a study that spent it goes on) and the seeds per
        # configuration may grow (only the missing ones run); nothing else may.
        before = recorded_spec(old["spec"])
        changed = [c for c in spec_changes(before, record["spec"])
                   if not c.startswith("budget") and not (c.startswith("repeats:")
                                                          and spec.repeats > before.get("repeats", 1))]
        if changed:
            raise StudyExistsError(
                f"--resume needs the study file the study started with; changed: {'; '.join(changed)}. A "
                "field you did not edit changed with avmae's defaults: write its old value into the study "
                "file to resume.")
    if not write:
        return
    fs.create_dir(folder)
    with fs.open_output_stream(path) as f:  # a resumed study's budget and seeds are read here by its searcher
        f.write(json.dumps(record, indent=2).encode())


def recorded_repeats(storage: str) -> int | None:
    """The seeds per configuration the study at `storage` has recorded, or None where it has no record."""
    fs, folder = pyarrow.fs.FileSystem.from_uri(storage)
    path = f"{folder}/{STUDY_FILE}"
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return int(json.loads(f.read())["spec"].get("repeats", 1))


def recorded_spec(dumped: dict[str, Any]) -> dict[str, Any]:
    """A study record's spec as this avmae version reads it: fields added since it was written get their
    defaults, so a resume compares what the study trains, not which version wrote the file."""
    try:
        return StudySpec.model_validate(dumped).model_dump(mode="json")
    except ValidationError:  # a field since removed or renamed: compare as written, and name it
        return dumped


def spec_changes(before: Any, now: Any, path: str = "") -> list[str]:
    """'evaluation.pooling: 'tokens' then, 'mean' now' for every field whose value differs (dicts by key)."""
    if isinstance(before, dict) and isinstance(now, dict):
        return [change for key in sorted({*before, *now}, key=str) for change in
                spec_changes(before.get(key), now.get(key), f"{path}.{key}" if path else str(key))]
    return [] if before == now else [f"{path}: {before!r} then, {now!r} now"]
