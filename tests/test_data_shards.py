"""Compressed cache (JPEG / H.264 shards): the uint8 cache's items and draws within codec error, any window
length, broken clips, resumable writing, the loader and CLI switch, and reading from S3 (moto)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from avmae.platform.data import DataConfig
from avmae.platform.data.avdigits import build_av_digits
from avmae.platform.data.batch_reader import CachedBatches
from avmae.platform.data.cache import VERSION, CachedAVDataset, write_cache
from avmae.platform.data.cli import data
from avmae.platform.data.codecs import H264Codec, JpegCodec, decode_jpeg_batch
from avmae.platform.data.config import AVDigitsBuild
from avmae.platform.data.geometry import ClipGeometry
from avmae.platform.data.indexes import Clip
from avmae.platform.data.loader import build_from_config, build_loader, load_index
from avmae.platform.data.sampling import ShardLocalSampler, train_sampler
from avmae.platform.data.shards import ShardBatches, ShardedAVDataset, write_shards
from click.testing import CliRunner
from torch.utils.data import DistributedSampler

GEOMETRY = ClipGeometry(audio_frames=150, num_frames=4, img_size=32, frame_stride=4)
CODECS = {"jpeg": JpegCodec(90), "h264": H264Codec(8, 20)}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return 10 * np.log10(255**2 / mse) if mse else float("inf")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Clip]:
    """Ten AV-Digits clips and one missing file."""
    out = tmp_path_factory.mktemp("avdigits")
    build_av_digits(out, AVDigitsBuild(clips_per_digit=1, size=48), workers=2, progress=False)
    return [*load_index("av-digits", out, None, None).clips, Clip(out / "gone.mp4", 3)]


@pytest.fixture(scope="module")
def uint8(clips: list[Clip], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cache(clips, tmp_path_factory.mktemp("uint8"), GEOMETRY, 10, shard_size=4, progress=False)


@pytest.fixture(scope="module", params=sorted(CODECS))
def shards(request: pytest.FixtureRequest, clips: list[Clip], tmp_path_factory: pytest.TempPathFactory
           ) -> Path:
    """The clips in 3 shards of one codec's cache, written by 2 processes."""
    out, codec = tmp_path_factory.mktemp(request.param), CODECS[request.param]
    return write_shards(clips, out, GEOMETRY, 10, codec, shard_size=4, workers=2, progress=False)


def test_items_are_the_uint8_caches_within_codec_error(uint8: Path, shards: Path):
    reference, compressed = CachedAVDataset(uint8, GEOMETRY, False), ShardedAVDataset(shards, GEOMETRY, False)
    assert compressed.broken == reference.broken and [b.reason for b in compressed.broken] == ["missing"]
    assert (shards / "broken.csv").read_text() == (uint8 / "broken.csv").read_text()
    shard_files = sorted(p.suffix for p in shards.iterdir() if p.name.startswith("shard_"))
    assert shard_files == [".bin"] * 3 + [".json"] * 3  # two files a shard
    for i in range(10):
        a, b = reference[i], compressed[i]
        assert torch.equal(a["audio"], b["audio"]) and torch.equal(a["label"], b["label"])
        assert psnr(a["video"], b["video"]) > 30
    assert "broken" in compressed[10]


def test_batches_draw_what_the_uint8_reader_draws_and_resume_per_epoch(uint8: Path, shards: Path):
    """The same windows, crops and flips for the same seed; an epoch read by a fresh reader (as after a
    restart) is that epoch of an uninterrupted run."""
    def epoch(dataset, sampler: DistributedSampler, number: int) -> list[dict]:
        sampler.set_epoch(number)
        torch.manual_seed(number)
        return list(build_loader(dataset, batch_size=2, train=True, num_workers=2, sampler=sampler))

    compressed = ShardedAVDataset(shards, GEOMETRY, train=True)
    sampler = DistributedSampler(compressed, num_replicas=1, rank=0, seed=3)
    uninterrupted = [epoch(compressed, sampler, n) for n in (0, 1)][1]
    resumed = epoch(ShardedAVDataset(shards, GEOMETRY, train=True), sampler, 1)
    reference = epoch(CachedAVDataset(uint8, GEOMETRY, train=True), sampler, 1)
    assert isinstance(build_loader(compressed, 2, True).dataset, ShardBatches)
    for a, b, c in zip(uninterrupted, resumed, reference, strict=True):
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["audio"], b["audio"])
        assert torch.equal(a["index"], c["index"]) and torch.equal(a["audio"], c["audio"])
        assert a["n_broken"] == c["n_broken"] and psnr(a["video"], c["video"]) > 30


