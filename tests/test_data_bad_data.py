"""Bad data (issue 12): each class a review found, on real files the test writes. Every one is either read
correctly or refused with a message that names the file (and the line, where there is one)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from avmae.platform.data.cache import BROKEN_REPORT, VERSION, CachedAVDataset, write_cache
from avmae.platform.data.cli import data
from avmae.platform.data.dataset import AVDataset
from avmae.platform.data.geometry import AUDIOSET_STATS, ClipGeometry
from avmae.platform.data.indexes import Clip, IndexFormatError, read_audioset, read_epic, read_vggsound
from avmae.platform.data.loader import build_dataset
from avmae.platform.data.mp4 import write_mp4
from avmae.platform.data.scan import scan_clips
from click.testing import CliRunner

FIXTURES = Path(__file__).parent / "fixtures"
GEOMETRY = ClipGeometry(audio_frames=100, num_frames=4, img_size=32, frame_stride=2)
BOM = "\ufeff"


def clip(path: Path, seconds: float = 2.0, audio_seconds: float | None = None, fps: int = 16) -> Path:
    """A noisy clip with a 440 Hz tone over `audio_seconds` (default: as long as the video)."""
    rng = np.random.default_rng(0)
    t = np.arange(round((seconds if audio_seconds is None else audio_seconds) * 16000)) / 16000
    frames = rng.integers(0, 255, (round(seconds * fps), 48, 48, 3), np.uint8)
    write_mp4(path, frames, fps, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    return path


def labels_csv(tmp_path: Path) -> Path:
    path = tmp_path / "class_labels_indices.csv"
    path.write_text('index,mid,display_name\n0,/m/a,"A"\n')
    return path


# --- index files -------------------------------------------------------------------------------------------


def test_a_utf8_bom_is_tolerated(tmp_path: Path):
    """Spreadsheet exports start with a BOM; it became part of the first youtube_id (a 'missing' file)."""
    clip(tmp_path / "first_000000.mp4")
    index = tmp_path / "vggsound.csv"
    index.write_text(f"{BOM}first,0,thing,train\n", encoding="utf-8")
    dataset = build_dataset("vggsound", tmp_path, index, "train", GEOMETRY, train=False)
    assert dataset.clips[0].path == tmp_path / "first_000000.mp4" and "broken" not in dataset[0]
    epic = tmp_path / "EPIC_100_train.csv"
    epic.write_text(BOM + (FIXTURES / "epic_segments.csv").read_text(), encoding="utf-8")
    assert len(read_epic(epic, tmp_path).clips) == 3  # the header's first column is found
    audioset = tmp_path / "segments.csv"
    audioset.write_text(f'{BOM}# YTID, start_seconds, end_seconds, positive_labels\nx, 0.0, 10.0, "/m/a"\n')
    assert len(read_audioset(audioset, tmp_path, labels_csv(tmp_path)).clips) == 1


@pytest.mark.parametrize("stamp", ["-00:00:01.00", "+00:00:01.00", "00:-1:01.00", "00:00:-1.00"])
def test_a_signed_epic_timestamp_is_refused(tmp_path: Path, stamp: str):
    """`-00:00:01.00` was read as 1 s: int("-00") has no sign to lose."""
    lines = (FIXTURES / "epic_segments.csv").read_text().splitlines()
    lines[2] = lines[2].replace("00:00:12.000", stamp)
    index = tmp_path / "EPIC_100_train.csv"
    index.write_text("\n".join(lines) + "\n")
    message = rf"EPIC_100_train\.csv:3: bad timestamp: '{re.escape(stamp)}' is not HH:MM:SS"
    with pytest.raises(IndexFormatError, match=message):
        read_epic(index, tmp_path)


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        ("vggsound", "", "no rows"),
        ("audioset", "", "no segments"),
        ("audioset", "# YTID, start_seconds, end_seconds, positive_labels\n", "no segments"),
        ("epic", "", "empty file"),
        ("epic", "header-only", "no segments after the header"),
        ("labels", "index,mid,display_name\n", "no classes"),
    ],
)
def test_empty_and_header_only_indexes_are_refused_naming_the_file(
    tmp_path: Path, kind: str, text: str, message: str
):
    """They were accepted as 0 clips, and the errors that followed named no file."""
    index = tmp_path / f"{kind}.csv"
    if text == "header-only":
        text = (FIXTURES / "epic_segments.csv").read_text().splitlines()[0] + "\n"
    index.write_text(text)
    read = {
        "vggsound": lambda: read_vggsound(index, tmp_path),
        "audioset": lambda: read_audioset(index, tmp_path, labels_csv(tmp_path)),
        "epic": lambda: read_epic(index, tmp_path),
        "labels": lambda: read_audioset(FIXTURES / "audioset_real_segments.csv", tmp_path, index),
    }[kind]
    with pytest.raises(IndexFormatError, match=rf"^{re.escape(str(index))}: {message}"):
        read()


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ("latin-1", r":3: not UTF-8 text \(byte 0xe9\)"),
        ("utf-16", ": UTF-16 text; save the index as UTF-8"),
        ("binary", r":1: not UTF-8 text"),
        ("nul", r":2: binary data \(NUL bytes\)"),
    ],
)
def test_a_binary_or_non_utf8_index_names_the_file(tmp_path: Path, content: str, where: str):
    """It raised a bare codec error naming no file."""
    rows = "a,0,thing,train\nb,0,thing,train\ncafé,0,thing,train\n"
    payload = {
        "latin-1": rows.encode("latin-1"),
        "utf-16": rows.encode("utf-16"),
        "binary": b"\x89PNG\r\n\x1a\n" + np.random.default_rng(0).bytes(512),
        "nul": b"a,0,thing,train\nb\x00\x00,0,thing,train\n",
    }[content]
    index = tmp_path / "vggsound.csv"
    index.write_bytes(payload)
    with pytest.raises(IndexFormatError, match=re.escape(str(index)) + where):
        read_vggsound(index, tmp_path)
    result = CliRunner().invoke(data, ["scan", "--root", str(tmp_path), "--workers", "1"])
    assert result.exit_code == 1 and str(index) in result.output


# --- media ------------------------------------------------------------------------------------------------


def test_the_audio_window_lies_within_a_shorter_audio_track(tmp_path: Path):
    """4 s of video, 2.5 s of sound, a 2 s window: placed by the video's duration the eval window ran
    1.0-3.0 s, half a second of it zero padding; within the audio track it runs 0.25-2.25 s."""
    clips = [Clip(clip(tmp_path / "short.mp4", seconds=4.0, audio_seconds=2.5), 0)]
    geometry = ClipGeometry(audio_frames=200, num_frames=4, img_size=32, frame_stride=2)
    raw = AVDataset(clips, geometry, train=False, num_classes=1)[0]
    assert padding_rows(raw["audio"]) == 0  # placed by the video: 50 rows (0.5 s)
    write_cache(clips, tmp_path / "cache", geometry, 1, progress=False)
    cached = CachedAVDataset(tmp_path / "cache", geometry, train=False)[0]
    np.testing.assert_allclose(cached["audio"].numpy(), raw["audio"].numpy(), atol=5e-3)
    for _ in range(20):  # random train windows: at most the last Kaldi frame's 15 ms overhang is padding
        assert padding_rows(AVDataset(clips, geometry, train=True, num_classes=1)[0]["audio"]) <= 2


def padding_rows(audio: torch.Tensor) -> int:
    """Rows of a normalised log-mel that are zero padding (all zero before normalisation)."""
    return int(((audio * AUDIOSET_STATS.std + AUDIOSET_STATS.mean).abs().amax(dim=1) < 1e-3).sum())


def test_a_clip_without_usable_audio_is_broken_with_a_reason(tmp_path: Path):
    """0.3 s of sound under 4 s of pictures gave items of pure padding, and the scan passed them."""
    clip(tmp_path / "hush_000000.mp4", seconds=4.0, audio_seconds=0.3)
    clip(tmp_path / "fine_000000.mp4", seconds=4.0, audio_seconds=3.0)
    index = tmp_path / "vggsound.csv"
    index.write_text("fine,0,thing,train\nhush,0,thing,train\n")
    table = read_vggsound(index, tmp_path)
    report = scan_clips(table.clips)
    assert [(r.reason, r.source) for r in report.broken] == [("short_audio", f"{index}:2")]
    assert "audio covers 0.3" in report.broken[0].detail
    dataset = build_dataset("vggsound", tmp_path, index, None, GEOMETRY, False, max_broken_fraction=None)
    assert "broken" not in dataset[0] and dataset[1]["broken"][1] == "short_audio"
    write_cache(table.clips, tmp_path / "cache", GEOMETRY, 1, progress=False)
    cached = CachedAVDataset(tmp_path / "cache", GEOMETRY, train=False)
    assert [(r.reason, r.source) for r in cached.broken] == [("short_audio", f"{index}:2")]


def test_variable_frame_rate_video_is_sampled_evenly_in_time(tmp_path: Path):
    """2 s at 40 fps, then 2 s at 5 fps; brightness = 50 x time. By index, 8 frames at stride 8 all came from
    the dense first half (0.4-1.8 s); by time they spread evenly over the clip."""
    times = np.concatenate([np.arange(80) * 0.025, 2 + np.arange(10) * 0.2])
    frames = np.stack([np.full((64, 64, 3), round(50 * t), np.uint8) for t in times])
    audio = (0.3 * np.sin(2 * np.pi * 440 * np.arange(64000) / 16000)).astype(np.float32)
    write_mp4(tmp_path / "vfr.mp4", frames, 22.5, audio, 16000, frame_times=times)
    clips = [Clip(tmp_path / "vfr.mp4", 0)]
    geometry = ClipGeometry(audio_frames=100, num_frames=8, img_size=32, frame_stride=8)
    brightness = AVDataset(clips, geometry, train=False, num_classes=1)[0]["video"][0, :, 16, 16].float()
    assert brightness[0] < 50 and brightness[-1] > 125, brightness  # about 0.6 s to 2.8 s
    steps = brightness.diff()
    assert (steps > 5).all() and steps.max() < 2.5 * steps.min(), brightness
    write_cache(clips, tmp_path / "cache", geometry, 1, progress=False)
    cached = CachedAVDataset(tmp_path / "cache", geometry, train=False)[0]["video"][0, :, 16, 16].float()
    assert cached.tolist() == brightness.tolist()


# --- reports ----------------------------------------------------------------------------------------------


def test_cache_command_reports_its_broken_clips_with_their_index_lines(tmp_path: Path):
    """`avmae data cache` skipped broken clips silently."""
    media = tmp_path / "media"
    media.mkdir()
    clip(media / "good_000000.mp4")
    clip(media / "hush_000000.mp4", audio_seconds=0.2)
    (media / "vggsound.csv").write_text("good,0,thing,train\nghost,0,thing,train\nhush,0,thing,train\n")
    args = ["cache", "--root", str(media), "--split", "train", "--out", str(tmp_path / "cache"),
            "--img-size", "32", "--workers", "1"]
    result = CliRunner().invoke(data, args)
    assert result.exit_code == 0, result.output
    report = tmp_path / "cache" / f"train_r37_s4_v{VERSION}" / BROKEN_REPORT
    assert "cached 1 of 3 clips" in result.output and "2 of 3 clips broken" in result.output
    assert "vggsound.csv:2" in result.output and str(report) in result.output
    with report.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["index_line"], r["reason"]) for r in rows] == [
        (f"{media}/vggsound.csv:2", "missing"), (f"{media}/vggsound.csv:3", "short_audio"),
    ]
    assert rows[1]["detail"].startswith("audio covers 0.2")


def test_scan_command_names_the_index_line_of_each_broken_clip(tmp_path: Path):
    clip(tmp_path / "good_000000.mp4")
    (tmp_path / "vggsound.csv").write_text("good,0,thing,train\n\nghost,0,thing,train\n")
    args = ["scan", "--root", str(tmp_path), "--max-broken", "0.9", "--workers", "1"]
    result = CliRunner().invoke(data, args)
    assert result.exit_code == 0, result.output
    assert f"ghost_000000.mp4 ({tmp_path}/vggsound.csv:3)" in result.output
