"""Decoding: the real clips reach the model's exact input shapes through both published index formats; the
log-mel is Kaldi's; audio and video windows line up in time for any fps, size, rate or channel count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio
from avmae.platform.data import decode
from avmae.platform.data.dataset import AVDataset
from avmae.platform.data.geometry import AUDIOSET_STATS, ClipGeometry
from avmae.platform.data.indexes import Clip
from avmae.platform.data.loader import build_dataset
from avmae.platform.data.mp4 import write_mp4

FIXTURES = Path(__file__).parent / "fixtures"
PAPER = ClipGeometry.from_input_shapes({"audio": (1000, 128), "video": (3, 16, 224, 224)})
CLIPS = {"KlsG1EnBEjc": "KlsG1EnBEjc_000361.mp4", "00W1lcxW-WU": "00W1lcxW-WU_40.000.mp4"}


@pytest.fixture(scope="module")
def vggsound_root(clips_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both real clips under the default VGGSound names `{youtube_id}_{start:06d}.mp4` (links, no copies)."""
    root = tmp_path_factory.mktemp("vggsound")
    (root / "KlsG1EnBEjc_000361.mp4").symlink_to(clips_dir / CLIPS["KlsG1EnBEjc"])
    (root / "00W1lcxW-WU_000040.mp4").symlink_to(clips_dir / CLIPS["00W1lcxW-WU"])
    return root


