"""Media I/O with one decoder (PyAV) for both streams, on one clock and one geometry.

Clock: every time here is the container's presentation time, read from the streams' own timestamps (never
the header frame rate), so a track that starts late stays exactly that late against the other one.
Geometry: frames come out upright (display matrix applied) at their display aspect (sample aspect ratio
applied), resized with swscale's bilinear filter (the pixels decord gave for an upright, square-pixel file).
Verdicts: `plan_clip` alone decides whether a clip is usable, for the preflight, the decoded cache and raw
training alike; every failure leaves here as a `BrokenClip` with a reason, never a codec-specific exception.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torchaudio

from .broken import BrokenClip
from .geometry import MIN_CLIP_SECONDS, WINDOW_SECONDS, ClipGeometry

SEEK_MARGIN = 2.0  # seconds decoded before a seek target, so codec warm-up never lands in the window
MIN_AUDIO_COVER = 0.5  # a clip whose real audio covers less of its video than this has no usable audio
MP4_TOP_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")


@dataclass(frozen=True)
class MediaInfo:
    """A video stream's display geometry."""

    width: int  # display width: sample aspect ratio applied, then turned upright
    height: int
    rotation: int  # degrees the coded frames are turned counter-clockwise to stand upright: 0, 90, 180, 270


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


def display_size(width: int, height: int, sar: Fraction | None, rotation: int) -> tuple[int, int]:
    """(width, height) as shown: coded width stretched by the sample aspect ratio, then turned upright."""
    if sar is not None and sar > 0:
        width = max(1, round(width * sar))
    return (height, width) if rotation in (90, 270) else (width, height)


def _open(path: str | Path) -> av.container.InputContainer:
    container = av.open(str(path))
    for stream in container.streams.video[:1] + container.streams.audio[:1]:
        stream.codec_context.thread_count = 1  # one worker = one core
    return container


def probe(path: str | Path) -> MediaInfo:
    """Open the container, check that both streams exist and that each decodes its first frame; the video's
    display geometry. Raises BrokenClip otherwise."""
    path = check_file(path)
    try:
        with _open(path) as container:
            if not container.streams.video:
                raise BrokenClip(str(path), "no_video")
            if not container.streams.audio:
                raise BrokenClip(str(path), "no_audio")
            video = container.streams.video[0]
            if not video.codec_context.width or not video.codec_context.height:
                raise BrokenClip(str(path), "undecodable", "video stream has no frame size")
            first = next(container.decode(video), None)
            if first is None:
                raise BrokenClip(str(path), "undecodable", "no decodable video frame")
            container.seek(0)
            if next(container.decode(audio=0), None) is None:
                raise BrokenClip(str(path), "undecodable", "no decodable audio frame")
            rotation = round(first.rotation / 90) % 4 * 90
            sar = video.sample_aspect_ratio
            width, height = display_size(first.width, first.height, sar and Fraction(sar), rotation)
            return MediaInfo(width, height, rotation)
    except av.FFmpegError as exc:
        raise BrokenClip(str(path), "undecodable", str(exc)) from exc


