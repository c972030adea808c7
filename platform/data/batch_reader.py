"""Whole batches from the decoded cache, read by threads of the training process straight into the batch's
tensors (pinned on CUDA): no worker processes, no pickling, and each pixel copied once.

Why: a DataLoader with worker processes puts every batch in new shared memory, then copies it again into
pinned memory in one main-process thread; at the paper's geometry (2.4 MB of video a clip) that capped 16
workers at 599 clips/s on the H200 machine. numpy copies and torch ops release the GIL, so reader threads
scale with cores.

The loader stays a plain `DataLoader` with `num_workers=0`: its sampler hands each batch's indices to
`CachedBatches.__getitems__`, which draws every random choice in the order `CachedAVDataset.__getitem__`
draws them (the same batches as that loader for the same seed and order), and `AVCollate` passes the batch
through. Ray's `prepare_data_loader` can therefore rebuild it with a DistributedSampler and keep the reader.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from .cache import CachedAVDataset, cache_window
from .collate import Collated
from .dataset import label_tensor
from .window import frame_positions


@dataclass(frozen=True)
class ClipRead:
    """Where one clip of a batch comes from: every random choice already drawn."""

    entry: dict[str, Any]  # the clip's cache entry
    positions: np.ndarray  # stored-frame numbers of the window
    top: int
    left: int
    flip: bool
    audio_frame: int


def _unwrap(dataset: Dataset, source: type[CachedAVDataset]) -> tuple[CachedAVDataset, list[int] | None]:
    """The cache under (nested) Subsets, and the map from loader indices to cache indices."""
    mapping: list[int] | None = None
    while isinstance(dataset, Subset):
        outer = mapping
        mapping = [int(i) for i in dataset.indices]
        if outer is not None:
            mapping = [mapping[i] for i in outer]
        dataset = dataset.dataset
    if not isinstance(dataset, source):
        got = type(dataset).__name__
        raise TypeError(f"this reader reads a {source.__name__} (or a Subset of one), got {got}")
    return dataset, mapping


@functools.cache
def _openmp_runtimes() -> tuple[ctypes.CDLL, ...]:
    """The OpenMP runtimes mapped into this process (GNU, LLVM or Intel; wheels rename and bundle their own,
    so torch's may sit beside another package's)."""
    maps = Path("/proc/self/maps")
    lines = maps.read_text().splitlines() if maps.exists() else []
    paths = dict.fromkeys(p for p in (line.split()[-1] for line in lines if "/" in line)
                          if re.match(r"lib(gomp|omp|iomp5)\b", Path(p).name))
    return tuple(ctypes.CDLL(path) for path in paths)


def _one_intraop_thread() -> None:
    """Reader-thread initializer: this thread's torch ops use one OpenMP thread.

    torch gives every new thread its process-wide intra-op count, so 16 readers on a 16-core machine could
    each start a 16-thread OpenMP team. `torch.set_num_threads` would change the training thread's count as
    well; `omp_set_num_threads` sets only the calling thread's, in the runtime torch reports it from."""
    torch.get_num_threads()  # torch's lazy per-thread set-up first, so it cannot undo the call below
    for runtime in _openmp_runtimes():
        runtime.omp_set_num_threads(1)
        if torch.get_num_threads() == 1:
            return


