"""`avmae data ...`: build AV-Digits, fill the decoded cache, scan a dataset for broken files."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import click

from .avdigits import build_av_digits, read_manifest
from .cache import BROKEN_REPORT, CachedAVDataset, write_cache
from .config import DEFAULT_MAX_BROKEN, KINDS
from .geometry import ClipGeometry
from .indexes import Index, IndexFormatError
from .loader import cache_path, load_index
from .scan import ScanReport, TooManyBrokenError, scan_clips


@click.group("data")
def data() -> None:
    """Datasets: AV-Digits benchmark, decoded cache, broken-file scan."""


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
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--clips-per-digit", type=int, default=80, show_default=True)
@click.option("--duration", type=float, default=2.0, show_default=True, help="Clip length in seconds.")
@click.option("--size", type=int, default=96, show_default=True, help="Frame width and height in pixels.")
@click.option("--fps", type=int, default=32, show_default=True)
@click.option("--workers", type=int, default=os.cpu_count(), show_default=True)
@click.option("--motion", type=float, default=1.0, show_default=True,
              help="How far the digit travels: 1 anywhere in the frame, 0 not at all.")
@click.option("--scale-min", type=float, default=0.35, show_default=True,
              help="Smallest fraction of the frame the digit spans.")
@click.option("--scale-max", type=float, default=0.65, show_default=True,
              help="Largest fraction of the frame the digit spans.")
@click.option("--noise", type=float, default=1.0, show_default=True,
              help="Background noise, fixed and per frame: 1 is sd 18 and ~10 grey levels, 0 none.")
@click.option("--grey/--colour", default=False, show_default=True,
              help="Grey video, or a random hue per clip (which a tiny MAE learns instead of shapes).")
def av_digits(
    out: Path,
    speech: Path | None,
    seed: int,
    clips_per_digit: int,
    duration: float,
    size: int,
    fps: int,
    workers: int,
    motion: float,
    scale_min: float,
    scale_max: float,
    noise: float,
    grey: bool,
) -> None:
    """Write the AV-Digits benchmark (skips when OUT already holds the same build)."""
    try:
        index = build_av_digits(out, speech, seed, clips_per_digit, duration, size, fps, workers,
                                motion=motion, scale_min=scale_min, scale_max=scale_max, noise=noise,
                                grey=grey)
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
