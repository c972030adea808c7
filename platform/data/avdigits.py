"""AV-Digits: a small audiovisual benchmark (AV-MNIST style) written as real H.264+AAC .mp4 + `vggsound.csv`.

Video: a handwritten digit from scikit-learn's bundled 8x8 digits, moving, scaling and turning over a noisy
background. Audio: a Free Spoken Digit Dataset recording of the same digit (`speech=`; speakers are split so
val/test voices are unseen), or the digit's DTMF tone pair with random timing, level and noise (no download).
Handwriting images are split too. Everything derives from `seed`, so a build is reproducible; it goes through
the same VGGSound decode path as real data.
"""

from __future__ import annotations

import json
import logging
import os
import time
import wave
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from filelock import FileLock, Timeout
from tqdm import tqdm

from . import decode
from .config import DIGIT_WORDS, AVDigitsBuild
from .geometry import AudioStats, ClipGeometry
from .mp4 import write_mp4
from .pool import process_pool

DTMF = {
    0: (941, 1336),
    1: (697, 1209),
    2: (697, 1336),
    3: (697, 1477),
    4: (770, 1209),
    5: (770, 1336),
    6: (770, 1477),
    7: (852, 1209),
    8: (852, 1336),
    9: (852, 1477),
}
SPLITS = {"train": 0.7, "val": 0.15, "test": 0.15}
SPEAKER_SPLITS = {"theo": "val", "yweweler": "test"}  # every other FSDD speaker is train
INDEX_NAME, MANIFEST_NAME, SOURCES_NAME = "vggsound.csv", "av_digits.json", "sources.csv"
BUILD_LOCK_NAME = ".build.lock"  # held while a process builds (or checks) the folder
log = logging.getLogger(__name__)
SAMPLE_RATE = 16000
_MEL = ClipGeometry(audio_frames=1, num_frames=1, img_size=1)  # log_mel reads only sample_rate and mel bins


@dataclass(frozen=True)
class AVDigitsSettings:
    """A build's settings as its manifest records them: the `AVDigitsBuild` fields and the speech folder."""

    seed: int
    clips_per_digit: int
    duration: float
    size: int
    fps: int
    speech: str | None  # FSDD recordings folder, resolved
    motion: float
    scale_min: float
    scale_max: float
    noise: float
    grey: bool


@dataclass(frozen=True)
class _Job:
    number: int
    digit: int
    split: str
    image_id: int  # row of sklearn's load_digits()
    image: np.ndarray  # 8x8 in [0, 1]
    recording: str | None
    seed: int


def clip_name(number: int) -> str:
    """The VGGSound youtube_id of clip `number`; the file is `{id}_000000.mp4`."""
    return f"avd{number:05d}"


def _split_of(position: int, count: int) -> str:
    """Deterministic split by rank: the first 70% train, then val, then test. From 3 clips per digit on,
    every split gets at least one (rounding alone left 3-5 clips per digit without a val or test clip)."""
    train_end = round(SPLITS["train"] * count)
    val_end = round((SPLITS["train"] + SPLITS["val"]) * count)
    if count >= len(SPLITS):
        train_end = min(train_end, count - 2)
        val_end = min(max(val_end, train_end + 1), count - 1)
    return "train" if position < train_end else "val" if position < val_end else "test"


def _recordings(speech: Path) -> dict[tuple[int, str], list[Path]]:
    """FSDD `{digit}_{speaker}_{index}.wav` grouped by (digit, split)."""
    groups: dict[tuple[int, str], list[Path]] = {}
    for path in sorted(speech.glob("*.wav")):
        digit, speaker, _ = path.stem.split("_")
        groups.setdefault((int(digit), SPEAKER_SPLITS.get(speaker, "train")), []).append(path)
    if not groups:
        raise FileNotFoundError(f"no FSDD recordings ({{digit}}_{{speaker}}_{{index}}.wav) in {speech}")
    return groups


def _plan(settings: AVDigitsSettings) -> list[_Job]:
    """Draw every clip's digit, split, handwriting image and recording from the seed."""
    from sklearn.datasets import load_digits  # lazy: scikit-learn is slow to import and only needed here

    digits = load_digits()
    rng = np.random.default_rng(settings.seed)
    groups = _recordings(Path(settings.speech)) if settings.speech else {}
    decks = {key: [] for key in groups}  # recordings dealt without replacement, reshuffled when used up
    jobs = []
    for digit in range(10):
        images = np.flatnonzero(digits.target == digit)
        by_split = {s: [i for r, i in enumerate(images) if _split_of(r, len(images)) == s] for s in SPLITS}
        for k in range(settings.clips_per_digit):
            split = _split_of(k, settings.clips_per_digit)
            image = int(by_split[split][rng.integers(len(by_split[split]))])
            recording = None
            if settings.speech:
                if (digit, split) not in groups:
                    raise FileNotFoundError(f"no FSDD recording of {digit} for the {split} speakers")
                if not decks[digit, split]:
                    decks[digit, split] = list(rng.permutation(groups[digit, split]))
                recording = str(decks[digit, split].pop())
            seed = int(rng.integers(2**31))
            jobs.append((digit, split, image, digits.images[image] / 16.0, recording, seed))
    order = rng.permutation(len(jobs))  # shuffled rows: a clip's id says nothing about its label
    return [_Job(n, *jobs[j]) for n, j in enumerate(order)]


