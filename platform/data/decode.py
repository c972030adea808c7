"""Media I/O: probe a file, read its frames with decord and its own audio track with PyAV, make the log-mel.

Every failure leaves here as a `BrokenClip` with a reason, so callers never see codec-specific exceptions.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import av
import decord
import numpy as np
import torch
import torchaudio

from .broken import BrokenClip
from .geometry import WINDOW_SECONDS, ClipGeometry

decord.logging.set_level(decord.logging.QUIET)  # broken files are reported once, as BrokenClip, not by libav

SEEK_MARGIN = 2.0  # seconds decoded before a seek target, so codec warm-up never lands in the window
MIN_AUDIO_COVER = 0.5  # a clip whose audio track covers less of its video than this has no usable audio
MP4_TOP_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")


@dataclass(frozen=True)
class MediaInfo:
    width: int
    height: int


def _mp4_truncated(path: Path) -> bool:
    """True when an MP4/MOV top-level box runs past the end of the file (the file was cut short)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8 or head[4:8] not in MP4_TOP_BOXES:
            return False  # not an ISO-BMFF file; leave it to the demuxer
        offset = 0
        while offset < size:
            f.seek(offset)
            header = f.read(16)
            if len(header) < 8:
                return True
            box_size = struct.unpack(">I", header[:4])[0]
            if box_size == 1:
                if len(header) < 16:
                    return True
                box_size = struct.unpack(">Q", header[8:16])[0]
            elif box_size == 0:
                return False  # box extends to end of file by definition
            if box_size < 8:
                return False  # not a box structure we understand; the demuxer decides
            offset += box_size
        return offset > size


def check_file(path: str | Path) -> Path:
    """Cheap checks that need no demuxer: exists, non-empty, not cut short."""
    path = Path(path)
    if not path.is_file():
        raise BrokenClip(str(path), "missing")
    if path.stat().st_size == 0:
        raise BrokenClip(str(path), "empty")
    if _mp4_truncated(path):
        raise BrokenClip(str(path), "truncated", "an MP4 box runs past the end of the file")
    return path


