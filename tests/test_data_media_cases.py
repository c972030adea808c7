"""Real-world media cases, each made by ffmpeg here: frames land at the right time on the container's clock,
upright and at their display aspect, or the clip is skipped with a named verdict, the same one from the
preflight scan, the decoded cache and raw training.

Ground truth is in the pixels and the sound: frame k is grey level 10 + 2k with a white marker in its top-left
corner, and the tone's frequency names the second (400 Hz in second 0, 600 Hz in second 1, ...).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from avmae.platform.data import decode
from avmae.platform.data.cache import write_cache
from avmae.platform.data.dataset import AVDataset
from avmae.platform.data.geometry import ClipGeometry
from avmae.platform.data.indexes import Clip
from avmae.platform.data.mp4 import write_mp4
from avmae.platform.data.scan import probe_clip

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="the dev extras ship the ffmpeg binary")

FPS, SECONDS, RATE, WIDTH, HEIGHT = 25, 4, 16000, 64, 48
GEOMETRY = ClipGeometry(audio_frames=100, num_frames=4, img_size=32, frame_stride=2)
SHORT = GEOMETRY.short_side  # 37


def tone_of_second(second: int) -> float:
    return 400.0 + 200.0 * second


def master(path: Path) -> Path:
    """4 s, 25 fps, 64x48 H.264 + 16 kHz AAC, aligned at 0 s (mp4.write_mp4)."""
    frames = np.stack([np.full((HEIGHT, WIDTH, 3), 10 + 2 * k, np.uint8) for k in range(FPS * SECONDS)])
    frames[:, :12, :12] = 255
    t = np.arange(SECONDS * RATE) / RATE
    audio = 0.5 * np.sin(2 * np.pi * np.cumsum(tone_of_second(0) + 200.0 * np.floor(t)) / RATE)
    write_mp4(path, frames, FPS, audio.astype(np.float32), RATE, crf=18)
    return path


# name -> ffmpeg arguments between the binary and the output file ({m}: the master clip)
CASES = {
    "plain": ["-i", "{m}", "-c", "copy"],
    "video_offset": ["-i", "{m}", "-itsoffset", "0.5", "-i", "{m}", "-map", "1:v", "-map", "0:a",
                     "-c", "copy"],
    "rotate90": ["-display_rotation", "90", "-i", "{m}", "-c", "copy"],
    "sar2": ["-i", "{m}", "-c", "copy", "-bsf:v", "h264_metadata=sample_aspect_ratio=2/1"],
    "late_audio": ["-i", "{m}", "-itsoffset", "2.5", "-i", "{m}", "-map", "0:v", "-map", "1:a", "-t", "4",
                   "-c", "copy"],
    "brief": ["-i", "{m}", "-t", "0.2", "-c:v", "libx264", "-c:a", "aac"],
    "av1": ["-i", "{m}", "-c:v", "libsvtav1", "-svtav1-params", "lp=1", "-c:a", "copy"],
    "header_50fps": ["-i", "{m}", "-c", "copy", "-r", "50", "-f", "matroska"],
}
VERDICTS = {"late_audio": "short_audio", "brief": "too_short"}  # every other case decodes


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media_cases")
    source = master(root / "master.mp4")
    made = {}
    for name, args in CASES.items():
        out = root / (name + (".mkv" if "matroska" in args else ".mp4"))
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *[a.format(m=source) for a in args]]
        subprocess.run([*command, str(out)], check=True, capture_output=True)
        made[name] = out
    return made


def frame_numbers(frames: np.ndarray) -> np.ndarray:
    """Frame index shown in each picture, from the grey level of its centre."""
    h, w = frames.shape[1:3]
    centre = frames[:, h // 2 - 3 : h // 2 + 3, w // 2 - 3 : w // 2 + 3].astype(float).mean(axis=(1, 2, 3))
    return np.round((centre - 10) / 2).astype(int)


def marker_corner(frame: np.ndarray) -> str:
    """Which corner holds the white marker."""
    h, w = frame.shape[:2]
    corners = {"top-left": frame[:4, :4], "top-right": frame[:4, w - 4 :], "bottom-left": frame[h - 4 :, :4],
               "bottom-right": frame[h - 4 :, w - 4 :]}
    return max(corners, key=lambda k: corners[k].mean())


def peak_hz(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spectrum) * RATE / len(wave))


def verdicts(path: Path, tmp_path: Path) -> dict[str, str | None]:
    """What the preflight, the cache and raw training each say of the clip (None: usable)."""
    clip = Clip(path, 0)
    scan = probe_clip(clip)
    cache = write_cache([clip], tmp_path / "cache", GEOMETRY, 1, progress=False)
    entry = json.loads((cache / "shard_00000.json").read_text())[0]
    raw = AVDataset([clip], GEOMETRY, train=False, num_classes=1)[0]
    return {
        "scan": scan and scan.reason,
        "cache": entry["broken"][1] if "broken" in entry else None,
        "raw": raw["broken"][1] if "broken" in raw else None,
    }


@pytest.mark.parametrize("name", CASES)
def test_raw_cache_and_preflight_agree(media: dict[str, Path], name: str, tmp_path: Path):
    expected = VERDICTS.get(name)
    assert verdicts(media[name], tmp_path) == {"scan": expected, "cache": expected, "raw": expected}


@pytest.mark.parametrize("name", ["plain", "video_offset", "rotate90", "sar2", "av1", "header_50fps"])
def test_frames_are_on_the_container_clock_at_the_true_rate(media: dict[str, Path], name: str):
    """Grid point j shows frame j, 40 ms apart (never the header's 50 fps); the grid starts where the video
    track does (0.5 s for the offset track), and the audio read from there is the sound of that moment."""
    plan = decode.plan_clip(media[name])
    assert abs(plan.step - 1 / FPS) < 1e-6 and len(plan.pts) == FPS * SECONDS
    assert plan.origin == pytest.approx(0.5 if name == "video_offset" else 0.0, abs=1e-3)
    picked = np.arange(0, FPS * SECONDS, 9)
    frames = decode.read_frames(plan, picked, SHORT)
    assert np.abs(frame_numbers(frames) - picked).max() <= 1
    wave = decode.read_audio(media[name], plan.origin, 2.0, RATE)
    for at in (0.1, 0.6, 1.1, 1.6):  # 0.3 s of sound from `at` s after the first frame
        second = int(plan.origin + at + 0.15)
        assert peak_hz(wave[round(at * RATE) : round((at + 0.3) * RATE)]) == pytest.approx(
            tone_of_second(second), abs=20
        )


@pytest.mark.parametrize(
    ("name", "size", "corner"),
    [
        ("plain", (round(SHORT * 4 / 3), SHORT), "top-left"),
        ("rotate90", (SHORT, round(SHORT * 4 / 3)), "bottom-left"),  # turned 90 degrees counter-clockwise
        ("sar2", (round(SHORT * 8 / 3), SHORT), "top-left"),  # 2:1 pixels: 128x48 on screen
    ],
)
def test_frames_are_upright_at_their_display_aspect(
    media: dict[str, Path], name: str, size: tuple[int, int], corner: str
):
    plan = decode.plan_clip(media[name])
    frame = decode.read_frames(plan, np.array([0]), SHORT)[0]
    assert (frame.shape[1], frame.shape[0]) == size and decode.resized(plan.info, SHORT) == size
    assert marker_corner(frame) == corner


def test_silence_before_a_late_track_is_not_audio(media: dict[str, Path]):
    with pytest.raises(decode.BrokenClip, match=r"audio covers 1\.[45]\d s of the clip's 4\.00 s"):
        decode.plan_clip(media["late_audio"])


def test_minimum_clip_length_is_configurable(media: dict[str, Path]):
    with pytest.raises(decode.BrokenClip, match="under the minimum 0.5 s"):
        decode.plan_clip(media["brief"])
    assert len(decode.plan_clip(media["brief"], min_seconds=0.1).pts) == 5
    clip = Clip(media["plain"], 0)
    assert probe_clip(clip, min_clip_s=5.0).reason == "too_short"
    assert AVDataset([clip], GEOMETRY, False, 1, min_clip_s=5.0)[0]["broken"][1] == "too_short"


def test_av_digits_clips_decode_as_decord_decoded_them(tmp_path: Path):
    """mp4.write_mp4 clips (AV-Digits) at the quickstart's resize (96 -> 73): the same pixels, bit for bit,
    as the decord reader this decoder replaced."""
    decord = pytest.importorskip("decord")
    rng = np.random.default_rng(0)
    frames = (rng.integers(0, 8, (32, 96, 96, 3)) * 32).astype(np.uint8)
    write_mp4(tmp_path / "avd.mp4", frames, 32, rng.uniform(-0.5, 0.5, 16000).astype(np.float32))
    plan = decode.plan_clip(tmp_path / "avd.mp4")
    assert plan.origin == 0.0 and plan.step == 1 / 32 and len(plan.pts) == 32
    ours = decode.read_frames(plan, np.arange(32), 73)
    theirs = decord.VideoReader(str(tmp_path / "avd.mp4"), width=73, height=73, num_threads=1)
    np.testing.assert_array_equal(ours, theirs.get_batch(list(range(32))).asnumpy())
