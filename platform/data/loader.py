"""One entry point from a dataset description to a DataLoader: index -> (cached or raw) Dataset -> batches.

`build_from_config` builds a split from a study's `DataConfig`; `preflight_index` checks the whole index
(every split) before a study starts.

Batches are dicts made by `collate.AVCollate` (or, from the decoded cache, by `batch_reader.CachedBatches`:
the same keys, dtypes, shapes and values).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from . import avdigits
from .batch_reader import CachedBatches
from .cache import VERSION as CACHE_VERSION
from .cache import CachedAVDataset, write_cache
from .codecs import default_codec
from .collate import AVCollate
from .config import DEFAULT_MAX_BROKEN, DIGIT_WORDS, DataConfig
from .dataset import AVDataset
from .geometry import AUDIOSET_STATS, MIN_CLIP_SECONDS, AudioStats, ClipGeometry
from .hygiene import HygieneReport, check_splits
from .indexes import (
    VGGSOUND_PATTERN,
    Index,
    load_index,
    read_vggsound_splits,
)
from .locations import join
from .scan import ScanReport, scan_clips
from .shards import ShardBatches, ShardedAVDataset, write_shards
from .store import DEFAULT_LOCAL_BYTES

log = logging.getLogger(__name__)


def load_split(config: DataConfig, split: str | None) -> Index:
    """`load_index` for one split of a study's dataset."""
    index = config.index_file(split)
    return load_index(config.kind, config.root, index, split, config.pattern, config.labels, config.target)


def load_splits(config: DataConfig) -> dict[str, Index]:
    """Every split the dataset's index holds: each file of an `index` mapping, each value of a VGGSound-format
    file's split column, or one AudioSet or EPIC file as the split "all"."""
    if isinstance(config.index, dict):
        return {split: load_split(config, split) for split in config.index}
    if config.kind in ("vggsound", "av-digits"):
        root = Path(config.root)
        classes = DIGIT_WORDS if config.kind == "av-digits" else None
        return read_vggsound_splits(
            config.index or root / "vggsound.csv", root, config.pattern or VGGSOUND_PATTERN, classes
        )
    return {"all": load_split(config, None)}


def check_index(config: DataConfig) -> HygieneReport:
    """Conflicting labels, split overlap and duplicate rows across every split of the dataset's index."""
    return check_splits(load_splits(config))


def preflight_index(config: DataConfig) -> HygieneReport:
    """Before a study: raise IndexHygieneError (every row named) when the index has errors; log warnings."""
    report = check_index(config).check()
    if report.warnings:
        log.warning("%s", report.describe())
    return report


def cache_path(cache_dir: str | Path, split: str | None, geometry: ClipGeometry, fmt: str = "uint8") -> Path:
    """Caches are per split, per (short side, stride), per cache version and per frame format
    (`cache_format`), so sweeping img_size never reads a wrong cache and a new avmae writes its own beside an
    old one instead of refusing it."""
    name = f"{split or 'all'}_r{geometry.short_side}_s{geometry.frame_stride}_v{CACHE_VERSION}"
    return Path(cache_dir) / (name if fmt == "uint8" else f"{name}_{fmt}")


def cache_location(cache_dir: str | Path, split: str | None, geometry: ClipGeometry,
                   fmt: str = "uint8") -> str | Path:
    """`cache_path` for a folder or a URI (the cache's name goes into the URI's path)."""
    return join(cache_dir, cache_path("", split, geometry, fmt).name)


@dataclass(frozen=True)
class CacheUse:
    """How a split's cache is written and read: decoding `workers` (or Ray tasks with `cluster`), and where
    the shards of a remote cache are copied (`copy_dir`, at most `copy_bytes`)."""

    workers: int = 1
    cluster: bool = False
    copy_dir: str | Path | None = None
    copy_bytes: int = DEFAULT_LOCAL_BYTES


def open_cache(
    clips: list, cache_dir: str | Path, split: str | None, geometry: ClipGeometry, train: bool,
    num_classes: int, multi_label: bool, audio_stats: AudioStats, fmt: str, min_clip_s: float,
    use: CacheUse = CacheUse(),
) -> CachedAVDataset:
    """The split's cache in format `fmt` at a folder or a URI (`s3://...`, compressed formats), written first
    unless it is there (resumable)."""
    path = cache_location(cache_dir, split, geometry, fmt)
    if fmt == "uint8":
        write_cache(clips, path, geometry, num_classes, multi_label, workers=use.workers,
                    min_clip_s=min_clip_s, cluster=use.cluster)
        return CachedAVDataset(path, geometry, train, audio_stats)
    write_shards(clips, path, geometry, num_classes, default_codec(fmt), multi_label, workers=use.workers,
                 min_clip_s=min_clip_s, cluster=use.cluster)
    return ShardedAVDataset(path, geometry, train, audio_stats, use.copy_dir, use.copy_bytes)


