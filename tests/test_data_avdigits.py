"""AV-Digits: real .mp4 files + VGGSound index; reproducible, idempotent, learnable from either modality."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import decord
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from avmae.models.tokenizers import video_to_unit_range
from avmae.platform.data import decode
from avmae.platform.data.avdigits import BUILD_LOCK_NAME, DIGIT_WORDS, SPEAKER_SPLITS, build_av_digits
from avmae.platform.data.cli import data
from avmae.platform.data.config import AVDigitsBuild
from avmae.platform.data.geometry import ClipGeometry
from avmae.platform.data.loader import build_dataset
from click.testing import CliRunner
from conftest import built_av_digits
from filelock import FileLock
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

PROBE_GEOMETRY = ClipGeometry(audio_frames=128, num_frames=8, img_size=64)  # the quickstart tiny model
ONE = AVDigitsBuild(clips_per_digit=1)  # 10 clips


# Per-item decoding is 2-4x slower with intra-op threads fighting over 2 shared cores.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dtmf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_av_digits(tmp_path_factory, "avdigits_dtmf", clips_per_digit=6)


@pytest.fixture(scope="module")
def speech(fsdd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_av_digits(tmp_path_factory, "avdigits_speech", fsdd_dir, clips_per_digit=16)


def sources(out: Path) -> list[dict[str, str]]:
    with (out / "sources.csv").open() as f:
        return list(csv.DictReader(f))


def probe_accuracy(root: Path, with_video: bool = True) -> dict[str, float]:
    """Linear probe on frozen features (train -> val+test): pooled log-mel statistics for audio; for video a
    random, untrained 9x9 conv bank on gray frames, max- and mean-pooled."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 128, 9, padding=4, stride=2)

    def features(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dataset = build_dataset("av-digits", root, None, split, PROBE_GEOMETRY, train=False)
        audio, video, labels = [], [], []
        for item in (dataset[i] for i in range(len(dataset))):
            log_mel = item["audio"]
            audio.append(torch.cat([log_mel.mean(0), log_mel.std(0), log_mel.amax(0)]).numpy())
            if with_video:
                with torch.no_grad():
                    gray = video_to_unit_range(item["video"]).mean(0)[:, None]  # [T, 1, S, S]
                    maps = F.relu(conv(gray))
                video.append(torch.cat([maps.amax((2, 3)), maps.mean((2, 3))], 1).mean(0).numpy())
            labels.append(int(item["label"]))
        return np.array(audio), np.array(video), np.array(labels)

    train, held_out = features("train"), [features(s) for s in ("val", "test")]
    scores = {}
    for name, k in (("audio", 0), ("video", 1))[: 2 if with_video else 1]:
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(train[k], train[2])
        features = np.concatenate([h[k] for h in held_out])
        scores[name] = probe.score(features, np.concatenate([h[2] for h in held_out]))
    return scores


def test_dtmf_build_is_a_vggsound_dataset(dtmf: Path):
    rows = list(csv.reader((dtmf / "vggsound.csv").open()))
    assert len(rows) == 60 and {r[2] for r in rows} == set(DIGIT_WORDS)
    assert [sum(r[3] == split for r in rows) for split in ("train", "val", "test")] == [40, 10, 10]
    assert all((dtmf / f"{r[0]}_000000.mp4").is_file() for r in rows)
    manifest = json.loads((dtmf / "av_digits.json").read_text())
    assert manifest["classes"] == list(DIGIT_WORDS) and manifest["settings"]["speech"] is None
    assert -12 < manifest["audio_stats"]["mean"] < 0 < manifest["audio_stats"]["std"]
    path = dtmf / f"{rows[0][0]}_000000.mp4"
    plan = decode.plan_clip(path)
    assert len(plan.pts) == 64 and plan.step == 1 / 32
    assert decode.read_frames(plan, np.array([0]), 96).shape == (1, 96, 96, 3)
    assert 32000 <= len(decode.read_audio(path, 0.0, None, 16000)) <= 32000 + 1024  # + AAC end padding
    digits = {r["youtube_id"]: DIGIT_WORDS[int(r["digit"])] for r in sources(dtmf)}
    assert all(digits[r[0]] == r[2] for r in rows)
    images = {(r["split"], r["sklearn_digit_image"]) for r in sources(dtmf)}
    train_images = {i for s, i in images if s == "train"}
    assert not train_images & {i for s, i in images if s == "test"}  # unseen handwriting


def test_build_is_deterministic_and_idempotent(tmp_path: Path):
    """A seed gives the same bytes: no clock in the files (the builds straddle a second) and an encoder that
    depends on nothing but its input (issue 17)."""
    first = build_av_digits(tmp_path / "a", ONE, workers=1, progress=False)
    time.sleep(1)
    second = build_av_digits(tmp_path / "b", ONE, workers=1, progress=False)
    assert first.read_text() == second.read_text()
    for row in first.read_text().splitlines():
        name = f"{row.split(',')[0]}_000000.mp4"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    stamp = (tmp_path / "a" / "av_digits.json").stat().st_mtime_ns
    assert build_av_digits(tmp_path / "a", ONE, workers=1, progress=False) == first
    assert (tmp_path / "a" / "av_digits.json").stat().st_mtime_ns == stamp  # same settings: skipped
    other = build_av_digits(tmp_path / "a", ONE.model_copy(update={"seed": 1}), workers=1,
                            progress=False)
    assert other.read_text() != second.read_text()  # new settings: rebuilt


def test_a_second_builder_waits_for_the_first_and_reuses_its_build(tmp_path: Path):
    """Two studies asking for the same build at once: the second must not rewrite the clips the first is
    writing (a killed or interleaved writer left a half-written clip that a study then skipped)."""
    out = tmp_path / "shared"
    out.mkdir()
    first = FileLock(out / BUILD_LOCK_NAME, is_singleton=True)  # held as the first builder holds it
    first.acquire()
    script = ("import sys, logging; logging.basicConfig(); from avmae.platform.data import AVDigitsBuild, "
              "build_av_digits; build_av_digits(sys.argv[1], AVDigitsBuild(clips_per_digit=1), workers=1, "
              "progress=False)")
    second = subprocess.Popen([sys.executable, "-c", script, str(out)], stderr=subprocess.PIPE, text=True)
    try:
        said = _first_line_with(second, "being built by another process; waiting", timeout=300)
        assert said and second.poll() is None and not list(out.glob("*.mp4"))  # it waits, writing nothing
        build_av_digits(out, ONE, workers=1, progress=False)  # the first builder's build
        stamp = (out / "av_digits.json").stat().st_mtime_ns
    finally:
        first.release()
    second.communicate(timeout=120)
    assert second.returncode == 0
    assert (out / "av_digits.json").stat().st_mtime_ns == stamp  # reused, not rebuilt


def _first_line_with(proc: subprocess.Popen, text: str, timeout: float) -> str | None:
    """The first line of `proc`'s stderr that holds `text`, read as it comes (None: not within `timeout`)."""
    found: list[str] = []

    def read() -> None:
        for line in proc.stderr:
            if text in line:
                found.append(line)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return found[0] if found else None


@pytest.mark.slow  # builds and probes a learnable dataset
def test_dtmf_tones_are_learnable(dtmf: Path):
    assert probe_accuracy(dtmf, with_video=False)["audio"] > 0.6  # chance is 0.1


@pytest.mark.slow  # builds and probes a learnable dataset
def test_speech_build_splits_speakers_and_is_learnable(speech: Path):
    rows = sources(speech)
    speakers = {(r["split"], r["audio"].split("_")[1]) for r in rows}
    held_out = {(split, speaker) for speaker, split in SPEAKER_SPLITS.items()}
    train_speakers = {s for split, s in speakers if split == "train"}
    assert held_out <= speakers and not {s for _, s in held_out} & train_speakers
    assert all(r["audio"].startswith(f"{r['digit']}_") for r in rows)  # the recording says the clip's digit
    scores = probe_accuracy(speech)  # unseen speakers and unseen handwriting; chance is 0.1
    assert scores["audio"] > 0.3 and scores["video"] > 0.3, scores


def test_cli_writes_and_reports(tmp_path: Path):
    args = ["av-digits", "--out", str(tmp_path), "--clips-per-digit", "1", "--size", "32", "--workers", "1"]
    result = CliRunner().invoke(data, args)
    assert result.exit_code == 0, result.output
    assert "audio stats" in result.output and len((tmp_path / "vggsound.csv").read_text().splitlines()) == 10
    result = CliRunner().invoke(data, [*args[:-2], "--size", "33"])
    assert result.exit_code == 1 and "size must be even" in result.output


@pytest.mark.parametrize("per_digit", [3, 4, 5, 6, 30])
def test_every_split_gets_clips_of_every_digit(per_digit: int):
    """A study's val and test splits must not come out empty (a small build once had no val clip at all,
    and its validation loss read 0.0); larger builds keep the 70/15/15 split by rank."""
    from collections import Counter

    from avmae.platform.data.avdigits import _split_of

    counts = Counter(_split_of(position, per_digit) for position in range(per_digit))
    assert set(counts) == {"train", "val", "test"}
    if per_digit == 30:
        assert counts == {"train": 21, "val": 5, "test": 4}


def _frames(out: Path) -> np.ndarray:
    """Every decoded frame of the build's first clip, float [T, S, S, 3]."""
    name = (out / "vggsound.csv").read_text().split(",")[0]
    path = out / f"{name}_000000.mp4"
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy().astype(np.float32)


def test_video_nuisance_settings_change_the_clips_they_name(tmp_path: Path):
    """`grey` leaves one hue (channels equal up to H.264's chroma rounding), `noise=0` a flat background, and
    a bad scale range is an error naming both fields. Defaults keep the colour and the noise."""
    small = dict(clips_per_digit=1, size=64, duration=0.25)
    default = _frames(build_av_digits(tmp_path / "default", AVDigitsBuild(**small), workers=1).parent)
    grey = _frames(build_av_digits(tmp_path / "grey", AVDigitsBuild(grey=True, noise=0.0, **small),
                                   workers=1).parent)
    hue = lambda frames: np.abs(frames - frames.mean(-1, keepdims=True)).mean()  # noqa: E731
    assert hue(grey) < 2 < 10 < hue(default)
    corner = lambda frames: frames[:, :6, :6].std(axis=(1, 2)).mean()  # noqa: E731  background only
    assert corner(grey) < 2 < 5 < corner(default)
    manifest = json.loads((tmp_path / "grey" / "av_digits.json").read_text())
    assert manifest["settings"]["grey"] is True and manifest["settings"]["noise"] == 0.0
    with pytest.raises(ValueError, match="scale_min=0.7, scale_max=0.5"):
        AVDigitsBuild(scale_min=0.7, scale_max=0.5, **small)
