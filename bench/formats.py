"""Training formats against the uint8 decoded cache, on the same clips and geometry (issue 25 part 1).

For each clip (the 720p and 144p 10 s clips) and geometry (the paper's: 16x224² video, short side 256, stride
4; AV-Digits': 8x64², short side 73) every candidate stores the cache's stored frames, and the table gives:
bytes on disk per clip (frames + float16 log-mel), bytes one sample reads (16 frames from the codec's keyframe
on, plus the log-mel window), single-thread CPU-ms to decode one sample's frames (time.process_time), PSNR of
all decoded frames against the uint8 cache, and, for the formats `DataConfig.cache_format` offers, the
platform's batch reader (`CachedBatches` / `shards.ShardBatches`, train mode) in clips per CPU-second.

    .venv/bin/python bench/formats.py --json formats.json

`--device DEV` also decodes the `jpeg` format's samples 32 at a time in one call on DEV (`bench/nvjpeg.py`:
nvjpeg on cuda) and reports clips/s and CPU-ms per clip. `--save-jpeg FILE` writes the jpeg-q90 samples of the
first clip and geometry for `bench/nvjpeg.py` on a machine without avmae or PyAV. `--tiny` is a check of the
script: the 144p clip, a small geometry, short timings.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from avmae.platform.data.batch_reader import CachedBatches
from avmae.platform.data.cache import CachedAVDataset, decode_whole, write_cache
from avmae.platform.data.codecs import H264Codec, JpegCodec, decode_video, encode_video
from avmae.platform.data.geometry import ClipGeometry
from avmae.platform.data.indexes import Clip
from avmae.platform.data.shards import ShardBatches, ShardedAVDataset, write_shards
from nvjpeg import device_decode
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AVMAE_SHARED_DATA", REPO.parent / "shared" / "data"))
CLIPS = {"720p": "KlsG1EnBEjc_000361.mp4", "144p": "00W1lcxW-WU_40.000.mp4"}
GEOMETRIES = {
    "paper": ClipGeometry(audio_frames=1000, num_frames=16, img_size=224),
    "digits": ClipGeometry(audio_frames=128, num_frames=8, img_size=64),
    "tiny": ClipGeometry(audio_frames=128, num_frames=4, img_size=32),
}


@dataclass(frozen=True)
class WebpCodec:
    """Bench-only candidate: lossy WebP per frame (pillow)."""

    quality: int = 90

    def keyframe(self, index: int) -> int:
        return index

    def encode(self, frames: np.ndarray) -> list[bytes]:
        out = []
        for frame in frames:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, "WEBP", quality=self.quality, method=4)
            out.append(buffer.getvalue())
        return out

    def decode(self, blobs: list[np.ndarray], height: int, width: int) -> np.ndarray:
        return np.stack([np.asarray(Image.open(io.BytesIO(b.tobytes())).convert("RGB")) for b in blobs])


@dataclass(frozen=True)
class Av1Codec:
    """Bench-only candidate: AV1 (SVT-AV1 encoder, low delay; dav1d decoder), a keyframe every `gop`
    frames, even sizes."""

    gop: int = 8
    crf: int = 30

    def keyframe(self, index: int) -> int:
        return index - index % self.gop

    def encode(self, frames: np.ndarray) -> list[bytes]:
        options = {"crf": str(self.crf), "svtav1-params": "pred-struct=1:lp=1"}
        return encode_video(frames, "libsvtav1", options, gop=self.gop)

    def decode(self, blobs: list[np.ndarray], height: int, width: int) -> np.ndarray:
        return decode_video(blobs, "libdav1d", height, width)


CANDIDATES = {  # name -> (codec, cache_format the platform reads it with, or None: bench only)
    "jpeg-q90": (JpegCodec(90), "jpeg"),
    "jpeg-q80": (JpegCodec(80), "jpeg"),
    "webp-q90": (WebpCodec(90), None),
    "h264-g8-crf20": (H264Codec(8, 20), "h264"),
    "h264-g16-crf23": (H264Codec(16, 23), "h264"),
    "av1-g8-crf30": (Av1Codec(8, 30), None),
}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return round(10 * np.log10(255**2 / mse), 2) if mse else float("inf")


def window_starts(stored: int, g: ClipGeometry) -> list[int]:
    """Every first stored frame a window can have (windows past the clip's end repeat its last frame)."""
    return list(range(max(stored - g.num_frames, 0) + 1))


def sample_reads(codec, blobs: list[bytes], g: ClipGeometry) -> float:
    """Mean bytes of frames one sample reads: its stored frames from the codec's keyframe of the first on."""
    ends = np.cumsum([0, *map(len, blobs)])
    spans = [ends[min(lo + g.num_frames, len(blobs))] - ends[codec.keyframe(lo)]
             for lo in window_starts(len(blobs), g)]
    return float(np.mean(spans))


def decode_ms(
    codec, blobs: list[np.ndarray], shape: tuple[int, int], g: ClipGeometry, seconds: float
) -> float:
    """Single-thread CPU-ms to decode one sample's frames, windows drawn at random."""
    rng, count, began = np.random.default_rng(0), 0, time.process_time()
    starts = window_starts(len(blobs), g)
    while count < 3 or time.process_time() - began < seconds:
        lo = int(rng.choice(starts))
        hi = min(lo + g.num_frames, len(blobs))
        codec.decode(blobs[codec.keyframe(lo) : hi], *shape)
        count += 1
    return (time.process_time() - began) * 1000 / count


def loader_rate(dataset, batches_cls, seconds: float, batch: int = 8) -> float:
    """Train-mode clips per CPU-second of the platform's batch reader, in the calling thread."""
    reader = batches_cls(dataset)
    torch.manual_seed(0)
    reader.__getitems__([0] * batch)  # first touch of the maps
    count, began = 0, time.process_time()
    while count < 2 * batch or time.process_time() - began < seconds:
        reader.__getitems__([0] * batch)
        count += batch
    return count / (time.process_time() - began)


def samples_of(blobs: list[np.ndarray], g: ClipGeometry) -> list[list[np.ndarray]]:
    """The blobs of every window's frames (JPEG: each window's own frames)."""
    return [blobs[lo : lo + g.num_frames] for lo in window_starts(len(blobs), g)]


def save_jpeg(path: Path, blobs: list[np.ndarray], g: ClipGeometry) -> None:
    """Every window's JPEG blobs, concatenated, for `bench/nvjpeg.py`."""
    flat = [b for sample in samples_of(blobs, g) for b in sample]
    np.savez(path, blob=np.concatenate(flat), ends=np.cumsum([0, *map(len, flat)]), frames=g.num_frames,
             size=g.img_size)


def measure_clip(name: str, geometry_name: str, args: argparse.Namespace, tmp: Path) -> list[dict]:
    """One row per format for one clip at one geometry."""
    g, clip = GEOMETRIES[geometry_name], Clip(SHARED / "clips" / CLIPS[name], 0)
    fbank, frames, *_ = decode_whole(clip, g)
    shape, audio_read = frames.shape[1:3], g.audio_frames * g.num_mel_bins * 2
    common = {"clip": name, "geometry": geometry_name, "frames": "x".join(map(str, frames.shape)),
              "source_mb": round(clip.path.stat().st_size / 1e6, 3)}
    folder = write_cache([clip], tmp / f"{name}_{geometry_name}_uint8", g, 10, progress=False)
    rows = [{**common, "format": "uint8", "disk_mb": round((frames.nbytes + fbank.nbytes) / 1e6, 3),
             "read_mb": round((g.num_frames * frames[0].nbytes + audio_read) / 1e6, 3), "decode_ms": 0.0,
             "psnr": float("inf"),
             "loader_clips_per_cpu_s": round(loader_rate(CachedAVDataset(folder, g, True), CachedBatches,
                                                         args.seconds), 1)}]
    print(json.dumps(rows[0]), flush=True)
    for label, (codec, platform_format) in CANDIDATES.items():
        blobs = codec.encode(frames)
        arrays = [np.frombuffer(bytearray(b), dtype=np.uint8) for b in blobs]
        row = {**common, "format": label, "disk_mb": round((sum(map(len, blobs)) + fbank.nbytes) / 1e6, 3),
               "read_mb": round((sample_reads(codec, blobs, g) + audio_read) / 1e6, 3),
               "decode_ms": round(decode_ms(codec, arrays, shape, g, args.seconds), 2),
               "psnr": psnr(codec.decode(arrays, *shape), frames)}
        if platform_format:
            out = write_shards([clip], tmp / f"{name}_{geometry_name}_{label}", g, 10, codec, progress=False)
            rate = loader_rate(ShardedAVDataset(out, g, True), ShardBatches, args.seconds)
            row["loader_clips_per_cpu_s"] = round(rate, 1)
        if args.device and platform_format == "jpeg":
            timed = device_decode(samples_of(arrays, g), g.img_size, args.device, args.seconds, batch=32)
            row.update(device=args.device, device_clips_per_s=timed["clips_per_s"],
                       device_cpu_ms_per_clip=timed["cpu_ms_per_clip"])
        if args.save_jpeg and label == "jpeg-q90" and not args.save_jpeg.exists():
            save_jpeg(args.save_jpeg, arrays, g)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    keys = ["clip", "geometry", "format", "disk_mb", "read_mb", "decode_ms", "psnr", "loader_clips_per_cpu_s"]
    keys += [k for k in ("device_clips_per_s", "device_cpu_ms_per_clip") if any(k in r for r in rows)]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", nargs="+", choices=sorted(CLIPS), default=["720p", "144p"])
    parser.add_argument("--geometries", nargs="+", choices=sorted(GEOMETRIES), default=["paper", "digits"])
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU seconds per timing")
    parser.add_argument("--device", default=None, help="also decode JPEG samples batched on this device")
    parser.add_argument("--save-jpeg", type=Path, help="write jpeg-q90 samples for bench/nvjpeg.py")
    parser.add_argument("--tiny", action="store_true", help="144p clip, tiny geometry, short timings")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.tiny:
        args.clips, args.geometries, args.seconds = ["144p"], ["tiny"], 0.05
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for name in args.clips for geometry in args.geometries
                for row in measure_clip(name, geometry, args, Path(tmp))]
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
