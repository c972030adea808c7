"""Batched JPEG decoding of training samples on a device (torchvision: nvjpeg on CUDA, libjpeg-turbo on the
CPU): what the `jpeg` cache format costs when the GPU decodes it (issue 25). Needs only torch, torchvision and
numpy, so it runs from a bare checkout on the GPU machine, on samples written here by `bench/formats.py`:

    .venv/bin/python bench/formats.py --clips 720p --geometries paper --save-jpeg data_cache/jpeg_samples.npz
    python3 bench/nvjpeg.py data_cache/jpeg_samples.npz --device cuda --batch 32 256 --json $OUT/nvjpeg.json

Per batch size: clips/s (wall, synchronised) and CPU-ms per clip of the process, one decode call per batch of
`batch` samples x their frames, each image then cropped to the model's size on the device.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.io import decode_jpeg


def load_samples(path: Path) -> tuple[list[list[np.ndarray]], int]:
    """(samples, each a list of JPEG blobs, crop size) from a `formats.py --save-jpeg` file."""
    with np.load(path) as data:
        blob, ends, frames, size = data["blob"], data["ends"], int(data["frames"]), int(data["size"])
    images = [blob[a:b] for a, b in zip(ends[:-1], ends[1:], strict=True)]
    return [images[i : i + frames] for i in range(0, len(images) - frames + 1, frames)], size


def device_decode(samples: list[list[np.ndarray]], size: int, device: str, seconds: float,
                  batch: int) -> dict:
    """Clips/s and CPU-ms per clip of `batch` samples decoded in one call on `device`, then cropped."""
    chosen = [samples[i % len(samples)] for i in range(batch)]
    flat = [torch.from_numpy(b) for sample in chosen for b in sample]

    def step() -> None:
        images = decode_jpeg(flat, device=device)
        torch.stack([image[:, :size, :size] for image in images])

    step()  # warm-up: nvjpeg handles, CUDA context
    count, wall, cpu = 0, time.perf_counter(), time.process_time()
    while count < 2 * batch or time.perf_counter() - wall < seconds:
        step()
        count += batch
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"device": device, "batch": batch, "clips_per_s": round(count / wall, 1),
            "cpu_ms_per_clip": round(cpu * 1000 / count, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("samples", type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    samples, size = load_samples(args.samples)
    rows = [device_decode(samples, size, args.device, args.seconds, batch) for batch in args.batch]
    for row in rows:
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