def resized(info: MediaInfo, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side at `short_side`, display aspect ratio kept."""
    scale = short_side / min(info.width, info.height)
    return max(short_side, round(info.width * scale)), max(short_side, round(info.height * scale))


@dataclass(frozen=True)
class ClipPlan:
    """A usable clip on an even time grid at its frames' average rate (from their timestamps): grid point
    `j` is `origin + j * step` seconds on the container's clock and shows the frame with timestamp `pts[j]`
    (the nearest one, so a variable rate or a gap still gives a window even in time). Audio is read from
    `origin` on, so audio and video share one origin."""

    path: str
    info: MediaInfo
    pts: np.ndarray  # int64 video timestamps, one per grid point
    time_base: Fraction
    step: float  # seconds between grid points
    origin: float  # container time of the first grid point
    audio_seconds: float  # real audio samples (no padding) within the grid's span, in seconds

    @property
    def seconds(self) -> float:
        """Span of video the grid covers."""
        return len(self.pts) * self.step


def _timestamps(
    container: av.container.InputContainer, start: float, end: float | None
) -> tuple[list[int], list[tuple[float, float]]]:
    """Presented video pts and audio packet spans (s) from `start` (less a margin) to past `end`, demuxed,
    not decoded; edit-list hidden packets left out."""
    video, audio = container.streams.video[0], container.streams.audio[0]
    if start > SEEK_MARGIN:
        container.seek(int((start - SEEK_MARGIN) * av.time_base))
    frames: list[int] = []
    spans: list[tuple[float, float]] = []
    for packet in container.demux(video, audio):
        stamp = packet.pts if packet.pts is not None else packet.dts
        if stamp is None or packet.is_discard:
            continue
        if packet.stream is video:
            frames.append(stamp)
        else:
            begin = float(stamp * packet.time_base)
            spans.append((begin, begin + float((packet.duration or 0) * packet.time_base)))
        if end is not None and float(stamp * packet.time_base) > end + SEEK_MARGIN:
            break
    return frames, spans


def _track_end(stream: av.stream.Stream) -> float:
    if stream.duration is None or stream.time_base is None:
        return math.inf
    return float(((stream.start_time or 0) + stream.duration) * stream.time_base)


def _covered(spans: list[tuple[float, float]], begin: float, end: float) -> float:
    """Seconds of [begin, end) that the spans cover (overlaps counted once)."""
    total, reached = 0.0, begin
    for lo, hi in sorted(spans):
        lo, hi = max(lo, reached), min(hi, end)
        if hi > lo:
            total, reached = total + hi - lo, hi
    return total


def _grid(times: np.ndarray, step: float, start: float, end: float | None) -> np.ndarray:
    """Indices (into `times`, ascending) of the frames on show at each point of the even grid over
    [start, end)."""
    keep = times >= start - step / 2
    if end is not None:
        keep &= times < end - step / 2
    inside = np.flatnonzero(keep)
    if len(inside) < 2:
        return inside
    shown = times[inside]
    grid = shown[0] + step * np.arange(round(float(shown[-1] - shown[0]) / step) + 1)
    after = np.clip(np.searchsorted(shown, grid), 1, len(shown) - 1)  # the nearest is this frame or the last
    nearest = np.where(grid - shown[after - 1] <= shown[after] - grid, after - 1, after)
    return inside[nearest]


def plan_clip(
    path: str | Path, start: float = 0.0, end: float | None = None, min_seconds: float = MIN_CLIP_SECONDS
) -> ClipPlan:
    """The verdict and time grid of the clip [start, end) s of `path` (end None: to the end of the file).

    Raises BrokenClip: as `probe`, or "truncated" (no frame in the span), "too_short" (under `min_seconds`
    of video) or "short_audio" (real audio covers under MIN_AUDIO_COVER of the video, or under one fbank
    window).
    """
    info = probe(path)
    try:
        with _open(path) as container:
            video, audio = container.streams.video[0], container.streams.audio[0]
            stamps, spans = _timestamps(container, start, end)
            time_base, audio_end = video.time_base, _track_end(audio)
            rate = video.average_rate or video.guessed_rate or 25
    except av.FFmpegError as exc:
        raise BrokenClip(str(path), "undecodable", str(exc)) from exc
    pts = np.unique(np.asarray(stamps, dtype=np.int64))
    times = pts * float(time_base)
    step = float(times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 1 / float(rate)
    chosen = _grid(times, step, start, end)
    if len(chosen) == 0:
        span = f"[{start}, {'end' if end is None else end})"
        raise BrokenClip(str(path), "truncated", f"no video frames in {span} s")
    origin = float(times[chosen[0]])
    seconds = len(chosen) * step
    if seconds < min_seconds - 1e-6:
        detail = f"{seconds:.2f} s of video, under the minimum {min_seconds} s"
        raise BrokenClip(str(path), "too_short", detail)
    spans = [(lo, min(hi, audio_end)) for lo, hi in spans]
    audio_seconds = _covered(spans, origin, origin + seconds)
    if audio_seconds < MIN_AUDIO_COVER * seconds or audio_seconds < WINDOW_SECONDS:
        detail = f"audio covers {audio_seconds:.2f} s of the clip's {seconds:.2f} s"
        raise BrokenClip(str(path), "short_audio", detail)
    return ClipPlan(str(path), info, pts[chosen], Fraction(time_base), step, origin, audio_seconds)


TURNS = {
    0: [],
    90: [("transpose", "cclock")],
    180: [("hflip", ""), ("vflip", "")],
    270: [("transpose", "clock")],
}


def _picture_graph(
    frame: av.VideoFrame, time_base: Fraction, info: MediaInfo, short_side: int
) -> av.filter.Graph:
    """buffer -> scale (bilinear, to the upright size in coded orientation) -> rgb24 -> upright -> sink."""
    width, height = resized(info, short_side)
    if info.rotation in (90, 270):
        width, height = height, width
    graph = av.filter.Graph()
    graph.threads = 1  # no thread pool of its own either (see the scale filter's threads)
    nodes = [
        graph.add_buffer(width=frame.width, height=frame.height, format=frame.format, time_base=time_base)
    ]
    for name, args in [
        # One swscale thread: a graph holding slice threads, still garbage when a DataLoader forks its
        # workers, hangs the worker whose collector frees it (the threads are not in the child).
        ("scale", f"{width}:{height}:flags=bilinear:threads=1"),
        ("format", "rgb24"),
        *TURNS[info.rotation],
    ]:
        nodes.append(graph.add(name, args))
    nodes.append(graph.add("buffersink"))
    graph.link_nodes(*nodes).configure()
    return graph


def read_frames(plan: ClipPlan, positions: np.ndarray, short_side: int) -> np.ndarray:
    """uint8 [T, H, W, 3] of the given grid positions: upright, display aspect, short side at `short_side`."""
    wanted = plan.pts[np.asarray(positions, dtype=np.int64)]
    need, last = set(wanted.tolist()), int(wanted.max())
    pictures: dict[int, np.ndarray] = {}
    graph = None
    try:
        with _open(plan.path) as container:
            stream = container.streams.video[0]
            first = float(wanted.min() * plan.time_base)
            if first > SEEK_MARGIN:
                container.seek(int((first - SEEK_MARGIN) / plan.time_base), stream=stream)
            for frame in container.decode(stream):
                if frame.pts in need and frame.pts not in pictures:
                    graph = graph or _picture_graph(frame, plan.time_base, plan.info, short_side)
                    graph.push(frame)
                    pictures[frame.pts] = graph.pull().to_ndarray()
                if frame.pts is not None and frame.pts >= last and len(pictures) == len(need):
                    break
    except av.FFmpegError as exc:
        raise BrokenClip(plan.path, "undecodable", str(exc)) from exc
    missing = need - pictures.keys()
    if missing:
        detail = (
            f"{len(missing)} frame(s) did not decode, first at {float(min(missing) * plan.time_base):.2f} s"
        )
        raise BrokenClip(plan.path, "undecodable", detail)
    return np.stack([pictures[p] for p in wanted.tolist()])


def read_audio(path: str | Path, start: float, duration: float | None, sample_rate: int) -> np.ndarray:
    """The file's own audio track from `start` for `duration` s (None: to its end), mono float32.

    Returns fewer samples when the track ends early; zeros stand in for time before the track starts.
    """
    end = math.inf if duration is None else start + duration
    chunks: list[np.ndarray] = []
    first_time: float | None = None
    try:
        with _open(path) as container:
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
