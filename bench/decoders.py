"""Raw-media decoders side by side, in one run: decord frames + PyAV audio (the old path) against PyAV for
both streams (`platform/data/decode.py`). Correctness on real-world cases made by ffmpeg (a video track
starting 0.5 s late, rotate=90, 2:1 pixels, a header frame rate of 50 for 25 fps content, AV1), then clips/s
per core of decoding whole clips as the cache does (every 4th frame, short side 256) and one 16-frame window
as raw training does, on the real clips in ../shared/data/clips and a generated 25 fps 320x240 clip.

    .venv/bin/python bench/decoders.py --repeat 3

Both decoders run single-threaded in this process, alternating, so a shared machine slows both alike: read
the ratios. Needs the dev extras (imageio-ffmpeg) and decord.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import decord
import imageio_ffmpeg
import numpy as np
from avmae.platform.data import decode
from avmae.platform.data.broken import BrokenClip
from avmae.platform.data.mp4 import write_mp4

SHORT, STRIDE, WINDOW = 256, 4, 16
CASES = {  # name -> ffmpeg arguments ({m}: the 25 fps master), expected (first frame s, aspect w/h, fps)
    "plain": (["-i", "{m}", "-c", "copy"], (0.0, 4 / 3, 25.0)),
    "video_offset": (
        ["-i", "{m}", "-itsoffset", "0.5", "-i", "{m}", "-map", "1:v", "-map", "0:a", "-c", "copy"],
        (0.5, 4 / 3, 25.0),
    ),
    "rotate90": (["-display_rotation", "90", "-i", "{m}", "-c", "copy"], (0.0, 3 / 4, 25.0)),
    "sar2": (
        ["-i", "{m}", "-c", "copy", "-bsf:v", "h264_metadata=sample_aspect_ratio=2/1"],
        (0.0, 8 / 3, 25.0),
    ),
    "header_50fps": (["-i", "{m}", "-c", "copy", "-r", "50", "-f", "matroska"], (0.0, 4 / 3, 25.0)),
    "av1": (["-i", "{m}", "-c:v", "libsvtav1", "-svtav1-params", "lp=1", "-c:a", "copy"], (0.0, 4 / 3, 25.0)),
}


def make_media(root: Path) -> tuple[Path, dict[str, Path]]:
    """A 4 s 320x240 25 fps master (moving content) and each case made from it by ffmpeg."""
    rng = np.random.default_rng(0)
    frames = np.stack(
        [np.roll(rng.integers(0, 255, (240, 320, 3), np.uint8) // 4 + 64 * (k % 3), k, 1) for k in range(100)]
    )
    write_mp4(root / "master.mp4", frames, 25, 0.1 * rng.standard_normal(64000).astype(np.float32))
    made = {}
    for name, (args, _) in CASES.items():
        out = root / (name + (".mkv" if "matroska" in args else ".mp4"))
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-v",
            "error",
            "-y",
            *[a.format(m=root / "master.mp4") for a in args],
        ]
        subprocess.run([*command, str(out)], check=True, capture_output=True)
        made[name] = out
    return root / "master.mp4", made


def decord_view(path: Path) -> tuple[float, float, float]:
    """(first frame s, aspect of the decoded frame, fps of its grid) as the old path saw them."""
    reader = decord.VideoReader(str(path), num_threads=1)
    frame = reader[0].asnumpy()
    return float(reader.get_frame_timestamp(0)[0]), frame.shape[1] / frame.shape[0], reader.get_avg_fps()


def pyav_view(path: Path) -> tuple[float, float, float]:
    plan = decode.plan_clip(path)
    frame = decode.read_frames(plan, np.array([0]), 48)[0]
    return plan.origin, frame.shape[1] / frame.shape[0], 1 / plan.step


def correctness(cases: dict[str, Path]) -> None:
    print("| case | expected (first frame s, aspect, fps) | decord + PyAV | PyAV |")
    print("|---|---|---|---|")
    for name, path in cases.items():
        row = [name, "{:.2f}, {:.2f}, {:.0f}".format(*CASES[name][1])]
        for view in (decord_view, pyav_view):
            try:
                row.append("{:.2f}, {:.2f}, {:.0f}".format(*view(path)))
            except (BrokenClip, decord.DECORDError) as exc:
                row.append("fails: " + str(exc).splitlines()[0][-60:])
        print("| " + " | ".join(row) + " |")


def decord_clip(path: Path, window: bool) -> int:
    """The old path: decord reader resizing while decoding, frame times from decord, audio from PyAV."""
    info = decode.probe(path)
    width, height = decode.resized(info, SHORT)
    reader = decord.VideoReader(str(path), width=width, height=height, num_threads=1)
    times = reader.get_frame_timestamp(np.arange(len(reader)))[:, 0]
    shown = np.flatnonzero(times >= 0)
    picked = (
        shown[len(shown) // 2 : len(shown) // 2 + WINDOW * STRIDE : STRIDE] if window else shown[::STRIDE]
    )
    frames = reader.get_batch(list(map(int, picked))).asnumpy()
    decode.read_audio(path, 0.0, None, 16000)
    return len(frames)


def pyav_clip(path: Path, window: bool) -> int:
    plan = decode.plan_clip(path)
    n = len(plan.pts)
    positions = (
        np.arange(n // 2, min(n, n // 2 + WINDOW * STRIDE), STRIDE) if window else np.arange(0, n, STRIDE)
    )
    frames = decode.read_frames(plan, positions, SHORT)
    decode.read_audio(path, plan.origin, None, 16000)
    return len(frames)


def clips_per_core(fn: Callable[[Path, bool], int], path: Path, window: bool, repeat: int) -> float:
    """Clips per second of this process's CPU time (all its threads): per-core cost, robust to sharing."""
    fn(path, window)  # warm the page cache and the libraries
    start = time.process_time()
    for _ in range(repeat):
        fn(path, window)
    return repeat / max(time.process_time() - start, 1e-9)


def speed(clips: list[Path], repeat: int) -> None:
    print("\n| clip | work | decord + PyAV clips/s/core | PyAV clips/s/core | PyAV / decord |")
    print("|---|---|---|---|---|")
    for path in clips:
        for window in (False, True):
            old = clips_per_core(decord_clip, path, window, repeat)
            new = clips_per_core(pyav_clip, path, window, repeat)
            work = "16-frame window" if window else f"whole clip, every {STRIDE}th frame"
            print(f"| {path.name} | {work} | {old:.2f} | {new:.2f} | {new / old:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clips", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/clips"
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    decord.logging.set_level(decord.logging.QUIET)
    with tempfile.TemporaryDirectory() as tmp:
        master, cases = make_media(Path(tmp))
        correctness(cases)
        speed([*sorted(args.clips.glob("*.mp4")), master], args.repeat)


if __name__ == "__main__":
    main()