def _render_video(job: _Job, settings: AVDigitsSettings, rng: np.random.Generator) -> np.ndarray:
    """uint8 [T, S, S, 3]: the digit on an affine path (scale, turn, move) over a noisy tinted background."""
    frames, size = round(settings.duration * settings.fps), settings.size
    t = torch.linspace(0, 1, frames)[:, None]
    scale = torch.tensor(rng.uniform(settings.scale_min, settings.scale_max, 2), dtype=torch.float32)
    scale = scale[0] + (scale[1] - scale[0]) * t  # fraction of the frame the digit spans
    angle = torch.tensor(rng.uniform(-0.35, 0.35, 2), dtype=torch.float32)
    angle = angle[0] + (angle[1] - angle[0]) * t
    ends = torch.tensor(rng.uniform(-1, 1, (2, 2)), dtype=torch.float32) * (1 - scale.max()) * settings.motion
    centre = ends[0] + (ends[1] - ends[0]) * t
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.cat([cos, -sin], 1), torch.cat([sin, cos], 1)], 1)
    theta = torch.cat([theta, -(theta @ centre[:, :, None])], 2)  # output -> sprite coordinates
    grid = F.affine_grid(theta, [frames, 1, size, size], align_corners=False)
    sprite = torch.tensor(job.image, dtype=torch.float32).expand(frames, 1, 8, 8)
    alpha = F.grid_sample(sprite, grid, align_corners=False)[:, 0, :, :, None].numpy()
    background = rng.uniform(10, 110, 3).astype(np.float32) + 18 * settings.noise * rng.standard_normal(
        (size, size, 3), np.float32
    )
    ink = rng.uniform(150, 255, 3).astype(np.float32)
    video = background + alpha * (ink - background)
    sensor = rng.integers(-17, 18, video.shape, dtype=np.int8)  # fresh sensor noise every frame (sd ~10)
    video += settings.noise * sensor
    if settings.grey:  # the same draws, hue averaged away: builds differ in colour only
        video[:] = video.mean(axis=-1, keepdims=True)
    np.clip(video, 0, 255, out=video)
    return video.astype(np.uint8)


def _read_wav(path: str) -> np.ndarray:
    """FSDD wav (16-bit PCM) -> float32 mono at SAMPLE_RATE."""
    with wave.open(path) as f:
        rate, width, channels = f.getframerate(), f.getsampwidth(), f.getnchannels()
        data = np.frombuffer(f.readframes(f.getnframes()), dtype=np.int16 if width == 2 else np.uint8)
    data = data.reshape(-1, channels).mean(axis=1).astype(np.float32)
    data = data / 32768.0 if width == 2 else (data - 128) / 128.0
    return torchaudio.functional.resample(torch.from_numpy(data), rate, SAMPLE_RATE).numpy()


def _render_audio(job: _Job, settings: AVDigitsSettings, rng: np.random.Generator) -> np.ndarray:
    """float32 [n]: the spoken digit or its DTMF pair at a random time and level, over background noise."""
    n = round(settings.duration * SAMPLE_RATE)
    if job.recording:
        event = _read_wav(job.recording)[:n]
        event = event / max(np.abs(event).max(), 1e-6)
    else:
        length = min(round(rng.uniform(0.25, 0.7) * SAMPLE_RATE), n)  # a clip shorter than the tone cuts it
        t = np.arange(length) / SAMPLE_RATE
        low, high = (f * rng.uniform(0.98, 1.02) for f in DTMF[job.digit])
        event = 0.5 * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t))
        event *= np.minimum(1, np.minimum(t, t[::-1]) / 0.005)  # 5 ms fades, no clicks
    # centred in the middle 30% of the clip, so shorter training windows (e.g. 1.28 s of 2 s) still hear it
    onset = int(np.clip(rng.uniform(0.35, 0.65) * n - len(event) / 2, 0, n - len(event)))
    audio = rng.normal(0, rng.uniform(0.003, 0.03), n)
    audio[onset : onset + len(event)] += rng.uniform(0.2, 0.7) * event
    return audio.astype(np.float32)


