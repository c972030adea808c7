"""Compressed cache: the decoded cache's contents (every `frame_stride`-th frame of the clip's time grid
at the resize short side, the float16 log-mel of the whole clip) with frames compressed by a `codecs`
codec, in few large files suited to object storage.

A shard is `shard_NNNNN.bin` (per clip: its log-mel bytes at a 64-byte boundary, then one blob per stored
frame) and
`shard_NNNNN.json` (per clip: the decoded cache's entry plus `blobs`, the stored frames' byte offsets within
the clip's frame bytes, one more than frames). A window of stored frames is one contiguous byte range. Writing
reuses `cache.write_cache`: resumable, the same verdicts, `broken.csv`; the header binds the codec's settings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .batch_reader import CachedBatches, ClipRead
from .cache import (
    CachedAVDataset,
    decode_entry,
    finish_shard,
    geometry_layout,
    read_entries,
    read_header,
    write_cache,
)
from .codecs import Codec, codec_from_settings
from .geometry import AUDIOSET_STATS, AudioStats, ClipGeometry
from .indexes import Clip
from .sink import ShardSink
from .store import DEFAULT_LOCAL_BYTES, ShardStore

ALIGN = 64  # byte boundary of each clip's log-mel, so it maps as aligned float16


@dataclass(frozen=True)
class ShardWriter:
    """`cache.write_cache`'s shard writer for `codec` (picklable: process pools run it)."""

    codec: Codec

    def __call__(
        self,
        sink: ShardSink,
        shard: int,
        clips: Sequence[tuple[int, Clip]],
        geometry: ClipGeometry,
        min_clip_s: float,
    ) -> int:
        entries: list[dict[str, Any]] = []
        name = f"shard_{shard:05d}.bin"
        tmp = sink.scratch(name)
        with tmp.open("wb") as f:
            for i, clip in clips:
                entry, fbank, frames = decode_entry(i, clip, geometry, min_clip_s)
                if fbank is not None and frames is not None:
                    blobs = self.codec.encode(frames)
                    f.write(bytes(-f.tell() % ALIGN))
                    entry["fbank"] = [f.tell(), *fbank.shape]
                    f.write(fbank.tobytes())
                    entry["frames"] = [f.tell(), *frames.shape]
                    entry["blobs"] = np.cumsum([0, *map(len, blobs)]).tolist()
                    f.write(b"".join(blobs))
                entries.append(entry)
        sink.put(tmp, name)
        return finish_shard(sink, shard, entries)


def write_shards(clips: Sequence[Clip], out: str | Path, geometry: ClipGeometry, num_classes: int,
                 codec: Codec, multi_label: bool = False, **options: Any) -> str | Path:
    """`cache.write_cache` (its `options`: workers, shard_size, progress, min_clip_s, cluster) with frames
    compressed by `codec`; resumable, and a folder or URI holds one codec's cache."""
    return write_cache(clips, out, geometry, num_classes, multi_label, writer=ShardWriter(codec),
                       settings=codec.settings, **options)


class ShardedAVDataset(CachedAVDataset):
    """CachedAVDataset's items from a `write_shards` cache at a local path or a URI (`store.ShardStore`;
    remote shards are copied into `local_dir`, at most `max_local_bytes`)."""

    def __init__(
        self,
        location: str | Path,
        geometry: ClipGeometry,
        train: bool,
        audio_stats: AudioStats = AUDIOSET_STATS,
        local_dir: str | Path | None = None,
        max_local_bytes: int = DEFAULT_LOCAL_BYTES,
    ) -> None:
        self.store = ShardStore(location, local_dir, max_local_bytes)
        self.cache_dir, self.geometry, self.train, self.audio_stats = location, geometry, train, audio_stats
        text = self.store.read_bytes("cache.json")
        settings = {k: v for k, v in json.loads(text)["layout"].items() if k not in geometry_layout(geometry)}
        if "codec" not in settings:
            raise ValueError(f"cache {location} holds uncompressed frames; read it with CachedAVDataset")
        self.header = read_header(text, location, {**geometry_layout(geometry), **settings})
        self.codec = codec_from_settings(settings)
        header = self.header
        self.entries = read_entries(location, header.num_clips, header.shard_size, self.store.read_bytes)
        self._maps: dict[tuple[int, str], np.ndarray] = {}

    def _bin(self, shard: int) -> np.ndarray:
        """The shard's bytes, mapped copy-on-write (writable views, never written: torch takes them without a
        warning) as a plain ndarray (slicing a np.memmap runs Python code under the GIL)."""
        if (shard, "bin") not in self._maps:
            path = self.store.local(f"shard_{shard:05d}.bin")
            self._maps[shard, "bin"] = np.memmap(path, dtype=np.uint8, mode="c").view(np.ndarray)
        return self._maps[shard, "bin"]

    def frame_range(self, entry: dict[str, Any], lo: int, hi: int) -> tuple[np.ndarray, int]:
        """(uint8 [n, H, W, 3] of stored frames first..hi, first): `first` is the codec's keyframe of `lo`."""
        first, (offset, _, height, width, _), blobs = self.codec.keyframe(lo), entry["frames"], entry["blobs"]
        data = self._bin(entry["shard"])[offset:]
        pieces = [data[a:b] for a, b in zip(blobs[first : hi + 1], blobs[first + 1 : hi + 2], strict=True)]
        return self.codec.decode(pieces, height, width), first

    def stored_frames(self, entry: dict[str, Any], positions: np.ndarray) -> np.ndarray:
        frames, first = self.frame_range(entry, int(positions.min()), int(positions.max()))
        return frames[positions - first]

    def fbank(self, entry: dict[str, Any]) -> np.ndarray:
        offset, rows, mel = entry["fbank"]
        data = self._bin(entry["shard"])[offset : offset + rows * mel * 2]
        return data.view(np.float16).reshape(rows, mel)


class ShardBatches(CachedBatches):
    """`CachedBatches` over a ShardedAVDataset: the same draws, each reader thread decoding its clips."""

    source = ShardedAVDataset

    def _frames(self, read: ClipRead) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = int(read.positions.min()), int(read.positions.max())
        frames, first = self.base.frame_range(read.entry, lo, hi)
        return frames, read.positions - first

    def _fbank(self, entry: dict[str, Any]) -> np.ndarray:
        return self.base.fbank(entry)