def preflight(
    dataset: Dataset, max_broken_fraction: float = DEFAULT_MAX_BROKEN, workers: int = 1,
    min_clip_s: float = MIN_CLIP_SECONDS,
) -> ScanReport:
    """Count broken clips (probe for raw data, recorded at caching for a cache); raise when too many."""
    if isinstance(dataset, CachedAVDataset):
        report = ScanReport(len(dataset), dataset.broken)
    else:
        report = scan_clips(dataset.clips, workers=workers, min_clip_s=min_clip_s)
    return report.check(max_broken_fraction)


def build_dataset(
    kind: str,
    root: str | Path,
    index: str | Path | None,
    split: str | None,
    geometry: ClipGeometry,
    train: bool,
    *,
    pattern: str | None = None,
    labels: str | Path | None = None,
    target: str = "verb",
    audio_stats: AudioStats | None = None,
    cache_dir: str | Path | None = None,
    max_broken_fraction: float | None = DEFAULT_MAX_BROKEN,
    workers: int = 1,
    min_clip_s: float = MIN_CLIP_SECONDS,
    cache_format: str = "uint8",
    cache_use: CacheUse | None = None,
) -> AVDataset | CachedAVDataset:
    """A split's Dataset: raw decoding when `cache_dir` is None, else the decoded cache in `cache_format`
    (made on first use; `open_cache`, as `cache_use` says, by default with `workers` processes).

    `audio_stats` defaults to AudioSet's, or to the measured stats for AV-Digits. `workers` processes scan and
    cache. Unless `max_broken_fraction` is None, a preflight raises TooManyBrokenError above that fraction.
    Clips shorter than `min_clip_s` seconds are broken (`too_short`) in all three.
    """
    table = load_index(kind, root, index, split, pattern, labels, target)
    if audio_stats is None:
        audio_stats = avdigits.audio_stats(root) if kind == "av-digits" else AUDIOSET_STATS
    num_classes = len(table.classes)
    if cache_dir is None:
        dataset: AVDataset | CachedAVDataset = AVDataset(
            table.clips, geometry, train, num_classes, table.multi_label, audio_stats, min_clip_s=min_clip_s
        )
    else:
        dataset = open_cache(table.clips, cache_dir, split, geometry, train, num_classes, table.multi_label,
                             audio_stats, cache_format, min_clip_s, cache_use or CacheUse(workers))
    if max_broken_fraction is not None:
        preflight(dataset, max_broken_fraction, workers, min_clip_s)
    return dataset


def build_from_config(
    config: DataConfig, split: str, geometry: ClipGeometry, train: bool, cluster: bool = False
) -> AVDataset | CachedAVDataset:
    """`build_dataset` for one split of a study's dataset (`cluster`: a missing cache is written by Ray tasks
    on the connected cluster)."""
    stats = None if config.audio_mean is None else AudioStats(config.audio_mean, config.audio_std)
    use = CacheUse(config.workers, cluster, config.cache_copy_dir, int(config.cache_copy_gb * 2**30))
    return build_dataset(
        config.kind,
        config.root,
        config.index_file(split),
        split,
        geometry,
        train,
        pattern=config.pattern,
        labels=config.labels,
        target=config.target,
        audio_stats=stats,
        cache_dir=config.cache_dir,
        max_broken_fraction=config.max_broken_fraction,
        workers=config.workers,
        min_clip_s=config.min_clip_s,
        cache_format=config.cache_format,
        cache_use=use,
    )


def build_loader(
    dataset: AVDataset | CachedAVDataset | Subset,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    *,
    pin_memory: bool | None = None,
    drop_last: bool | None = None,
    prefetch_factor: int | None = None,
    sampler: Sampler | None = None,
) -> DataLoader:
    """Plain DataLoader: shuffled (or in `sampler`'s order: the trainer passes each rank's seeded
    DistributedSampler) and drop_last in train, pinned memory on CUDA.

    Raw media: `num_workers` worker processes decode items; in train they are started afresh each epoch, so
    their augmentation streams are seeded from the main process's generator as that epoch begins (the
    trainer seeds it per seed, rank and epoch): a trial resumed at epoch e draws the crops and flips an
    uninterrupted one draws there. The decoded cache: `num_workers`
    threads of this process read whole batches (`CachedBatches`; `num_workers=0` on the loader itself), which
    delivers twice the clips per CPU core of worker processes and has no single-process cap on the GPU
    machine (docs/benchmarks.md); `prefetch_factor` only applies to worker processes."""
    base = dataset
    while isinstance(base, Subset):  # a fixed subset of clips (e.g. a capped probe split)
        base = base.dataset
    if isinstance(base, CachedAVDataset):
        num_classes, multi_label = base.header.num_classes, base.header.multi_label
    else:
        num_classes, multi_label = base.num_classes, base.multi_label
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    if isinstance(base, CachedAVDataset):
        reader = ShardBatches if isinstance(base, ShardedAVDataset) else CachedBatches
        dataset, num_workers = reader(dataset, threads=num_workers, pin_memory=pin_memory), 0
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train if sampler is None else None,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=AVCollate(base.geometry, num_classes, multi_label),
        pin_memory=pin_memory,
        drop_last=train if drop_last is None else drop_last,
        persistent_workers=num_workers > 0 and not train,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
    )
