"""The threaded cache loader (`batch_reader.CachedBatches`, what `build_loader` gives a cached dataset) yields
exactly the batches of the worker-process DataLoader it replaced: same order, same random windows, crops and
flips for the same seed, same bytes, strides and broken-clip counts, also per rank of a DistributedSampler."""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from avmae.platform.data.batch_reader import CachedBatches, _one_intraop_thread
from avmae.platform.data.cache import CachedAVDataset, write_cache
from avmae.platform.data.collate import AVCollate
from avmae.platform.data.geometry import ClipGeometry
from avmae.platform.data.indexes import Clip
from avmae.platform.data.loader import build_loader, load_index
from avmae.platform.data.mp4 import write_mp4
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Subset

GEOMETRY = ClipGeometry(audio_frames=150, num_frames=4, img_size=32, frame_stride=4)
# 20 frames at stride 4 span 77 of a 64-frame clip, 250 log-mel rows of its 200: the last frame repeats and
# the audio is zero-padded, the reads' special cases. The same cache serves both (same short side, stride).
PAST_THE_END = ClipGeometry(audio_frames=250, num_frames=20, img_size=32, frame_stride=4)
ORDER = [3, 0, 19, 7, 7, 12, 5, 18, 1, 9, 14, 2]  # repeats, and clips of all three shards


@pytest.fixture(scope="module")
def cache(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All 20 clips in three shards, plus a missing file (broken) as clip 20."""
    out = tmp_path_factory.mktemp("cache")
    clips = load_index("av-digits", digits, None, None).clips + [Clip(out / "gone.mp4", 4)]
    write_cache(clips, out, GEOMETRY, 10, workers=2, shard_size=8, progress=False)
    return out


def reference(dataset, sampler, batch_size: int = 4, drop_last: bool = False) -> list[dict]:
    """The loader before issue 16: items from the dataset, collated by AVCollate, in the calling process."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    header = base.header
    collate = AVCollate(base.geometry, header.num_classes, header.multi_label)
    return list(DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                           drop_last=drop_last))


def threaded(dataset, sampler, threads: int, batch_size: int = 4) -> list[dict]:
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    header = base.header
    collate = AVCollate(base.geometry, header.num_classes, header.multi_label)
    reader = CachedBatches(dataset, threads=threads)
    return list(DataLoader(reader, batch_size=batch_size, sampler=sampler, collate_fn=collate))


def assert_same_batches(expected: list[dict], got: list[dict]) -> None:
    assert len(expected) == len(got)
    for a, b in zip(expected, got, strict=True):
        assert a.keys() == b.keys() and type(b) is dict
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                other = b[key]
                assert (value.dtype, value.shape) == (other.dtype, other.shape), key
                assert value.stride() == other.stride(), key
                assert value.numpy().tobytes() == other.numpy().tobytes(), key  # bit for bit, -0.0 included
            else:
                assert value == b[key], key


