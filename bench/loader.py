"""Data-loading throughput, clips/s per CPU core, raw .mp4 decoding vs the decoded cache.

Each figure is one process, one torch thread, no DataLoader workers, train-mode sampling (random window,
crop, flip): what one loader worker delivers; multiply by workers for a loader. "Per core" divides by the
process's CPU time, which stays meaningful on a shared machine; wall-clock rates are printed beside. Cases:
  - AV-Digits (built here, or --av-digits DIR) at a small-model geometry;
  - the real 720p VGGSound clip at the paper's geometry (10 s audio, 16x224x224 video).

    .venv/bin/python bench/loader.py --speech ../shared/data/fsdd/recordings
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import torch
from avmae.platform.data.avdigits import audio_stats, build_av_digits, read_manifest
from avmae.platform.data.cache import CachedAVDataset, write_cache
from avmae.platform.data.dataset import AVDataset
from avmae.platform.data.geometry import AUDIOSET_STATS, AudioStats, ClipGeometry
from avmae.platform.data.indexes import Clip
from avmae.platform.data.loader import load_index
from torch.utils.data import Dataset

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AVMAE_SHARED_DATA", REPO.parent / "shared" / "data"))
DIGITS_GEOMETRY = ClipGeometry(audio_frames=128, num_frames=8, img_size=64)  # the quickstart's tiny model
PAPER_GEOMETRY = ClipGeometry(audio_frames=1000, num_frames=16, img_size=224)


def clips_per_second(dataset: Dataset, seconds: float, min_items: int = 5) -> tuple[float, float]:
    """(items per CPU second, items per wall second) over at least `seconds` of wall time."""
    dataset[0]  # warm-up: imports, first open
    count, began, cpu_began = 0, time.perf_counter(), time.process_time()
    while count < min_items or time.perf_counter() - began < seconds:
        item = dataset[count % len(dataset)]
        assert "broken" not in item, item
        count += 1
    return count / (time.process_time() - cpu_began), count / (time.perf_counter() - began)


def measure(
    name: str,
    clips: Sequence[Clip],
    geometry: ClipGeometry,
    cache_dir: Path,
    seconds: float,
    stats: AudioStats = AUDIOSET_STATS,
) -> dict:
    raw = clips_per_second(AVDataset(clips, geometry, True, num_classes=10, audio_stats=stats), seconds)
    began = time.perf_counter()
    write_cache(clips, cache_dir, geometry, 10, progress=False)
    cache_seconds = time.perf_counter() - began
    cached = clips_per_second(CachedAVDataset(cache_dir, geometry, True, audio_stats=stats), seconds)
    return {
        "case": name,
        "geometry": geometry.input_shapes,
        "raw_clips_per_cpu_s": round(raw[0], 2),
        "raw_clips_per_wall_s": round(raw[1], 2),
        "cache_clips_per_cpu_s": round(cached[0], 1),
        "cache_clips_per_wall_s": round(cached[1], 1),
        "speedup": round(cached[0] / raw[0], 1),
        "cache_write_wall_s_per_clip": round(cache_seconds / len(clips), 3),
    }


@click.command()
@click.option(
    "--av-digits",
    "digits_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="An AV-Digits build to use (built here when missing).",
)
@click.option(
    "--speech",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="FSDD recordings for the AV-Digits build (else DTMF tones).",
)
@click.option("--seconds", type=float, default=10.0, show_default=True, help="Wall time per measurement.")
@click.option("--json-out", type=click.Path(path_type=Path), default=None)
def main(digits_dir: Path | None, speech: Path | None, seconds: float, json_out: Path | None) -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        digits_dir = digits_dir or Path(tmp) / "av_digits"
        fresh = read_manifest(digits_dir) is None
        build = timed_build(digits_dir, speech, fresh)
        click.echo(f"AV-Digits build: {json.dumps(build)}")
        digit_clips = load_index("av-digits", digits_dir, None, "train").clips[:64]
        results = [
            measure(
                "AV-Digits (train split)",
                digit_clips,
                DIGITS_GEOMETRY,
                Path(tmp) / "c1",
                seconds,
                audio_stats(digits_dir),
            )
        ]
        real = SHARED / "clips" / "KlsG1EnBEjc_000361.mp4"
        if real.is_file():
            clip = [Clip(real, 0)]
            results.append(measure("720p VGGSound clip", clip, PAPER_GEOMETRY, Path(tmp) / "c2", seconds))
        else:
            click.echo(f"(no {real}: set AVMAE_SHARED_DATA for the 720p case)")
    print_table(results)
    click.echo(f"load average during run: {os.getloadavg()}")
    if json_out:
        json_out.write_text(json.dumps({"build": build, "throughput": results}, indent=2))


def timed_build(digits_dir: Path, speech: Path | None, fresh: bool) -> dict[str, Any]:
    """Build AV-Digits (or find it built) and say how long it took in wall and CPU seconds."""
    build_began, cpu_began = time.perf_counter(), os.times()
    build_av_digits(digits_dir, speech=speech, progress=False)
    cpu = os.times()
    manifest = read_manifest(digits_dir)
    children = cpu.children_user + cpu.children_system - cpu_began.children_user - cpu_began.children_system
    return {
        "clips": sum(manifest["counts"].values()),
        "workers": manifest["workers"],
        "wall_s": round(time.perf_counter() - build_began, 1) if fresh else manifest["build_seconds"],
        "cpu_s": round(children, 1) if fresh else None,
        "audio": "FSDD speech" if manifest["settings"]["speech"] else "DTMF",
        "fresh": fresh,
        "audio_stats": manifest["audio_stats"],
    }


def print_table(results: list[dict[str, Any]]) -> None:
    click.echo("| case | geometry | raw clips/s/core (wall) | cache clips/s/core (wall) | speedup |")
    click.echo("|---|---|---|---|---|")
    for r in results:
        shapes = f"audio {r['geometry']['audio']}, video {r['geometry']['video']}"
        click.echo(
            f"| {r['case']} | {shapes} | {r['raw_clips_per_cpu_s']} ({r['raw_clips_per_wall_s']}) | "
            f"{r['cache_clips_per_cpu_s']} ({r['cache_clips_per_wall_s']}) | {r['speedup']}x |"
        )


if __name__ == "__main__":
    main()