class CachedBatches(Dataset):
    """`dataset` (a CachedAVDataset or a Subset of one) with `__getitems__`: one batch read by `threads`
    threads (0: in the calling thread) into new tensors, pinned when `pin_memory` and CUDA is available.
    Subclasses read other cache formats by overriding `source`, `_frames` and `_fbank`."""

    source: ClassVar[type[CachedAVDataset]] = CachedAVDataset

    def __init__(self, dataset: CachedAVDataset | Subset, threads: int = 0, pin_memory: bool = False) -> None:
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        self.dataset = dataset
        self.base, self._mapping = _unwrap(dataset, self.source)
        self.threads, self.pin_memory = threads, pin_memory and torch.cuda.is_available()
        self._maps: dict[tuple[int, str], np.ndarray] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset[index]  # one item exactly as the dataset gives it

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {}, "_pool": None}  # threads and maps do not cross processes

    def __getitems__(self, indices: list[int]) -> Collated:
        base, g = self.base, self.base.geometry
        reads: list[ClipRead] = []
        kept: list[int] = []
        broken: list[tuple[str, str]] = []
        for i in indices:
            index = self._mapping[i] if self._mapping is not None else int(i)
            if "broken" in base.entries[index]:
                broken.append(base[index]["broken"])  # logged once per file, as the dataset does
            else:
                reads.append(self._plan(index))
                kept.append(index)
        n = len(reads)
        video = torch.empty((n, g.num_frames, g.img_size, g.img_size, 3), dtype=torch.uint8,
                            pin_memory=self.pin_memory)
        audio = torch.empty((n, g.audio_frames, g.num_mel_bins), pin_memory=self.pin_memory)
        video_np, audio_np = video.numpy(), audio.numpy()

        def fill(row: int) -> None:
            self._fill(reads[row], video[row], video_np[row], audio_np[row])

        if self.threads and n > 1:
            list(self._executor().map(fill, range(n)))  # list(): a reader's exception is raised here
        else:
            for row in range(n):
                fill(row)
        header = base.header
        labels = [label_tensor(header.labels[i], header.num_classes, header.multi_label) for i in kept]
        label = torch.stack(labels) if labels else (
            torch.zeros(0, header.num_classes) if header.multi_label else torch.zeros(0, dtype=torch.int64)
        )
        return Collated(
            audio=audio,
            video=video.permute(0, 4, 1, 2, 3),  # [B, 3, T, S, S], channels_last_3d in memory as AVCollate's
            label=label,
            index=torch.tensor(kept, dtype=torch.int64),
            n_broken=len(broken),
            broken=broken,
        )

    def _plan(self, index: int) -> ClipRead:
        """Draw window, crop and flip as `CachedAVDataset.__getitem__` and `video_tensor` do, same order."""
        entry, g, train = self.base.entries[index], self.base.geometry, self.base.train
        height, width = entry["frames"][2:4]
        window = cache_window(entry, g, train)
        size = g.img_size
        if train:
            top = int(torch.randint(height - size + 1, ()))
            left = int(torch.randint(width - size + 1, ()))
        else:
            top, left = (height - size) // 2, (width - size) // 2
        flip = train and bool(torch.rand(()) < 0.5)
        positions = frame_positions(window, entry["n_frames"], g) // g.frame_stride
        return ClipRead(entry, positions, top, left, flip, window.audio_frame)

    def _fill(self, read: ClipRead, video: torch.Tensor, video_np: np.ndarray, audio_np: np.ndarray) -> None:
        """One clip into its batch row: video [T, S, S, 3] uint8, audio [A, mel] normalised float32."""
        size = self.base.geometry.img_size
        frames, positions = self._frames(read)
        rows, cols = slice(read.top, read.top + size), slice(read.left, read.left + size)
        # Runs of consecutive frames, one copy each: one run a clip, unless the window passes the clip's end
        # and its last frame repeats.
        cuts = [0, *(np.flatnonzero(np.diff(positions) != 1) + 1).tolist(), len(positions)]
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            first = int(positions[lo])
            crop = frames[first : first + hi - lo, rows, cols]
            if read.flip:  # torch flips channels-last pixels vectorised; numpy's [:, :, ::-1] is 10x slower
                video[lo:hi].copy_(torch.flip(torch.from_numpy(crop), [2]))
            else:
                np.copyto(video_np[lo:hi], crop)
        # Zero-padded past the clip's end before normalising, as `fit_frames` then `audio_tensor` do; float32
        # arithmetic with float32 statistics gives torch's values bit for bit.
        fbank = self._fbank(read.entry)
        kept = max(0, min(len(audio_np), len(fbank) - read.audio_frame))
        np.copyto(audio_np[:kept], fbank[read.audio_frame : read.audio_frame + kept])
        audio_np[kept:] = 0
        stats = self.base.audio_stats
        np.subtract(audio_np, np.float32(stats.mean), out=audio_np)
        np.divide(audio_np, np.float32(stats.std), out=audio_np)

    def _frames(self, read: ClipRead) -> tuple[np.ndarray, np.ndarray]:
        """(frames [n, H, W, 3], positions of the window's frames among them): here all stored frames."""
        offset, stored, height, width, _ = read.entry["frames"]
        frames = self._map(read.entry["shard"], "frames")[offset : offset + stored * height * width * 3]
        return frames.reshape(stored, height, width, 3), read.positions

    def _fbank(self, entry: dict[str, Any]) -> np.ndarray:
        """The clip's whole float16 log-mel [rows, mel]."""
        start, rows, mel = entry["fbank"]
        return self._map(entry["shard"], "fbank")[start : start + rows * mel].reshape(rows, mel)

    def _map(self, shard: int, kind: str) -> np.ndarray:
        """Copy-on-write maps, never written: writable, so torch.from_numpy takes them without a warning.
        Plain ndarray views: slicing a np.memmap runs Python code (__array_finalize__) under the GIL."""
        key = (shard, kind)
        if key not in self._maps:
            dtype = np.uint8 if kind == "frames" else np.float16
            path = self.base.cache_dir / f"shard_{shard:05d}.{kind}"
            self._maps[key] = np.memmap(path, dtype=dtype, mode="c").view(np.ndarray)
        return self._maps[key]

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pool_pid != os.getpid():  # a forked child needs its own threads
            self._pool = ThreadPoolExecutor(self.threads, "cached-batches", initializer=_one_intraop_thread)
            self._pool_pid = os.getpid()
        return self._pool
