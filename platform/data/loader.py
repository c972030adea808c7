"""One entry point from a dataset description to a DataLoader: index -> (cached or raw) Dataset -> batches.

Batches are dicts made by `collate.AVCollate` (or, from the decoded cache, by `batch_reader.CachedBatches`:
the same keys, dtypes, shapes and values).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from . import avdigits
from .batch_reader import CachedBatches
from .cache import CachedAVDataset, write_cache
from .collate import AVCollate
from .config import DEFAULT_MAX_BROKEN, KINDS
from .dataset import AVDataset
from .geometry import AUDIOSET_STATS, AudioStats, ClipGeometry
from .indexes import (
    AUDIOSET_PATTERN,
    EPIC_PATTERN,
    VGGSOUND_PATTERN,
    Index,
    read_audioset,
    read_epic,
    read_vggsound,
)
from .scan import ScanReport, scan_clips


def load_index(
    kind: str,
    root: str | Path,
    index: str | Path | None,
    split: str | None,
    pattern: str | None = None,
    labels: str | Path | None = None,
    target: str = "verb",
) -> Index:
    """Read one split of an index with the adapter for `kind`.

    VGGSound-format indexes (default ROOT/vggsound.csv) filter rows on their split column; AudioSet and EPIC
    publish one file per split, so there `split` only names the cache.
    """
    root = Path(root)
    if kind in ("vggsound", "av-digits"):
        index = index or root / "vggsound.csv"
        classes = avdigits.DIGIT_WORDS if kind == "av-digits" else None
        return read_vggsound(index, root, split, pattern or VGGSOUND_PATTERN, classes=classes)
    if index is None:
        raise ValueError(f"kind {kind!r} needs an index file")
    if kind == "audioset":
        if labels is None:
            raise ValueError("AudioSet needs `labels` (class_labels_indices.csv)")
        return read_audioset(index, root, labels, pattern or AUDIOSET_PATTERN)
    if kind == "epic":
        return read_epic(index, root, target, pattern or EPIC_PATTERN)
    raise ValueError(f"unknown dataset kind {kind!r}; choose from {', '.join(KINDS)}")


def cache_path(cache_dir: str | Path, split: str | None, geometry: ClipGeometry) -> Path:
    """Caches are per split and per (short side, stride), so sweeping img_size never reads a wrong cache."""
    return Path(cache_dir) / f"{split or 'all'}_r{geometry.short_side}_s{geometry.frame_stride}"


def preflight(
    dataset: Dataset, max_broken_fraction: float = DEFAULT_MAX_BROKEN, workers: int = 1
) -> ScanReport:
    """Count broken clips (probe for raw data, recorded at caching for a cache); raise when too many."""
    if isinstance(dataset, CachedAVDataset):
        report = ScanReport(len(dataset), dataset.broken)
    else:
        report = scan_clips(dataset.clips, workers=workers)
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
) -> AVDataset | CachedAVDataset:
    """A split's Dataset: raw decoding when `cache_dir` is None, else the decoded cache (made on first use).

    `audio_stats` defaults to AudioSet's, or to the measured stats for AV-Digits. `workers` processes scan and
    cache. Unless `max_broken_fraction` is None, a preflight raises TooManyBrokenError above that fraction.
    """
    table = load_index(kind, root, index, split, pattern, labels, target)
    if audio_stats is None:
        audio_stats = avdigits.audio_stats(root) if kind == "av-digits" else AUDIOSET_STATS
    num_classes = len(table.classes)
    if cache_dir is None:
        dataset: AVDataset | CachedAVDataset = AVDataset(
            table.clips, geometry, train, num_classes, table.multi_label, audio_stats
        )
    else:
        path = cache_path(cache_dir, split, geometry)
        write_cache(table.clips, path, geometry, num_classes, table.multi_label, workers=workers)
        dataset = CachedAVDataset(path, geometry, train, audio_stats)
    if max_broken_fraction is not None:
        preflight(dataset, max_broken_fraction, workers)
    return dataset


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
        dataset, num_workers = CachedBatches(dataset, threads=num_workers, pin_memory=pin_memory), 0
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
