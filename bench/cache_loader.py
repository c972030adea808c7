"""Decoded-cache throughput of a real DataLoader (worker processes, collated batches, pinned memory) at the
paper's geometry: what feeds the GPU step (issue 6 item 3). Timing needs only torch and numpy, so it runs on
the GPU machine from a bare checkout; build the cache where decord is installed:

    .venv/bin/python bench/cache_loader.py build data_cache/bench_paper      # here: the 720p clip, once
    python3 bench/cache_loader.py time data_cache/bench_paper --workers 16  # there: clips/s with 16 workers

The cache holds one real clip, sampled with replacement: every item still reads its memmapped frames and
log-mel, draws a window, crops, flips and normalises. Reads come from the page cache, so this measures the
CPU side of loading, not a disk.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from checkout import REPO, import_module
from torch.utils.data import DataLoader, RandomSampler

SHARED = Path(os.environ.get("AVMAE_SHARED_DATA", REPO.parent / "shared" / "data"))
CLIP = SHARED / "clips" / "KlsG1EnBEjc_000361.mp4"  # 720p H.264 + AAC, 10 s


def geometry():
    g = import_module("avmae.platform.data.geometry")
    return g.ClipGeometry(audio_frames=1000, num_frames=16, img_size=224)  # AudioSet input, as the step bench


def build(folder: Path) -> None:
    data = import_module("avmae.platform.data")
    data.write_cache([data.Clip(CLIP, 0)], folder, geometry(), num_classes=10, progress=False)
    size = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
    print(f"cache of {CLIP.name} at {geometry().input_shapes} in {folder} ({size:.0f} MiB)")


def time_loader(folder: Path, workers: int, batch: int, seconds: float) -> dict:
    cache = import_module("avmae.platform.data.cache")
    collate = import_module("avmae.platform.data.collate")  # the platform's own collation
    dataset = cache.CachedAVDataset(folder, geometry(), train=True)
    sampler = RandomSampler(dataset, replacement=True, num_samples=10**8)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                        collate_fn=collate.AVCollate(geometry(), num_classes=10, multi_label=False),
                        pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
                        prefetch_factor=4 if workers else None)
    batches = iter(loader)
    next(batches)  # workers started and warm
    clips, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        clips += next(batches)["video"].shape[0]
    wall = time.perf_counter() - began
    return {"workers": workers, "batch": batch, "clips": clips, "seconds": round(wall, 1),
            "clips_per_s": round(clips / wall, 1), "cpus": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("build", "time"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--workers", type=int, nargs="+", default=[os.cpu_count()])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.mode == "build":
        build(args.folder)
        return
    torch.set_num_threads(1)
    results = [time_loader(args.folder, w, args.batch, args.seconds) for w in args.workers]
    for r in results:
        print(json.dumps(r), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
