"""`avmae data ...`: build AV-Digits, fill the decoded cache, scan a dataset's index and files."""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import click
from pydantic import ValidationError

from .avdigits import build_av_digits, read_manifest
from .cache import BROKEN_REPORT, CachedAVDataset, write_cache
from .codecs import default_codec
from .config import CACHE_FORMATS, DEFAULT_MAX_BROKEN, KINDS, AVDigitsBuild, DataConfig
from .distribute import ray_connection
from .geometry import ClipGeometry
from .hygiene import check_splits
from .indexes import Index, IndexFormatError
from .loader import cache_location, load_split, load_splits
from .locations import join
from .scan import ScanReport, TooManyBrokenError, scan_clips
from .shards import ShardedAVDataset, write_shards


@click.group("data")
def data() -> None:
    """Datasets: AV-Digits benchmark, decoded cache, index check and broken-file scan."""


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


IndexOption = Path | dict[str, Path] | None


def _index(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> IndexOption:
    """`--index FILE`, or `--index SPLIT=FILE` once per split (as a study's `data.index` maps them)."""
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        files: dict[str | None, Path] = {None: Path(values[0])}
    elif all("=" in value for value in values):
        files = {split: Path(file) for split, file in (value.split("=", 1) for value in values)}
    else:
        raise click.BadParameter("give one FILE, or SPLIT=FILE for every split")
    for path in files.values():
        if not path.is_file():
            raise click.BadParameter(f"{path} is not a file")
    return files[None] if None in files else files


def _config(**options: object) -> DataConfig:
    try:
        return DataConfig(**options)
    except ValidationError as err:
        raise click.ClickException(str(err)) from None


def _load(config: DataConfig, split: str | None) -> Index:
    try:
        return load_split(config, split)
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
            multiple=True,
            callback=_index,
            metavar="FILE | SPLIT=FILE",
            help="Index file (VGGSound format: default ROOT/vggsound.csv), or SPLIT=FILE once per split "
            "(AudioSet, EPIC publish one file per split).",
        ),
        click.option(
            "--split",
            default=None,
            help="Split to use (VGGSound-format split column, or a SPLIT of --index).",
        ),
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
@click.option("--out", required=True,
              help="Cache directory, or a URI (s3://bucket/prefix?endpoint_override=...) for jpeg and h264.")
@click.option("--img-size", type=int, default=224, show_default=True, help="Model crop size.")
@click.option("--frame-stride", type=int, default=4, show_default=True)
@click.option("--shard-size", type=int, default=32, show_default=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(CACHE_FORMATS),
    default="uint8",
    show_default=True,
    help="Frames in the cache; per 10 s 720p clip at the paper's geometry (docs/benchmarks.md, Training "
    "formats): uint8 26.5 MB on disk, 5.8 MB read a sample, ~850 samples per CPU-second; jpeg (q90) 3.1 MB, "
    "0.87 MB, ~67/s (GPU-decodable); h264 (GOP 8, crf 20) 0.83 MB, 0.41 MB, ~72/s. Sizes include the "
    "float16 log-mel; jpeg and h264 are two files a shard, for object storage.",
)
@click.option("--address", default=None,
              help="Decode on every node of the Ray cluster at this address (e.g. auto), one task a shard; "
              "the media and OUT must be reachable from every node. Default: --workers local processes.")
def cache(
    kind: str,
    root: Path,
    index: IndexOption,
    split: str | None,
    pattern: str | None,
    labels: Path | None,
    target: str,
    workers: int,
    out: str,
    img_size: int,
    frame_stride: int,
    shard_size: int,
    fmt: str,
    address: str | None,
) -> None:
    """Decode every clip once into OUT/<split>_r<short side>_s<stride>_v<version>[_<format>] (resumable)."""
    config = _config(kind=kind, root=root, index=index, pattern=pattern, labels=labels, target=target,
                     cache_dir=out, cache_format=fmt)
    table = _load(config, split)
    geometry = ClipGeometry(audio_frames=1, num_frames=1, img_size=img_size, frame_stride=frame_stride)
    path = cache_location(out, split, geometry, fmt)
    classes, multi_label = len(table.classes), table.multi_label
    try:
        with ray_connection(address) as cluster:
            if fmt == "uint8":
                write_cache(table.clips, path, geometry, classes, multi_label, workers, shard_size,
                            cluster=cluster)
            else:
                write_shards(table.clips, path, geometry, classes, default_codec(fmt), multi_label,
                             workers=workers, shard_size=shard_size, cluster=cluster)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    reader = (CachedAVDataset if fmt == "uint8" else ShardedAVDataset)(path, geometry, train=False)
    report = ScanReport(len(table.clips), reader.broken)
    click.echo(f"cached {len(table.clips) - len(report.broken)} of {len(table.clips)} clips in {path}")
    nodes = Counter(entry.get("node", "unrecorded") for entry in reader.entries)
    click.echo(f"decoded on {len(nodes)} node(s): " + ", ".join(f"{n} ({c} clips)" for n, c in nodes.items()))
    if report.broken:
        click.echo(f"skipped {report.describe()}")
        click.echo(f"every skipped clip, with its index line: {join(path, BROKEN_REPORT)}")


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
    index: IndexOption,
    split: str | None,
    pattern: str | None,
    labels: Path | None,
    target: str,
    workers: int,
    max_broken: float,
) -> None:
    """Check the index, then probe every clip (of --split, else of every split); list what is wrong with
    its file:line; exit non-zero on an index error or above --max-broken.

    The index check reads every split the index holds, whatever --split says. Errors (a study refuses to
    start on them): conflicting labels, one clip under two labels; overlap, one clip in two splits (a test
    clip seen in training). Warning (reported, the study runs): duplicate rows, one clip listed twice in a
    split with the same label, which only draws it twice as often.
    """
    config = _config(kind=kind, root=root, index=index, pattern=pattern, labels=labels, target=target)
    try:
        splits = load_splits(config)
    except (IndexFormatError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    hygiene = check_splits(splits)
    click.echo(hygiene.describe(examples=len(hygiene.findings)))
    tables = [_load(config, split)] if split is not None else list(splits.values())
    report = scan_clips([clip for table in tables for clip in table.clips], workers=workers, progress=True)
    click.echo(report.describe())
    if hygiene.errors:
        raise click.ClickException("the index has errors (listed above with their file:line): fix those rows")
    try:
        report.check(max_broken)
    except TooManyBrokenError as err:
        raise click.ClickException(str(err)) from err