@pytest.mark.parametrize("geometry", [GEOMETRY, PAST_THE_END], ids=["inside", "past-the-end"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("threads", [0, 3])
def test_same_batches_as_the_item_loader(cache: Path, geometry: ClipGeometry, train: bool, threads: int):
    dataset = CachedAVDataset(cache, geometry, train=train)
    torch.manual_seed(7)
    expected = reference(dataset, ORDER)
    torch.manual_seed(7)
    got = threaded(dataset, ORDER, threads)
    assert_same_batches(expected, got)
    video = got[0]["video"]
    assert video.shape == (4, 3, geometry.num_frames, 32, 32) and video.dtype == torch.uint8
    assert video.is_contiguous(memory_format=torch.channels_last_3d)
    if train:  # the random draws happened: another seed gives other crops
        torch.manual_seed(8)
        assert not torch.equal(threaded(dataset, ORDER, threads)[0]["video"], video)


def test_audio_shorter_than_the_video_is_windowed_as_the_dataset_does(tmp_path: Path):
    """3 s of pictures, 2 s of sound: the audio window lies within the track (cache format 2), drawn alike."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (48, 48, 48, 3), np.uint8)
    write_mp4(tmp_path / "clip.mp4", frames, 16, 0.1 * rng.standard_normal(32000))
    geometry = ClipGeometry(audio_frames=100, num_frames=4, img_size=32, frame_stride=4)
    write_cache([Clip(tmp_path / "clip.mp4", 0)], tmp_path / "cache", geometry, 1, progress=False)
    dataset = CachedAVDataset(tmp_path / "cache", geometry, train=True)
    assert dataset.entries[0]["audio_seconds"] < dataset.entries[0]["n_frames"] / dataset.entries[0]["fps"]
    order = [0] * 24
    torch.manual_seed(3)
    expected = reference(dataset, order, batch_size=8)
    torch.manual_seed(3)
    assert_same_batches(expected, threaded(dataset, order, threads=2, batch_size=8))


def test_build_loader_reads_the_cache_with_threads_and_keeps_its_batches(cache: Path):
    dataset = CachedAVDataset(cache, GEOMETRY, train=True)
    loader = build_loader(Subset(dataset, list(range(20))), batch_size=4, train=True, num_workers=2)
    assert isinstance(loader, DataLoader) and isinstance(loader.dataset, CachedBatches)
    assert loader.num_workers == 0 and loader.dataset.threads == 2 and not loader.collate_fn.multi_label
    assert isinstance(loader.sampler, RandomSampler) and loader.drop_last and len(loader) == 5
    torch.manual_seed(0)
    got = list(loader)
    torch.manual_seed(0)
    expected = list(DataLoader(Subset(dataset, list(range(20))), batch_size=4, shuffle=True, drop_last=True,
                               collate_fn=loader.collate_fn))
    assert_same_batches(expected, got)
    assert sorted(torch.cat([b["index"] for b in got]).tolist()) == list(range(20))  # one epoch, each once


def test_broken_clips_are_counted_as_before(cache: Path, caplog: pytest.LogCaptureFixture):
    dataset = CachedAVDataset(cache, GEOMETRY, train=True)
    order = [20, 3, 20, 5, 20, 20]  # clip 20 is the missing file
    torch.manual_seed(1)
    expected = reference(dataset, order, batch_size=3)
    torch.manual_seed(1)
    got = threaded(dataset, order, threads=2, batch_size=3)
    assert_same_batches(expected, got)
    assert [b["n_broken"] for b in got] == [2, 2]
    assert got[0]["broken"] == [(str(cache / "gone.mp4"), "missing")] * 2
    every_broken = threaded(dataset, [20, 20], threads=2, batch_size=2)[0]  # still a well-formed batch
    assert every_broken["video"].shape == (0, 3, 4, 32, 32) and every_broken["audio"].shape == (0, 150, 128)
    assert every_broken["label"].shape == (0,) and every_broken["n_broken"] == 2


def test_multi_label_batches(digits: Path, tmp_path: Path):
    val = load_index("av-digits", digits, None, "val").clips
    clips = [Clip(c.path, (c.label, (c.label + 3) % 10)) for c in val]
    write_cache(clips, tmp_path, GEOMETRY, 10, multi_label=True, progress=False)
    dataset = CachedAVDataset(tmp_path, GEOMETRY, train=False)
    order = list(range(len(dataset)))
    got = threaded(dataset, order, threads=2)
    assert_same_batches(reference(dataset, order), got)
    assert got[0]["label"].shape == (4, 10) and got[0]["label"].dtype == torch.float32
    assert got[0]["label"].sum(1).tolist() == [2.0] * 4


def test_each_rank_of_a_distributed_sampler_gets_its_own_clips(cache: Path):
    """What the trainer does at world size 2: a seeded DistributedSampler per rank, given to build_loader."""
    dataset = Subset(CachedAVDataset(cache, GEOMETRY, train=True), list(range(20)))  # the 20 good clips
    per_rank = []
    for rank in (0, 1):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=5)
        loader = build_loader(dataset, batch_size=4, train=True, num_workers=2, sampler=sampler)
        assert loader.sampler is sampler and len(loader) == 2  # 10 clips a rank, drop_last: 2 batches
        epochs = []
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            torch.manual_seed(epoch)
            got = list(loader)
            torch.manual_seed(epoch)
            assert_same_batches(reference(dataset, sampler, drop_last=True), got)
            epochs.append(torch.cat([b["index"] for b in got]).tolist())
        assert epochs[0] != epochs[1]  # set_epoch reshuffles
        per_rank.append(epochs[0])
    assert len(per_rank[0]) == len(per_rank[1]) == 8 and not set(per_rank[0]) & set(per_rank[1])


def test_reader_threads_run_torch_ops_on_one_intraop_thread():
    """16 reader threads must not each start an OpenMP team; the training thread keeps its own count."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with ThreadPoolExecutor(2, initializer=_one_intraop_thread) as pool:
            assert list(pool.map(lambda _: torch.get_num_threads(), range(4))) == [1] * 4
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_reader_pickles_without_its_threads(cache: Path):
    reader = CachedBatches(CachedAVDataset(cache, GEOMETRY, train=False), threads=2)
    first = reader.__getitems__([0, 1])
    copy = pickle.loads(pickle.dumps(reader))
    assert copy._pool is None and not copy._maps
    assert_same_batches([AVCollate(GEOMETRY, 10, False)(first)], [AVCollate(GEOMETRY, 10, False)(
        copy.__getitems__([0, 1]))])