def test_any_window_length_can_be_drawn(uint8: Path, shards: Path):
    longer = ClipGeometry(audio_frames=60, num_frames=9, img_size=32, frame_stride=4)
    torch.manual_seed(0)
    a = CachedBatches(CachedAVDataset(uint8, longer, train=True)).__getitems__(list(range(10)))
    torch.manual_seed(0)
    b = ShardBatches(ShardedAVDataset(shards, longer, train=True), threads=2).__getitems__(list(range(10)))
    assert b["video"].shape == (10, 3, 9, 32, 32) and torch.equal(a["audio"], b["audio"])
    assert psnr(a["video"], b["video"]) > 30


def test_writing_resumes_and_refuses_another_codec(clips: list[Clip], uint8: Path, shards: Path,
                                                    tmp_path: Path):
    copy = shutil.copytree(shards, tmp_path / "copy")
    kept = (copy / "shard_00000.bin").stat().st_mtime_ns
    (copy / "shard_00001.json").unlink()  # as if interrupted while writing shard 1
    with pytest.raises(FileNotFoundError, match="incomplete"):
        ShardedAVDataset(copy, GEOMETRY, train=False)
    codec = ShardedAVDataset(shards, GEOMETRY, train=False).codec
    write_shards(clips, copy, GEOMETRY, 10, codec, shard_size=4, progress=False)
    assert (copy / "shard_00000.bin").stat().st_mtime_ns == kept
    assert len(ShardedAVDataset(copy, GEOMETRY, False)) == 11
    other = JpegCodec(50) if isinstance(codec, H264Codec) else H264Codec()
    with pytest.raises(ValueError, match="other clips or geometry"):
        write_shards(clips, copy, GEOMETRY, 10, other, shard_size=4, progress=False)
    with pytest.raises(ValueError, match="uncompressed"):
        ShardedAVDataset(uint8, GEOMETRY, False)
    with pytest.raises(ValueError, match="was made for"):
        CachedAVDataset(shards, GEOMETRY, False)


def test_codecs_round_trip_odd_sizes_and_decode_batched_on_the_cpu():
    t, y, x, c = np.meshgrid(np.arange(10), np.arange(27), np.arange(37), np.arange(3), indexing="ij")
    frames = (40 + 3 * x + 2 * y + 5 * t + 20 * c).astype(np.uint8)  # smooth, moving: as video is
    for codec in CODECS.values():
        blobs = [np.frombuffer(bytearray(b), dtype=np.uint8) for b in codec.encode(frames)]
        decoded = codec.decode(blobs[codec.keyframe(9) :], 27, 37)
        assert decoded.shape == (10 - codec.keyframe(9), 27, 37, 3)
        assert psnr(torch.from_numpy(decoded[-1]), torch.from_numpy(frames[9])) > 25
    blobs = [np.frombuffer(bytearray(b), dtype=np.uint8) for b in JpegCodec().encode(frames)]
    assert [tuple(image.shape) for image in decode_jpeg_batch(blobs, "cpu")] == [(3, 27, 37)] * 10