def probe(path: str | Path) -> MediaInfo:
    """Open the container and check that both streams exist; raises BrokenClip otherwise."""
    path = check_file(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise BrokenClip(str(path), "no_video")
            if not container.streams.audio:
                raise BrokenClip(str(path), "no_audio")
            ctx = container.streams.video[0].codec_context
            if not ctx.width or not ctx.height:
                raise BrokenClip(str(path), "undecodable", "video stream has no frame size")
            return MediaInfo(ctx.width, ctx.height)
    except av.FFmpegError as exc:
        raise BrokenClip(str(path), "undecodable", str(exc)) from exc


def decode_first_frames(path: str | Path) -> tuple[float | None, float | None]:
    """Decode the first video and audio frame (a cheap health check); returns where the video and the audio
    track end, in seconds, as the container states them (None where it does not)."""
    try:
        with av.open(str(path)) as container:
            for kind in ("video", "audio"):
                if next(container.decode(**{kind: 0}), None) is None:
                    raise BrokenClip(str(path), "undecodable", f"no decodable {kind} frame")
                container.seek(0)
            return _track_end(container.streams.video[0]), _track_end(container.streams.audio[0])
    except av.FFmpegError as exc:
        raise BrokenClip(str(path), "undecodable", str(exc)) from exc


def _track_end(stream: av.stream.Stream) -> float | None:
    if stream.duration is None or stream.time_base is None:
        return None
    return float((stream.start_time or 0) * stream.time_base) + float(stream.duration * stream.time_base)


def check_audio_cover(path: str | Path, audio_seconds: float, video_seconds: float) -> None:
    """Raise BrokenClip("short_audio") when the audio track covers under MIN_AUDIO_COVER of the clip's video:
    its samples would be mostly (or only) zero padding, and a window there would pair no sound with the
    pictures."""
    if audio_seconds < MIN_AUDIO_COVER * video_seconds or audio_seconds < WINDOW_SECONDS:
        detail = f"audio covers {audio_seconds:.2f} s of the clip's {video_seconds:.2f} s"
        raise BrokenClip(str(path), "short_audio", detail)


def resized(info: MediaInfo, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side at `short_side`, aspect ratio kept."""
    scale = short_side / min(info.width, info.height)
    return max(short_side, round(info.width * scale)), max(short_side, round(info.height * scale))


def video_reader(path: str | Path, info: MediaInfo, short_side: int) -> decord.VideoReader:
    """A single-threaded decord reader that resizes while decoding (one worker = one core)."""
    width, height = resized(info, short_side)
    try:
        return decord.VideoReader(str(path), width=width, height=height, num_threads=1)
    except decord.DECORDError as exc:
        raise BrokenClip(str(path), "undecodable", str(exc).splitlines()[0]) from exc


@dataclass(frozen=True)
class FrameGrid:
    """A clip's frames on an even time grid at the stream's average frame rate: `indices[j]` is the source
    frame on show `j * step` seconds after the clip's first frame. At a constant frame rate the grid is the
    frames themselves; with a variable one (or a gap) it is what a constant-rate copy would hold, so a window
    of frames is even in time."""

    indices: np.ndarray
    step: float  # seconds between grid points

    @property
    def seconds(self) -> float:
        """Span of video the grid covers."""
        return len(self.indices) * self.step


def clip_frames(reader: decord.VideoReader, start: float, end: float | None) -> FrameGrid:
    """The frames presented in [start, end), by timestamp, on an even time grid (see FrameGrid).

    Timestamps, not indices, because real files carry edit lists (frames before t=0 that must not be
    shown) and variable frame rates; EPIC segments are cut from long videos by time too.
    """
    times = reader.get_frame_timestamp(np.arange(len(reader)))[:, 0]
    step = 1 / max(reader.get_avg_fps(), 1e-6)
    keep = times >= start - step / 2
    if end is not None:
        keep &= times < end - step / 2
    inside = np.flatnonzero(keep)
    if len(inside) < 2:
        return FrameGrid(inside, step)
    inside = inside[np.argsort(times[inside], kind="stable")]
    shown = times[inside]
    grid = shown[0] + step * np.arange(round(float(shown[-1] - shown[0]) / step) + 1)
    after = np.clip(np.searchsorted(shown, grid), 1, len(shown) - 1)  # the nearest is this frame or the last
    nearest = np.where(grid - shown[after - 1] <= shown[after] - grid, after - 1, after)
    return FrameGrid(inside[nearest], step)


def read_frames(reader: decord.VideoReader, indices: np.ndarray, path: str | Path) -> np.ndarray:
    """uint8 [T, H, W, 3] for the given source indices."""
    try:
        return reader.get_batch(list(map(int, indices))).asnumpy()
    except (decord.DECORDError, RuntimeError) as exc:
        raise BrokenClip(str(path), "undecodable", str(exc).splitlines()[0]) from exc


def read_audio(path: str | Path, start: float, duration: float | None, sample_rate: int) -> np.ndarray:
    """The file's own audio track from `start` for `duration` s (None: to its end), mono float32.

    Returns fewer samples when the track ends early; zeros stand in for time before the track starts.
    """
    end = math.inf if duration is None else start + duration
    chunks: list[np.ndarray] = []
    first_time: float | None = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise BrokenClip(str(path), "no_audio")
            stream = container.streams.audio[0]
            if start > SEEK_MARGIN:
                container.seek(int((start - SEEK_MARGIN) / stream.time_base), stream=stream)
            resampler = av.AudioResampler(format="fltp", rate=sample_rate)
            for frame in container.decode(stream):
                if first_time is None:
                    first_time = float(frame.time or 0.0)
                chunks.extend(out.to_ndarray() for out in resampler.resample(frame))
                if frame.time is not None and frame.time > end:
                    break
            chunks.extend(out.to_ndarray() for out in resampler.resample(None))
    except av.FFmpegError as exc:
        raise BrokenClip(str(path), "undecodable", str(exc)) from exc
    if not chunks:
        raise BrokenClip(str(path), "undecodable", "audio track has no decodable frames")
    wave = np.concatenate(chunks, axis=1).mean(axis=0).astype(np.float32)
    offset = round((start - (first_time or 0.0)) * sample_rate)
    if offset < 0:
        wave = np.concatenate([np.zeros(-offset, np.float32), wave])
        offset = 0
    return wave[offset:] if duration is None else wave[offset : offset + round(duration * sample_rate)]


def log_mel(wave: np.ndarray | torch.Tensor, geometry: ClipGeometry) -> torch.Tensor:
    """Kaldi log-mel [frames, mel] exactly as AST / CAV-MAE compute it; empty when under one window."""
    wave = torch.as_tensor(wave, dtype=torch.float32).reshape(1, -1)
    if wave.shape[1] < round(geometry.sample_rate * 0.025):
        return torch.zeros(0, geometry.num_mel_bins)
    return torchaudio.compliance.kaldi.fbank(
        wave,
        htk_compat=True,
        sample_frequency=geometry.sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=geometry.num_mel_bins,
        dither=0.0,
        frame_shift=10,
    )
