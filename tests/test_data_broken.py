"""Broken input never stops a study: each kind is skipped, counted by reason and logged once; the preflight
refuses a dataset that is mostly garbage."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from avmae.platform.data.broken import REASONS, BrokenLog
from avmae.platform.data.cli import data
from avmae.platform.data.geometry import ClipGeometry
from avmae.platform.data.loader import build_dataset, build_loader, preflight
from avmae.platform.data.mp4 import write_mp4
from avmae.platform.data.scan import TooManyBrokenError
from click.testing import CliRunner

GEOMETRY = ClipGeometry(audio_frames=100, num_frames=4, img_size=32, frame_stride=2)
EXPECTED = {  # youtube_id -> reason
    "missing": "missing", "zerolen": "empty", "cut": "truncated", "silent": "no_audio", "hush": "short_audio",
    "blind": "no_video", "garbage": "undecodable", "corrupt": "undecodable", "brief": "too_short",
}


def media(seconds: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (round(16 * seconds), 48, 48, 3), np.uint8), 0.1 * rng.standard_normal(16000)


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VGGSound-format folder: `good_n` clips plus one clip of each broken kind."""
    root = tmp_path_factory.mktemp("messy")
    frames, audio = media()
    name = "{}_000000.mp4".format
    write_mp4(root / name("good"), frames, 16, audio)
    whole = (root / name("good")).read_bytes()
    (root / name("zerolen")).touch()
    (root / name("cut")).write_bytes(whole[: len(whole) // 2])
    write_mp4(root / name("silent"), frames, 16, None)
    write_mp4(root / name("hush"), frames, 16, audio[:3200])  # 0.2 s of sound for 1 s of pictures
    write_mp4(root / name("blind"), None, 16, audio)
    write_mp4(root / name("brief"), frames[:4], 16, audio[:4000])  # 0.25 s: under the 0.5 s minimum
    (root / name("garbage")).write_bytes(np.random.default_rng(1).bytes(4096))
    mdat = whole.index(b"mdat") + 64  # valid container, H.264 payload overwritten with noise
    noise = np.random.default_rng(2).bytes(3000)
    (root / name("corrupt")).write_bytes(whole[:mdat] + noise + whole[mdat + 3000 :])
    rows = [f"{clip},0,thing,train" for clip in EXPECTED] + ["good,0,thing,train"]
    (root / "vggsound.csv").write_text("\n".join(rows) + "\n")
    return root


def test_every_broken_kind_is_skipped_counted_and_explained(messy: Path):
    assert set(EXPECTED.values()) == set(REASONS)
    dataset = build_dataset("vggsound", messy, messy / "vggsound.csv", "train", GEOMETRY, train=True,
                            max_broken_fraction=None)
    batch = next(iter(build_loader(dataset, batch_size=len(dataset), train=False)))
    assert batch["audio"].shape == (1, 100, 128) and batch["video"].shape == (1, 3, 4, 32, 32)
    assert batch["n_broken"] == len(EXPECTED)
    reasons = {Path(path).name.split("_")[0]: reason for path, reason in batch["broken"]}
    assert reasons == EXPECTED
    log = BrokenLog()
    log.update(batch)
    assert log.total == 9 and log.counts["undecodable"] == 2 and log.counts["missing"] == 1
    assert log.metrics()["data/n_broken"] == 9 and log.metrics()["data/n_broken/truncated"] == 1
    assert "missing_000000.mp4" in log.summary()


def test_broken_counts_survive_worker_processes(messy: Path):
    dataset = build_dataset("vggsound", messy, messy / "vggsound.csv", "train", GEOMETRY, train=True,
                            max_broken_fraction=None)
    loader = build_loader(dataset, batch_size=3, train=True, num_workers=2)
    log = BrokenLog()
    for _ in range(2):  # two epochs, each through its own worker processes
        clips = 0
        for batch in loader:
            log.update(batch)
            clips += len(batch["label"]) + batch["n_broken"]
        assert clips == 9  # drop_last in train: 10 clips -> three batches of 3
    assert log.total <= 16 and set(log.counts) <= set(REASONS)


def test_a_resumed_epoch_draws_the_crops_an_uninterrupted_one_draws(messy: Path):
    """Worker processes of a train loader are seeded as each epoch begins, from the main generator the
    trainer seeds per epoch: epoch 1 of a fresh loader (a resumed trial) equals epoch 1 after epoch 0."""
    dataset = build_dataset("vggsound", messy, messy / "vggsound.csv", "train", GEOMETRY, train=True,
                            max_broken_fraction=None)

    def epoch(loader, e: int) -> list[torch.Tensor]:
        torch.manual_seed(100 + e)
        return [batch["video"] for batch in loader]

    uninterrupted = build_loader(dataset, batch_size=3, train=True, num_workers=2)
    first, second = epoch(uninterrupted, 0), epoch(uninterrupted, 1)
    resumed = epoch(build_loader(dataset, batch_size=3, train=True, num_workers=2), 1)
    assert all(torch.equal(a, b) for a, b in zip(resumed, second, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, second, strict=True))  # the epochs do differ


def test_each_broken_file_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    (tmp_path / "vggsound.csv").write_text("ghost,0,thing,train\n")
    dataset = build_dataset("vggsound", tmp_path, None, "train", GEOMETRY, False, max_broken_fraction=None)
    with caplog.at_level(logging.WARNING, logger="avmae.platform.data.broken"):
        assert dataset[0]["broken"][1] == dataset[0]["broken"][1] == "missing"
    expected = (f"skipping broken clip {tmp_path}/ghost_000000.mp4: missing "
                f"(listed at {tmp_path}/vggsound.csv:1)")
    assert [r.getMessage() for r in caplog.records] == [expected]


def test_preflight_refuses_mostly_broken_data(messy: Path):
    with pytest.raises(TooManyBrokenError) as err:
        build_dataset("vggsound", messy, messy / "vggsound.csv", "train", GEOMETRY, train=True)
    message = str(err.value)
    assert "9 of 10 clips broken (90.0%)" in message and "more than 5.0%" in message
    assert "undecodable: 2, e.g." in message and "garbage_000000.mp4" in message
    assert f"garbage_000000.mp4 ({messy}/vggsound.csv:7" in message  # the index line to fix or drop
    assert "short_audio: 1, e.g." in message and "audio covers 0.2" in message


def test_preflight_tolerates_a_few_broken(messy: Path, tmp_path: Path):
    """1 broken of 20 is exactly 5%: allowed by default, refused at a 4% limit."""
    rows = ["good,0,thing,train"] * 19 + ["missing,0,thing,train"]
    index = tmp_path / "vggsound.csv"
    index.write_text("\n".join(rows) + "\n")
    dataset = build_dataset("vggsound", messy, index, "train", GEOMETRY, train=True)
    assert preflight(dataset).counts == {"missing": 1}
    with pytest.raises(TooManyBrokenError, match="1 of 20 clips broken"):
        preflight(dataset, max_broken_fraction=0.04)


def test_scan_command_reports_and_fails(messy: Path):
    result = CliRunner().invoke(data, ["scan", "--root", str(messy), "--split", "train", "--workers", "1"])
    assert result.exit_code == 1
    assert "truncated: 1" in result.output and "refusing to train" in result.output
    result = CliRunner().invoke(data, ["scan", "--root", str(messy), "--max-broken", "0.9", "--workers", "1"])
    assert result.exit_code == 0, result.output


def test_all_broken_batch_keeps_its_shape(messy: Path, tmp_path: Path):
    index = tmp_path / "vggsound.csv"
    index.write_text("missing,0,thing,train\ngarbage,0,thing,train\n")
    dataset = build_dataset("vggsound", messy, index, "train", GEOMETRY, train=True, max_broken_fraction=None)
    batch = next(iter(build_loader(dataset, batch_size=2, train=True)))
    assert batch["audio"].shape == (0, 100, 128) and batch["video"].shape == (0, 3, 4, 32, 32)
    assert batch["label"].shape == (0,) and batch["n_broken"] == 2
