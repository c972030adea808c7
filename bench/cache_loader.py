"""Decoded-cache throughput of a real DataLoader (worker processes, collated batches, pinned memory) at the
paper's geometry: what feeds the GPU step (issue 6 item 3). Timing needs only torch and numpy, so it runs on
the GPU machine from a bare checkout; build the cache where decord is installed:

    .venv/bin/python bench/cache_loader.py build data_cache/bench_paper      # here: the 720p clip, once
    python3 bench/cache_loader.py time data_cache/bench_paper --workers 16  # there: clips/s with 16 workers

The cache holds one real clip, sampled with replacement: every item still reads its memmapped frames and
log-mel, draws a window, crops, flips and normalises. Reads come from the page cache, so this measures the
CPU side of loading, not a disk.

Which side limits it: each run also reports the CPU cores the main process used (receiving batches from the
workers, and the pin-memory thread) and the cores all workers used together. Main near 1-2 cores with the
workers well below their count means the main process is the bottleneck; `--pin on off` and `--to-device`
(each batch copied to the GPU as the trainer does) tell which part of it.

Two loaders, `--loader workers threads` (both by default, alternating, `--repeat` times): `workers` is the
DataLoader with worker processes (what `build_loader` gave before issue 16); `threads` is what `build_loader`
gives a cached dataset now, `batch_reader.CachedBatches` (N reader threads in the main process). `--workers N`
is N processes for the one, N threads for the other. `clips_per_core` divides clips/s by the cores the run
used (main process, threads included, plus workers): per-core cost stays readable on a shared machine.

    taskset -c 0 .venv/bin/python bench/cache_loader.py time data_cache/bench_paper --workers 1 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_loader(kind: str, folder: Path, workers: int, batch: int, pin: bool) -> DataLoader:
    """The two loaders over the same dataset, sampler and collation; `threads` as `build_loader` makes it."""
    cache = import_module("avmae.platform.data.cache")
    collate = import_module("avmae.platform.data.collate")  # the platform's own collation
    dataset = cache.CachedAVDataset(folder, geometry(), train=True)
    sampler = RandomSampler(dataset, replacement=True, num_samples=10**8)
    collate_fn = collate.AVCollate(geometry(), num_classes=10, multi_label=False)
    if kind == "threads":
        reader = import_module("avmae.platform.data.batch_reader")
        return DataLoader(reader.CachedBatches(dataset, threads=workers, pin_memory=pin), batch_size=batch,
                          sampler=sampler, collate_fn=collate_fn, pin_memory=pin)
    return DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                      pin_memory=pin, persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


def time_loader(kind: str, folder: Path, workers: int, batch: int, seconds: float, pin: bool,
                to_device: bool) -> dict:
    loader = make_loader(kind, folder, workers, batch, pin)
    batches = iter(loader)
    next(batches)  # workers started and warm
    worker_pids = [w.pid for w in getattr(batches, "_workers", [])]  # bench-only peek at DataLoader's workers

    def cpu() -> tuple[float, float]:
        return time.process_time(), sum(cpu_seconds(pid) for pid in worker_pids)

    clips, (main0, workers0), began = 0, cpu(), time.perf_counter()
    while time.perf_counter() - began < seconds:
        item = next(batches)
        if to_device:  # as the trainer's loader does: non-blocking copies from (pinned) host memory
            for key in ("audio", "video"):
                item[key].to("cuda", non_blocking=True)
        clips += item["video"].shape[0]
    if to_device:
        torch.cuda.synchronize()
    wall = time.perf_counter() - began
    main1, workers1 = cpu()
    cores = (main1 - main0 + workers1 - workers0) / wall
    del batches  # stop this run's worker processes before the next run starts
    return {"loader": kind, "workers": workers, "batch": batch, "pin": pin, "to_device": to_device,
            "clips": clips, "seconds": round(wall, 1), "clips_per_s": round(clips / wall, 1),
            "main_cores": round((main1 - main0) / wall, 2),
            "worker_cores": round((workers1 - workers0) / wall, 2),
            "clips_per_core": round(clips / wall / cores, 1) if cores else None,
            "cpus": len(os.sched_getaffinity(0))}


def summary(results: list[dict]) -> list[dict]:
    """Median clips/s and clips/core per (loader, workers, pin), and each loader against `workers`."""
    groups: dict[tuple, list[dict]] = {}
    for run in results:
        groups.setdefault((run["loader"], run["workers"], run["pin"]), []).append(run)
    rows = [{"loader": loader, "workers": workers, "pin": pin, "runs": len(runs),
             "clips_per_s": statistics.median(r["clips_per_s"] for r in runs),
             "clips_per_core": statistics.median(r["clips_per_core"] or 0 for r in runs)}
            for (loader, workers, pin), runs in groups.items()]
    for row in rows:
        base = groups.get(("workers", row["workers"], row["pin"]))
        if base:
            reference = statistics.median(r["clips_per_s"] for r in base)
            row["x_workers"] = round(row["clips_per_s"] / reference, 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("build", "time"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--workers", type=int, nargs="+", default=[os.cpu_count()])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    cuda = torch.cuda.is_available()
    parser.add_argument("--pin", choices=("on", "off"), nargs="+", default=["on" if cuda else "off"],
                        help="pinned-memory batches (needs CUDA); several values: one run each")
    parser.add_argument("--to-device", action="store_true", help="copy each batch to the GPU (needs CUDA)")
    parser.add_argument("--loader", choices=("workers", "threads"), nargs="+", default=["workers", "threads"],
                        help="worker processes (the old loader) and/or reader threads (build_loader's now)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every run, alternating loaders")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.mode == "build":
        build(args.folder)
        return
    torch.set_num_threads(1)
    results = []
    for _ in range(args.repeat):
        for workers in args.workers:
            for pin in args.pin:
                for kind in args.loader:
                    results.append(time_loader(kind, args.folder, workers, args.batch, args.seconds,
                                               pin == "on", args.to_device))
                    print(json.dumps(results[-1]), flush=True)
    rows = summary(results)
    for row in rows:
        print("median", json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "medians": rows}, indent=1))


if __name__ == "__main__":
    main()