def _build_clip(job: _Job, settings: AVDigitsSettings, out: Path) -> tuple[float, float, int]:
    """Write one clip; return (sum, sum of squares, count) of its decoded log-mel for the stats."""
    rng = np.random.default_rng(job.seed)
    path = out / f"{clip_name(job.number)}_000000.mp4"
    write_mp4(
        path, _render_video(job, settings, rng), settings.fps, _render_audio(job, settings, rng), SAMPLE_RATE
    )
    wave_ = decode.read_audio(path, 0.0, None, SAMPLE_RATE)
    fbank = decode.log_mel(wave_, _MEL).double()
    return float(fbank.sum()), float((fbank**2).sum()), fbank.numel()


def _build_chunk(jobs: Sequence[_Job], settings: AVDigitsSettings, out: Path) -> list[tuple[str, tuple]]:
    return [(job.split, _build_clip(job, settings, out)) for job in jobs]


def read_manifest(out: str | Path) -> dict | None:
    path = Path(out) / MANIFEST_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def audio_stats(out: str | Path) -> AudioStats:
    """The log-mel mean/std measured on this build's train split."""
    manifest = read_manifest(out)
    if manifest is None:
        raise FileNotFoundError(
            f"{out} is not an AV-Digits build (no {MANIFEST_NAME}); run `avmae data av-digits`"
        )
    return AudioStats(**manifest["audio_stats"])


def build_av_digits(
    out: str | Path,
    build: AVDigitsBuild | None = None,
    speech: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Build AV-Digits into `out` (`build`: its settings, default `AVDigitsBuild()`; `speech`: FSDD
    recordings, else DTMF tones); a no-op when `out` already holds a build with the same settings.

    Returns the path of the index (`out/vggsound.csv`).
    """
    out = Path(out)
    settings = AVDigitsSettings(**(build or AVDigitsBuild()).model_dump(),
                                speech=str(Path(speech).resolve()) if speech else None)
    if is_built(out, settings):  # before any lock: a finished build may sit on a read-only mount
        return out / INDEX_NAME
    out.mkdir(parents=True, exist_ok=True)
    # Two studies (or a study and a bench) asking for the same build at once: the second waits for the first
    # and reuses its build, instead of rewriting the clips the first is writing (a half-written clip).
    lock = FileLock(out / BUILD_LOCK_NAME, is_singleton=True)  # one per folder in a process: reentrant
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("AV-Digits at %s is being built by another process; waiting for it", out)
        lock.acquire()
    try:
        if not is_built(out, settings):
            _build(out, settings, workers, progress)
        return out / INDEX_NAME
    finally:
        lock.release()


def is_built(out: Path, settings: AVDigitsSettings) -> bool:
    manifest = read_manifest(out)
    return bool(manifest) and manifest["settings"] == asdict(settings) and (out / INDEX_NAME).is_file()


def _build(out: Path, settings: AVDigitsSettings, workers: int | None, progress: bool) -> None:
    began = time.perf_counter()
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # the manifest, written last, marks a finished build
    jobs = _plan(settings)
    workers = workers or os.cpu_count() or 1
    chunks = [jobs[i : i + 8] for i in range(0, len(jobs), 8)]
    totals = np.zeros(3)
    with tqdm(total=len(jobs), desc="av-digits", unit="clip", disable=not progress) as bar:
        with process_pool(workers) as pool:
            for results in pool.map(_build_chunk, chunks, [settings] * len(chunks), [out] * len(chunks)):
                for split, sums in results:
                    if split == "train":
                        totals += sums
                bar.update(len(results))
    total, squares, count = totals
    mean = total / count
    rows = "".join(f"{clip_name(j.number)},0,{DIGIT_WORDS[j.digit]},{j.split}\n" for j in jobs)
    (out / INDEX_NAME).write_text(rows)
    sources = "".join(
        f"{clip_name(j.number)},{j.digit},{j.split},{j.image_id},{Path(j.recording or 'dtmf').name}\n"
        for j in jobs
    )
    (out / SOURCES_NAME).write_text("youtube_id,digit,split,sklearn_digit_image,audio\n" + sources)
    counts = {split: sum(j.split == split for j in jobs) for split in SPLITS}
    manifest = {
        "settings": asdict(settings),
        "classes": list(DIGIT_WORDS),
        "counts": counts,
        "audio_stats": {"mean": round(mean, 4), "std": round(float(np.sqrt(squares / count - mean**2)), 4)},
        "build_seconds": round(time.perf_counter() - began, 1),
        "workers": workers,
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
