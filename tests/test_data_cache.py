"""Decoded cache and DataLoader: the cache yields what raw decoding yields and resumes; loader batches stay
usable under Ray's DistributedSampler swap."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from avmae.platform.data import AVCollate, DataConfig
from avmae.platform.data.avdigits import audio_stats
from avmae.platform.data.broken import BrokenRecord
from avmae.platform.data.cache import VERSION, CachedAVDataset, write_cache
from avmae.platform.data.cli import data
from avmae.platform.data.dataset import AVDataset
from avmae.platform.data.geometry import ClipGeometry
from avmae.platform.data.indexes import Clip
from avmae.platform.data.loader import build_dataset, build_from_config, build_loader, load_index, preflight
from avmae.platform.data.scan import TooManyBrokenError
from click.testing import CliRunner
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler, Subset

GEOMETRY = ClipGeometry(audio_frames=150, num_frames=4, img_size=32, frame_stride=4)


@pytest.fixture(scope="module")
def cache(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All 20 clips, three shards."""
    out = tmp_path_factory.mktemp("cache")
    write_cache(load_index("av-digits", digits, None, None).clips, out, GEOMETRY, 10, workers=2, shard_size=8,
                progress=False)
    return out


def test_cache_yields_the_raw_eval_samples(digits: Path, cache: Path):
    stats = audio_stats(digits)
    raw = AVDataset(load_index("av-digits", digits, None, None).clips, GEOMETRY, False, 10, audio_stats=stats)
    cached = CachedAVDataset(cache, GEOMETRY, train=False, audio_stats=stats)
    assert len(cached) == len(raw) == 20 and not cached.broken
    for i in (0, 7, 19):
        a, b = raw[i], cached[i]
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["label"], b["label"])
        torch.testing.assert_close(a["audio"], b["audio"], atol=5e-3, rtol=0)  # float16 log-mel


def test_cache_train_windows_crops_and_flips_vary(cache: Path):
    cached = CachedAVDataset(cache, GEOMETRY, train=True)
    torch.manual_seed(0)
    videos = [cached[3]["video"] for _ in range(6)]
    assert all(v.shape == (3, 4, 32, 32) for v in videos)
    assert len({v.sum().item() for v in videos}) > 1


def test_cache_resumes_and_refuses_other_geometry(digits: Path, cache: Path, tmp_path: Path):
    copy = shutil.copytree(cache, tmp_path / "cache")
    clips = load_index("av-digits", digits, None, None).clips
    kept = (copy / "shard_00000.frames").stat().st_mtime_ns
    (copy / "shard_00001.json").unlink()  # as if interrupted while writing shard 1
    with pytest.raises(FileNotFoundError, match="incomplete"):
        CachedAVDataset(copy, GEOMETRY, train=False)
    write_cache(clips, copy, GEOMETRY, 10, shard_size=8, progress=False)
    assert (copy / "shard_00001.json").exists()
    assert (copy / "shard_00000.frames").stat().st_mtime_ns == kept
    assert len(CachedAVDataset(copy, GEOMETRY, train=False)) == 20
    with pytest.raises(ValueError, match="other clips or geometry"):
        write_cache(clips, copy, ClipGeometry(150, 4, 64), 10, shard_size=8, progress=False)
    with pytest.raises(ValueError, match="was made for"):
        CachedAVDataset(copy, ClipGeometry(150, 4, 32, frame_stride=2), train=False)


