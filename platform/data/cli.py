"""`avmae data ...`: build AV-Digits, fill the decoded cache, scan a dataset for broken files."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import click
from pydantic import ValidationError

from .avdigits import build_av_digits, read_manifest
from .cache import BROKEN_REPORT, CachedAVDataset, write_cache
from .config import DEFAULT_MAX_BROKEN, KINDS, AVDigitsBuild
from .geometry import ClipGeometry
from .indexes import Index, IndexFormatError
from .loader import cache_path, load_index
from .scan import ScanReport, TooManyBrokenError, scan_clips


@click.group("data")
def data() -> None:
    """Datasets: AV-Digits benchmark, decoded cache, broken-file scan."""


def build_options(command: Callable) -> Callable:
    """One option per `AVDigitsBuild` field, with its default and description: the settings are written once,
    in the model, for the CLI, a study's `data.av_digits` and `build_av_digits` alike."""
    for name, field in reversed(AVDigitsBuild.model_fields.items()):
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            option = click.option(f"{flag}/--no-{flag[2:]}", name, default=field.default, show_default=True,
                                  help=field.description)
        else:
            option = click.option(flag, name, type=field.annotation, default=field.default, show_default=True,
                                  help=field.description)
        command = option(command)
    return command


def option_error(error: dict) -> str:
    """'--size: size must be even ...' for one pydantic error of `AVDigitsBuild` (the option it came from)."""
    message = str(error["ctx"]["error"]) if "error" in error.get("ctx", {}) else error["msg"]
    return "".join(f"--{str(part).replace('_', '-')}: " for part in error["loc"]) + message


@data.command("av-digits")
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Folder for the .mp4 files and index."
)
@click.option(
    "--speech",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="FSDD recordings folder; without it the audio is DTMF tones.",
)
@click.option("--workers", type=int, default=os.cpu_count(), show_default=True)
@build_options
def av_digits(out: Path, speech: Path | None, workers: int, **settings: object) -> None:
    """Write the AV-Digits benchmark (skips when OUT already holds the same build)."""
    try:
        build = AVDigitsBuild(**settings)
    except ValidationError as err:
        raise click.ClickException("; ".join(map(option_error, err.errors()))) from None
    try:
        index = build_av_digits(out, build, speech, workers)
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err
    manifest = read_manifest(out)
    click.echo(
        f"{index}: {manifest['counts']}, audio stats {manifest['audio_stats']}, "
        f"built in {manifest['build_seconds']} s"
    )


def _load(*args: object) -> Index:
    try:
        return load_index(*args)
    except (IndexFormatError, ValueError) as err:
        raise click.ClickException(str(err)) from err


def _dataset_options(command: Callable) -> Callable:
    """Options shared by commands that read an index."""
    options = [
        click.option("--kind", type=click.Choice(KINDS), default="vggsound", show_default=True),
        click.option(
            "--root",
            type=click.Path(exists=True, file_okay=False, path_type=Path),
            required=True,
            help="Folder holding the media files.",
        ),
        click.option(
            "--index",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            help="Index file (VGGSound format: default ROOT/vggsound.csv).",
        ),
        click.option("--split", default=None, help="Split to use (VGGSound-format split column)."),
        click.option("--pattern", default=None, help="File name pattern, str.format fields per kind."),
        click.option(
            "--labels",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            help="AudioSet class_labels_indices.csv.",
        ),
        click.option(
            "--target",
            type=click.Choice(["verb", "noun"]),
            default="verb",
            show_default=True,
            help="EPIC label column.",
        ),
        click.option("--workers", type=int, default=os.cpu_count(), show_default=True),
    ]
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), command)


@data.command("cache")
@_dataset_options
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Cache directory.")
@click.option("--img-size", type=int, default=224, show_default=True, help="Model crop size.")
@click.option("--frame-stride", type=int, default=4, show_default=True)
@click.option("--shard-size", type=int, default=32, show_default=True)
def cache(
    kind: str,
    root: Path,
    index: Path | None,
    split: str | None,
    pattern: str | None,
    labels: Path | None,
    target: str,
    workers: int,
    out: Path,
    img_size: int,
    frame_stride: int,
    shard_size: int,
) -> None:
    """Decode every clip once into OUT/<split>_r<short side>_s<stride> (resumable)."""
    table = _load(kind, root, index, split, pattern, labels, target)
    geometry = ClipGeometry(audio_frames=1, num_frames=1, img_size=img_size, frame_stride=frame_stride)
    path = cache_path(out, split, geometry)
    try:
        write_cache(table.clips, path, geometry, len(table.classes), table.multi_label, workers, shard_size)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    report = ScanReport(len(table.clips), CachedAVDataset(path, geometry, train=False).broken)
    click.echo(f"cached {len(table.clips) - len(report.broken)} of {len(table.clips)} clips in {path}")
    if report.broken:
        click.echo(f"skipped {report.describe()}")
        click.echo(f"every skipped clip, with its index line: {path / BROKEN_REPORT}")


@data.command("scan")
@_dataset_options
@click.option(
    "--max-broken",
    type=float,
    default=DEFAULT_MAX_BROKEN,
    show_default=True,
    help="Fail when more than this fraction is broken.",
)
def scan(
    kind: str,
    root: Path,
    index: Path | None,
    split: str | None,
    pattern: str | None,
    labels: Path | None,
    target: str,
    workers: int,
    max_broken: float,
) -> None:
    """Probe every clip; list broken ones by reason; exit non-zero above --max-broken."""
    table = _load(kind, root, index, split, pattern, labels, target)
    report = scan_clips(table.clips, workers=workers, progress=True)
    click.echo(report.describe())
    try:
        report.check(max_broken)
    except TooManyBrokenError as err:
        raise click.ClickException(str(err)) from err