@pytest.fixture(scope="module")
def audioset_root(clips_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both real clips under the default AudioSet names `{ytid}_{start:.3f}.mp4`."""
    root = tmp_path_factory.mktemp("audioset")
    (root / "KlsG1EnBEjc_361.000.mp4").symlink_to(clips_dir / CLIPS["KlsG1EnBEjc"])
    (root / "00W1lcxW-WU_40.000.mp4").symlink_to(clips_dir / CLIPS["00W1lcxW-WU"])
    return root


def test_geometry_mirrors_model_input_shapes():
    assert PAPER == ClipGeometry(audio_frames=1000, num_frames=16, img_size=224)
    assert PAPER.input_shapes == {"audio": (1000, 128), "video": (3, 16, 224, 224)}
    assert PAPER.short_side == 256 and PAPER.duration == 10.0
    assert ClipGeometry(800, 16, 112).short_side == 128
    with pytest.raises(ValueError, match=r"\(3, T, S, S\)"):
        ClipGeometry.from_input_shapes({"audio": (800, 128), "video": (3, 16, 224, 192)})


@pytest.mark.parametrize("train", [False, True])
def test_real_clips_through_vggsound_index(vggsound_root: Path, train: bool):
    dataset = build_dataset("vggsound", vggsound_root, FIXTURES / "vggsound_real.csv", "test", PAPER, train)
    assert [c.path.name for c in dataset.clips] == ["KlsG1EnBEjc_000361.mp4", "00W1lcxW-WU_000040.mp4"]
    for i, expected_label in enumerate([0, 1]):
        item = dataset[i]
        assert "broken" not in item
        assert item["audio"].shape == (1000, 128) and item["audio"].dtype == torch.float32
        assert item["video"].shape == (3, 16, 224, 224) and item["video"].dtype == torch.uint8
        assert item["video"].min() < item["video"].max()
        assert item["label"].item() == expected_label and item["index"] == i


def test_real_clips_through_audioset_index(audioset_root: Path, clips_dir: Path):
    dataset = build_dataset(
        "audioset", audioset_root, FIXTURES / "audioset_real_segments.csv", "eval", PAPER, train=False,
        labels=clips_dir / "audioset_class_labels_indices.csv",
    )
    assert len(dataset) == 2 and dataset.multi_label and dataset.num_classes == 527
    piano = dataset[0]
    assert piano["audio"].shape == (1000, 128) and piano["video"].shape == (3, 16, 224, 224)
    assert piano["label"].shape == (527,) and piano["label"].dtype == torch.float32
    assert torch.nonzero(piano["label"]).flatten().tolist() == [137, 153]  # Music, Piano
    assert torch.nonzero(dataset[1]["label"]).flatten().tolist() == [0]  # Speech


@pytest.mark.parametrize("name", sorted(CLIPS.values()))
def test_log_mel_is_kaldi_fbank_of_the_clips_own_audio(clips_dir: Path, name: str):
    """Eval windows of these 10 s clips start at 0 s; the sample must be Kaldi fbank of those very samples."""
    path = clips_dir / name
    item = AVDataset([Clip(path, 0)], PAPER, train=False, num_classes=1)[0]
    wave = decode.read_audio(path, 0.0, PAPER.audio_samples / 16000, 16000)
    assert 9.9 * 16000 < len(wave) <= PAPER.audio_samples
    reference = torchaudio.compliance.kaldi.fbank(
        torch.from_numpy(wave)[None], htk_compat=True, sample_frequency=16000, use_energy=False,
        window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10,
    )
    rows = reference.shape[0]
    assert 990 <= rows <= 1000
    denormalised = item["audio"] * AUDIOSET_STATS.std + AUDIOSET_STATS.mean
    torch.testing.assert_close(denormalised[:rows], reference, rtol=0, atol=1e-4)
    assert torch.all(denormalised[rows:].abs() < 1e-5)  # zero-padded before normalisation, as AST


def test_edit_list_frames_before_zero_are_not_used(clips_dir: Path):
    """The 720p clip's edit list hides 100 frames before 0 s and one after its end (10.037 s): the grid is
    the 299 frames on show, 29.97 fps from 0 s, resized while decoding with the aspect kept."""
    path = clips_dir / CLIPS["KlsG1EnBEjc"]
    plan = decode.plan_clip(path)
    assert plan.origin == 0.0 and plan.pts.tolist() == [3003 * k for k in range(299)]  # 1/90000 s ticks
    assert abs(1 / plan.step - 30000 / 1001) < 1e-6
    assert decode.read_frames(plan, np.array([0, 298]), 256).shape == (2, 256, 455, 3)


def test_audio_and_video_windows_share_the_relative_offset(tmp_path: Path):
    """4:3 video at 25 fps, stereo 44.1 kHz audio: frame k has brightness 2k, a tone starts at exactly 2 s."""
    fps, seconds, rate = 25, 4, 44100
    frames = np.stack([np.full((120, 160, 3), 2 * k, np.uint8) for k in range(fps * seconds)])
    t = np.arange(seconds * rate) / rate
    audio = np.where(t >= 2.0, 0.5 * np.sin(2 * np.pi * 1000 * t), 0.0)
    write_mp4(tmp_path / "sync.mp4", frames, fps, np.stack([audio, 0.5 * audio]), rate)
    geometry = ClipGeometry(audio_frames=100, num_frames=4, img_size=96, frame_stride=1)
    dataset = AVDataset([Clip(tmp_path / "sync.mp4", 0)], geometry, train=False, num_classes=1)
    item = dataset[0]
    assert item["video"].shape == (3, 4, 96, 96) and item["audio"].shape == (100, 128)
    # 97 stride-aligned starts -> middle one, frame 48 (1.92 s); u = 0.5 -> audio 1.5 s .. 2.5 s.
    brightness = item["video"][0, :, 48, 48].float()
    torch.testing.assert_close(brightness, torch.tensor([96.0, 98.0, 100.0, 102.0]), atol=3.0, rtol=0)
    energy = item["audio"].mean(dim=1)
    onset = int(torch.argmax(energy[1:] - energy[:-1])) + 1
    assert abs(onset - 50) <= 2  # the tone at 2.0 s sits 0.5 s into the window


def test_short_clip_is_padded(tmp_path: Path):
    """A 0.5 s clip in a 1 s / 8-frame window: last frame repeats, log-mel is zero-padded."""
    frames = np.stack([np.full((64, 64, 3), 20 * k, np.uint8) for k in range(8)])
    write_mp4(tmp_path / "short.mp4", frames, 16, np.full(8000, 0.1, np.float32), 16000)
    geometry = ClipGeometry(audio_frames=100, num_frames=8, img_size=32, frame_stride=2)
    item = AVDataset([Clip(tmp_path / "short.mp4", 0)], geometry, train=True, num_classes=1)[0]
    assert item["video"].shape == (3, 8, 32, 32)
    brightness = item["video"][0, :, 16, 16].float()
    assert torch.all(brightness[3:] == brightness[3])  # positions 0,2,4,6 then frame 6 repeated
    padded = item["audio"] * AUDIOSET_STATS.std + AUDIOSET_STATS.mean
    assert torch.all(padded[50:].abs() < 1e-5) and torch.all(padded[:45].abs() > 1e-3)