def test_one_switch_between_raw_and_cache(digits: Path, tmp_path: Path):
    config = DataConfig(kind="av-digits", root=digits, cache_dir=tmp_path / "cache")
    dataset = build_from_config(config, "train", GEOMETRY, train=True)
    assert isinstance(dataset, CachedAVDataset)
    assert (tmp_path / "cache" / f"train_r37_s4_v{VERSION}" / "cache.json").exists()
    assert dataset.audio_stats == audio_stats(digits)  # AV-Digits' own measured stats
    raw = build_from_config(config.model_copy(update={"cache_dir": None}), "train", GEOMETRY, train=True)
    assert isinstance(raw, AVDataset) and len(raw) == len(dataset) == 10
    loader = build_loader(dataset, batch_size=4, train=True, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2 and all(b["video"].shape == (4, 3, 4, 32, 32) for b in batches)
    assert all(b["audio"].shape == (4, 150, 128) and b["label"].dtype == torch.int64 for b in batches)


def test_cache_keeps_broken_clips_counted(digits: Path, tmp_path: Path):
    clips = load_index("av-digits", digits, None, "val").clips + [Clip(tmp_path / "gone.mp4", 3)]
    write_cache(clips, tmp_path / "cache", GEOMETRY, 10, progress=False)
    dataset = CachedAVDataset(tmp_path / "cache", GEOMETRY, train=False)
    assert dataset.broken == [BrokenRecord(str(tmp_path / "gone.mp4"), "missing", source="", detail="")]
    batch = next(iter(build_loader(dataset, batch_size=len(dataset), train=False)))
    assert batch["n_broken"] == 1 and len(batch["label"]) == len(clips) - 1
    with pytest.raises(TooManyBrokenError, match="missing: 1"):
        preflight(dataset)


def test_cache_command(digits: Path, tmp_path: Path):
    args = ["cache", "--kind", "av-digits", "--root", str(digits), "--split", "val", "--out", str(tmp_path),
            "--img-size", "32", "--workers", "1"]
    result = CliRunner().invoke(data, args)
    assert result.exit_code == 0, result.output
    assert len(CachedAVDataset(tmp_path / f"val_r37_s4_v{VERSION}", GEOMETRY, train=False)) == 10


def test_real_720p_clip_cached_at_paper_geometry(clips_dir: Path, tmp_path: Path):
    paper = ClipGeometry(1000, 16, 224)
    clips = [Clip(clips_dir / "KlsG1EnBEjc_000361.mp4", 0)]
    write_cache(clips, tmp_path, paper, 1, progress=False)
    cached, raw = CachedAVDataset(tmp_path, paper, train=False)[0], AVDataset(clips, paper, False, 1)[0]
    assert cached["audio"].shape == (1000, 128) and cached["video"].shape == (3, 16, 224, 224)
    assert torch.equal(cached["video"], raw["video"])
    torch.testing.assert_close(cached["audio"], raw["audio"], atol=5e-3, rtol=0)
    assert (tmp_path / "shard_00000.frames").stat().st_size == 75 * 256 * 455 * 3  # 4th of 299 on the grid


def test_collate_formats_multi_label_and_broken():
    collate = AVCollate(GEOMETRY, num_classes=5, multi_label=True)
    item = {"audio": torch.zeros(150, 128), "video": torch.zeros(3, 4, 32, 32), "index": 0,
            "label": torch.tensor([0.0, 1, 0, 0, 1])}
    batch = collate([item, {"index": 1, "broken": ("x.mp4", "missing")}, item])
    assert batch["label"].shape == (2, 5) and batch["index"].tolist() == [0, 0]
    assert batch["n_broken"] == 1 and batch["broken"] == [("x.mp4", "missing")]
    empty = collate([{"index": 1, "broken": ("x.mp4", "missing")}])
    assert empty["label"].shape == (0, 5) and empty["video"].shape == (0, 3, 4, 32, 32)


def test_collate_stacks_video_as_the_items_and_keeps_frames_channels_last_in_memory():
    """Items hold [3, T, H, W] views of decoded [T, H, W, 3] frames; the batch has the same values."""
    collate = AVCollate(GEOMETRY, num_classes=5, multi_label=False)
    frames = [torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8) for _ in range(2)]
    items = [{"audio": torch.zeros(150, 128), "video": f.permute(3, 0, 1, 2), "index": i, "label": 1}
             for i, f in enumerate(frames)]
    video = collate(items)["video"]
    assert video.dtype == torch.uint8 and torch.equal(video, torch.stack([it["video"] for it in items]))
    assert video.is_contiguous(memory_format=torch.channels_last_3d)


def test_loader_lets_ray_swap_in_a_distributed_sampler(digits: Path):
    dataset = build_dataset("av-digits", digits, None, "train", GEOMETRY, train=True)
    train = build_loader(dataset, batch_size=4, train=True)
    evaluation = build_loader(dataset, batch_size=4, train=False)
    assert isinstance(train.sampler, RandomSampler) and train.drop_last
    assert isinstance(evaluation.sampler, SequentialSampler) and not evaluation.drop_last
    assert train.pin_memory == torch.cuda.is_available()
    # what ray.train.torch.prepare_data_loader rebuilds for rank 0 of 2
    rebuilt = DataLoader(
        train.dataset, batch_size=train.batch_size, shuffle=False, num_workers=train.num_workers,
        collate_fn=train.collate_fn, pin_memory=train.pin_memory, drop_last=train.drop_last,
        sampler=DistributedSampler(train.dataset, num_replicas=2, rank=0, shuffle=True),
    )
    indices = np.concatenate([b["index"].numpy() for b in rebuilt])
    assert len(indices) == 4 and len(set(indices)) == 4  # 10 clips -> 5 for this rank -> one full batch
    subset = build_loader(Subset(dataset, [1, 2, 3]), batch_size=2, train=False)  # a capped split
    assert [b["index"].tolist() for b in subset] == [[1, 2], [3]]  # indices name clips of the full split
