"""Preparing a compressed cache: today's local process pool against Ray tasks and Ray Data, on the same
clips, shards and cores, in one run (issue 25 part 2).

Each design writes the same clips into a fresh folder with the same shard writer (`shards.ShardWriter`):
`pool` is `write_shards(workers=N)` (a ProcessPoolExecutor); `ray-tasks` is `write_shards(cluster=True)`
(`distribute.run_jobs`: one Ray task of 1 CPU a shard); `ray-data` hands the same jobs to
`ray.data.from_items(...).map(...)` (one row and block a shard, 1 CPU each). Ray runs as a private local
runtime of N CPUs, started and its N worker processes warmed before the timers (a cluster is up before a
preparation, and a node starts its workers once). Reported: wall seconds
and clips/s per core (clips / wall / N).

    .venv/bin/python bench/prepare_cluster.py --clips-per-digit 8 --cores 2 --json prepare.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from avmae.platform.data.avdigits import build_av_digits
from avmae.platform.data.codecs import default_codec
from avmae.platform.data.config import AVDigitsBuild
from avmae.platform.data.geometry import ClipGeometry
from avmae.platform.data.indexes import Clip
from avmae.platform.data.loader import load_index
from avmae.platform.data.shards import ShardWriter, write_shards
from avmae.platform.data.sink import ShardSink

GEOMETRY = ClipGeometry(audio_frames=1, num_frames=1, img_size=64, frame_stride=4)


def ray_data_write(clips: list[Clip], out: Path, fmt: str, shard_size: int) -> None:
    """The same shard jobs through Ray Data: one row (and block) a shard, mapped with 1 CPU each."""
    import ray

    writer, sink, numbered = ShardWriter(default_codec(fmt)), ShardSink(out), list(enumerate(clips))
    rows = [{"shard": s // shard_size, "clips": numbered[s : s + shard_size]}
            for s in range(0, len(clips), shard_size)]

    def write(row: dict) -> dict:
        return {"broken": writer(sink, row["shard"], row["clips"], GEOMETRY, 1.0)}

    ray.data.from_items(rows, override_num_blocks=len(rows)).map(write, num_cpus=1).take_all()


def warm_up(n: int) -> None:
    """Start every Ray worker process and import the writer's modules in it: paid once per cluster."""
    import ray

    @ray.remote(num_cpus=1)
    def ready() -> None:
        import avmae.platform.data.shards  # noqa: F401

        time.sleep(1)

    ray.get([ready.remote() for _ in range(n)])


def timed(run: Callable[[Path], object], root: Path, name: str) -> float:
    start = time.perf_counter()
    run(root / name)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips-per-digit", type=int, default=8)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=4)
    parser.add_argument("--format", default="h264", choices=["jpeg", "h264"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import ray

    root = Path(tempfile.mkdtemp(prefix="prepare-bench-"))
    build_av_digits(root / "media", AVDigitsBuild(clips_per_digit=args.clips_per_digit), workers=args.cores,
                    progress=False)
    clips = load_index("av-digits", root / "media", None, None).clips
    codec, n = default_codec(args.format), args.cores

    def shards(out: Path, **kw: object) -> object:
        return write_shards(clips, out, GEOMETRY, 10, codec, shard_size=args.shard_size, progress=False,
                            min_clip_s=1.0, **kw)

    ray.init(num_cpus=n, include_dashboard=False, logging_level="ERROR")
    warm_up(n)
    seconds = {
        "pool": timed(lambda out: shards(out, workers=n), root, "pool"),
        "ray-tasks": timed(lambda out: shards(out, cluster=True), root, "tasks"),
        "ray-data": timed(lambda out: ray_data_write(clips, out, args.format, args.shard_size), root, "data"),
    }
    ray.shutdown()
    rows = {k: {"wall_s": round(v, 2), "clips_per_s_per_core": round(len(clips) / v / n, 2)}
            for k, v in seconds.items()}
    print(f"{len(clips)} clips, {args.format}, shards of {args.shard_size}, {n} cores")
    for name, row in rows.items():
        print(f"  {name:10s} {row['wall_s']:7.2f} s  {row['clips_per_s_per_core']:6.2f} clips/s per core")
    if args.json:
        args.json.write_text(json.dumps({"clips": len(clips), "cores": n, "format": args.format,
                                         "shard_size": args.shard_size, "designs": rows}, indent=1))


if __name__ == "__main__":
    main()