def test_config_and_cli_pick_the_format(clips: list[Clip], tmp_path: Path):
    root = clips[0].path.parent
    config = DataConfig(kind="av-digits", root=root, cache_dir=tmp_path / "cache", cache_format="h264")
    dataset = build_from_config(config, "train", GEOMETRY, train=False)
    assert isinstance(dataset, ShardedAVDataset) and isinstance(dataset.codec, H264Codec)
    assert (tmp_path / "cache" / f"train_r37_s4_v{VERSION}_h264" / "shard_00000.bin").exists()
    assert DataConfig(kind="av-digits", root=root).cache_format == "uint8"
    args = ["cache", "--kind", "av-digits", "--root", str(root), "--split", "train", "--out", str(tmp_path),
            "--img-size", "32", "--workers", "1", "--format", "jpeg"]
    result = CliRunner().invoke(data, args)
    assert result.exit_code == 0, result.output
    dataset = ShardedAVDataset(tmp_path / f"train_r37_s4_v{VERSION}_jpeg", GEOMETRY, train=False)
    assert isinstance(dataset.codec, JpegCodec) and len(dataset) == 10


def in_s3(shards: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The URI of a copy of the cache `shards` in a bucket of the moto server."""
    from pyarrow import fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    s3 = fs.S3FileSystem(endpoint_override=s3_endpoint, scheme="http", region="us-east-1",
                         allow_bucket_creation=True)
    s3.create_dir("avmae")
    fs.copy_files(str(shards), f"avmae/{shards.name}", destination_filesystem=s3)
    uri = f"s3://avmae/{shards.name}?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    return uri


def test_reads_from_s3_through_a_bounded_local_copy(shards: Path, s3_endpoint: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    uri = in_s3(shards, s3_endpoint, monkeypatch)
    one_shard = (shards / "shard_00000.bin").stat().st_size
    remote = ShardedAVDataset(uri, GEOMETRY, False, local_dir=tmp_path, max_local_bytes=one_shard)
    local = ShardedAVDataset(shards, GEOMETRY, False)
    assert remote.broken == local.broken
    for i in (0, 5, 9):  # three shards through a folder that holds one
        assert torch.equal(remote[i]["video"], local[i]["video"])
        assert torch.equal(remote[i]["audio"], local[i]["audio"])
    assert len(list(remote.store.local_dir.iterdir())) == 1


def test_each_rank_draws_a_contiguous_run_of_whole_shards_seeded_per_epoch():
    n, shard_size, world = 103, 10, 4
    samplers = [ShardLocalSampler(range(n), shard_size, world, rank, seed=7) for rank in range(world)]

    def epoch(number: int) -> list[list[int]]:
        for s in samplers:
            s.set_epoch(number)
        return [list(s) for s in samplers]

    first = epoch(0)
    assert all(len(run) == len(samplers[0]) == 26 for run in first)
    drawn = sorted(i for run in first for i in run)
    assert set(drawn) == set(range(n)) and len(drawn) == 104  # every clip, one padded
    for run in first:  # 26 clips: at most 4 shards (2 whole, 2 shared at the edges), not all 11
        assert len({i // shard_size for i in run}) <= 4
        assert run != sorted(run)  # shuffled within the run
    assert epoch(0) == first  # a resumed epoch draws what an uninterrupted one draws
    second = epoch(1)
    assert second != first and {i // shard_size for i in second[0]} != {i // shard_size for i in first[0]}


def test_ranks_reading_a_cache_in_s3_download_only_their_shards(
        shards: Path, s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    uri = in_s3(shards, s3_endpoint, monkeypatch)
    local = ShardedAVDataset(shards, GEOMETRY, True)
    assert type(train_sampler(local, 2, 0, seed=0)) is DistributedSampler  # a local cache: as before
    seen: set[int] = set()
    for rank in range(2):  # 11 clips in 3 shards of 4: a rank's 6 clips span 2 shards
        dataset = ShardedAVDataset(uri, GEOMETRY, True, local_dir=tmp_path / f"rank{rank}")
        sampler = train_sampler(dataset, 2, rank, seed=0)
        assert isinstance(sampler, ShardLocalSampler)
        for i in sampler:
            dataset[i]
            seen.add(i)
        downloaded = {p.name for p in dataset.store.local_dir.iterdir()}
        assert downloaded == {f"shard_{s:05d}.bin" for s in {i // 4 for i in sampler if "broken" not in
                                                              dataset.entries[i]}}
        assert len(downloaded) <= 2
    assert seen == set(range(11))
