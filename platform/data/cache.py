"""Decoded cache: decode each clip once into memory-mapped shards, then train from them with cheap crops.

Per clip the cache keeps every `frame_stride`-th frame of the clip's even time grid (`decode.ClipPlan`) as
uint8 at the resize short side (so any window of any length can still be drawn) and the float16 log-mel of the
whole clip. Shards are written to temporary names and renamed (`sink.ShardSink`), their JSON last, so an
interrupted run resumes by skipping finished shards; their entries name the node that decoded them.
`broken.csv` lists the clips it skipped, each with its index line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from .broken import BrokenClip, BrokenRecord, write_broken_csv
from .dataset import broken_item, label_tensor
from .distribute import node_id, run_jobs
from .geometry import AUDIOSET_STATS, MIN_CLIP_SECONDS, AudioStats, ClipGeometry
from .indexes import Clip
from .sink import ShardSink
from .window import Window, audio_tensor, choose_window, fit_frames, frame_positions, video_tensor

VERSION = 3  # 3: one clock and one geometry (PyAV), real-audio cover, minimum clip length in the header
BROKEN_REPORT = "broken.csv"  # in the cache directory: every clip caching skipped, with its index line


def geometry_layout(geometry: ClipGeometry) -> dict[str, int]:
    """The geometry fields a cache is bound to; window lengths stay free."""
    return {
        "short_side": geometry.short_side,
        "frame_stride": geometry.frame_stride,
        "sample_rate": geometry.sample_rate,
        "num_mel_bins": geometry.num_mel_bins,
    }


def decode_whole(
    clip: Clip, geometry: ClipGeometry, min_clip_s: float = MIN_CLIP_SECONDS
) -> tuple[np.ndarray, np.ndarray, int, float, float]:
    """(float16 log-mel [R, mel], uint8 stride-frames [N, H, W, 3], clip frame count, frame rate of its time
    grid, seconds of audio) of a whole clip; broken by the verdict of `decode.plan_clip`."""
    from . import decode  # here, not at the top: reading the cache needs no decoder libraries

    plan = decode.plan_clip(clip.path, clip.start, clip.end, min_clip_s)
    seconds = None if clip.end is None else clip.end - plan.origin
    wave = decode.read_audio(clip.path, plan.origin, seconds, geometry.sample_rate)
    frames = decode.read_frames(plan, np.arange(0, len(plan.pts), geometry.frame_stride), geometry.short_side)
    fbank = decode.log_mel(wave, geometry).numpy().astype(np.float16)
    return fbank, frames, len(plan.pts), 1 / plan.step, len(wave) / geometry.sample_rate


def decode_entry(
    i: int, clip: Clip, geometry: ClipGeometry, min_clip_s: float
) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]:
    """(shard entry, float16 log-mel, uint8 stride-frames) of clip number `i`; the arrays are None and the
    entry says why when the clip is broken."""
    entry: dict[str, Any] = {"i": i, "path": str(clip.path), "source": clip.source}
    try:
        fbank, frames, n_frames, fps, audio_seconds = decode_whole(clip, geometry, min_clip_s)
    except BrokenClip as err:
        return {**entry, "broken": [err.path, err.reason], "detail": err.detail}, None, None
    return {**entry, "n_frames": n_frames, "fps": fps, "audio_seconds": audio_seconds}, fbank, frames


def finish_shard(sink: ShardSink, shard: int, entries: list[dict[str, Any]]) -> int:
    """Write a shard's JSON (last: its presence marks the shard done), each entry with the node that decoded
    it; returns how many of its clips were broken."""
    node = node_id()
    sink.write_bytes(f"shard_{shard:05d}.json", json.dumps([{**e, "node": node} for e in entries]).encode())
    return sum("broken" in e for e in entries)


def _write_shard(
    sink: ShardSink, shard: int, clips: Sequence[tuple[int, Clip]], geometry: ClipGeometry, min_clip_s: float
) -> int:
    """Decode and write one shard; returns how many of its clips were broken."""
    entries: list[dict[str, Any]] = []
    stem = f"shard_{shard:05d}"
    # scratch names are per process: concurrent writers (two trials) never share a temporary file
    frame_tmp, fbank_tmp = sink.scratch(f"{stem}.frames"), sink.scratch(f"{stem}.fbank")
    with frame_tmp.open("wb") as frames_f, fbank_tmp.open("wb") as fbank_f:
        for i, clip in clips:
            entry, fbank, frames = decode_entry(i, clip, geometry, min_clip_s)
            if fbank is not None and frames is not None:
                entry.update(frames=[frames_f.tell(), *frames.shape],
                             fbank=[fbank_f.tell() // fbank.itemsize, *fbank.shape])
                frames_f.write(frames.tobytes())
                fbank_f.write(fbank.tobytes())
            entries.append(entry)
    sink.put(frame_tmp, f"{stem}.frames")
    sink.put(fbank_tmp, f"{stem}.fbank")
    return finish_shard(sink, shard, entries)


ShardWriter = Callable[[ShardSink, int, Sequence[tuple[int, Clip]], ClipGeometry, float], int]


@dataclass(frozen=True)
class CacheHeader:
    version: int
    layout: dict[str, int]
    num_clips: int
    shard_size: int
    num_classes: int
    multi_label: bool
    labels: list[Any]
    min_clip_s: float


def write_cache(
    clips: Sequence[Clip],
    out: str | Path,
    geometry: ClipGeometry,
    num_classes: int,
    multi_label: bool = False,
    workers: int = 1,
    shard_size: int = 32,
    progress: bool = True,
    min_clip_s: float = MIN_CLIP_SECONDS,
    writer: ShardWriter = _write_shard,
    settings: dict[str, Any] | None = None,
    cluster: bool = False,
) -> str | Path:
    """Decode `clips` into `out`, a folder or (compressed caches) a URI (resumable: finished shards are kept);
    clips shorter than `min_clip_s` are broken ("too_short"). `writer` writes one shard (picklable for
    `workers` > 1 or `cluster`); `settings` (its codec's) join the layout the cache is bound to. `cluster`:
    shards are Ray tasks on the connected cluster (`distribute.run_jobs`). Returns `out`."""
    sink = ShardSink(out)
    header = CacheHeader(
        VERSION,
        {**geometry_layout(geometry), **(settings or {})},
        len(clips),
        shard_size,
        num_classes,
        multi_label,
        [list(c.label) if multi_label else c.label for c in clips],
        min_clip_s,
    )
    _claim(sink, header)
    done = sink.names()
    todo = [s for s in range(0, len(clips), shard_size) if f"shard_{s // shard_size:05d}.json" not in done]
    bar = tqdm(
        total=len(clips),
        initial=len(clips) - sum(min(shard_size, len(clips) - s) for s in todo),
        desc="caching",
        unit="clip",
        disable=not (progress and todo),  # a finished cache stays silent
    )
    numbered = list(enumerate(clips))
    jobs = [(sink, s // shard_size, numbered[s : s + shard_size], geometry, min_clip_s) for s in todo]
    with bar:
        for count in run_jobs(writer, jobs, workers, cluster):
            bar.update(count)
    report = sink.scratch(BROKEN_REPORT)
    write_broken_csv(report, _broken(read_entries(out, len(clips), shard_size, sink.read_bytes)))
    sink.put(report, BROKEN_REPORT)
    return out if sink.remote else Path(out)


def _claim(sink: ShardSink, header: CacheHeader) -> None:
    """Write the header of a new cache; refuse a folder that holds another format's or other clips' cache."""
    try:
        found = json.loads(sink.read_bytes("cache.json"))
    except FileNotFoundError:
        sink.write_bytes("cache.json", json.dumps(asdict(header)).encode())
        return
    if found.get("version") != VERSION:
        raise ValueError(
            f"{sink.location} holds a cache of format {found.get('version')}, this avmae writes {VERSION}; "
            "delete it or use a new directory"
        )
    if found != json.loads(json.dumps(asdict(header))):
        raise ValueError(f"{sink.location} holds a cache made from other clips or geometry; "
                         "use a new directory")


def read_entries(
    cache_dir: Path | str, num_clips: int, shard_size: int, read: Callable[[str], bytes] | None = None
) -> list[dict[str, Any]]:
    """Every clip's entry, from the shard JSONs (read by `read(name)`, default from the folder), each with
    its shard number."""
    read = read or (lambda name: (Path(cache_dir) / name).read_bytes())
    entries: list[dict[str, Any]] = [{} for _ in range(num_clips)]
    for s in range(0, num_clips, shard_size):
        name = f"shard_{s // shard_size:05d}.json"
        try:
            shard = json.loads(read(name))
        except FileNotFoundError:
            missing = f"cache {cache_dir} is incomplete ({name} missing); rerun caching"
            raise FileNotFoundError(missing) from None
        for entry in shard:
            entries[entry["i"]] = {**entry, "shard": s // shard_size}
    return entries


def read_header(text: str | bytes, where: str | Path, layout: dict[str, Any]) -> CacheHeader:
    """The header of the cache at `where`; raises ValueError unless it is this format's, made for `layout`."""
    header = CacheHeader(**json.loads(text))
    if header.version != VERSION:
        raise ValueError(f"cache {where} has format {header.version}; this avmae reads {VERSION}: rebuild it")
    if header.layout != layout:
        raise ValueError(f"cache {where} was made for {header.layout}, not {layout}")
    return header


def _broken(entries: Sequence[dict[str, Any]]) -> list[BrokenRecord]:
    return [
        BrokenRecord(*e["broken"], source=e["source"], detail=e["detail"]) for e in entries if "broken" in e
    ]


def cache_window(entry: dict[str, Any], geometry: ClipGeometry, train: bool) -> Window:
    """The window of a cached clip, drawn as the raw dataset draws it (the audio within the clip's track)."""
    return choose_window(
        entry["n_frames"], entry["n_frames"] / entry["fps"], geometry, train, entry["audio_seconds"]
    )


class CachedAVDataset(Dataset):
    """Same items as AVDataset, read from a `write_cache` directory: random crop/flip/window in train."""

    def __init__(
        self,
        cache_dir: str | Path,
        geometry: ClipGeometry,
        train: bool,
        audio_stats: AudioStats = AUDIOSET_STATS,
    ) -> None:
        self.cache_dir, self.geometry, self.train, self.audio_stats = (
            Path(cache_dir),
            geometry,
            train,
            audio_stats,
        )
        text = (self.cache_dir / "cache.json").read_text()
        header = read_header(text, cache_dir, geometry_layout(geometry))
        self.header = header
        self.entries = read_entries(self.cache_dir, header.num_clips, header.shard_size)
        self._maps: dict[tuple[int, str], np.memmap] = {}  # opened lazily, per worker process

    def __len__(self) -> int:
        return self.header.num_clips

    @property
    def broken(self) -> list[BrokenRecord]:
        return _broken(self.entries)

    def _map(self, shard: int, kind: str) -> np.memmap:
        key = (shard, kind)
        if key not in self._maps:
            dtype = np.uint8 if kind == "frames" else np.float16
            self._maps[key] = np.memmap(self.cache_dir / f"shard_{shard:05d}.{kind}", dtype=dtype, mode="r")
        return self._maps[key]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {}}  # memmaps are reopened in each DataLoader worker

    def stored_frames(self, entry: dict[str, Any], positions: np.ndarray) -> np.ndarray:
        """uint8 [len(positions), H, W, 3]: the clip's stored frames at `positions`."""
        offset, stored, height, width, _ = entry["frames"]
        frames = self._map(entry["shard"], "frames")[offset : offset + stored * height * width * 3]
        return frames.reshape(stored, height, width, 3)[positions]

    def fbank(self, entry: dict[str, Any]) -> np.ndarray:
        """float16 [rows, mel]: the clip's whole log-mel."""
        start, rows, mel = entry["fbank"]
        return self._map(entry["shard"], "fbank")[start : start + rows * mel].reshape(rows, mel)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry, g = self.entries[index], self.geometry
        if "broken" in entry:
            return broken_item(index, BrokenClip(*entry["broken"], entry["detail"]), entry["source"])
        window = cache_window(entry, g, self.train)
        picked = self.stored_frames(entry, frame_positions(window, entry["n_frames"], g) // g.frame_stride)
        fbank = self.fbank(entry)
        audio = torch.from_numpy(
            fbank[window.audio_frame : window.audio_frame + g.audio_frames].astype(np.float32)
        )
        return {
            "audio": audio_tensor(fit_frames(audio, g.audio_frames), self.audio_stats),
            "video": video_tensor(picked, g, self.train),
            "label": label_tensor(
                self.header.labels[index], self.header.num_classes, self.header.multi_label
            ),
            "index": index,
        }
