"""Where a training/eval window sits in a clip, and how its pixels and log-mel become model inputs.

Shared by the raw and the cached dataset so both yield the same distribution of samples.

Temporal choice: the video window starts at a multiple of `frame_stride` within the clip (so the cache can
store every stride-th frame and still offer every window); audio starts at the same *relative* offset u in
[0, 1] of its own slack (Scenic's rule), so with a 10 s audio window and a 2.56 s video window the video
always lies inside the audio window. Stride counts frames of the clip's even time grid (`decode.ClipPlan`:
the file's own frames at a constant frame rate): 16 frames at stride 4 span 64 of them, whatever the file's
fps. Train draws the window at random, eval takes the middle one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .geometry import AudioStats, ClipGeometry


@dataclass(frozen=True)
class Window:
    first: int  # position of the first sampled frame among the clip's frames
    audio_frame: int  # first log-mel frame (10 ms units) from the clip start


def choose_window(
    n_frames: int, duration: float, geometry: ClipGeometry, train: bool, audio_seconds: float | None = None
) -> Window:
    """Pick a window for a clip of `n_frames` frames lasting `duration` seconds, whose audio track lasts
    `audio_seconds` (None: as long as the video). The audio window is placed within the audio track: placed by
    the video's duration, a track shorter than the video gave windows of pure zero padding."""
    stride = geometry.frame_stride
    positions = max(n_frames - geometry.video_span, 0) // stride + 1
    if positions > 1:
        w = int(torch.randint(positions, ())) if train else (positions - 1) // 2
        u = w / (positions - 1)
    else:
        w, u = 0, float(torch.rand(())) if train else 0.5
    audio = duration if audio_seconds is None else min(duration, audio_seconds)
    audio_slack = max(round(audio * 100) - geometry.audio_frames, 0)
    return Window(first=w * stride, audio_frame=round(u * audio_slack))


def frame_positions(window: Window, n_frames: int, geometry: ClipGeometry) -> np.ndarray:
    """Clip-frame positions of the window; past the clip's end the last stride-aligned frame repeats."""
    stride = geometry.frame_stride
    positions = window.first + stride * np.arange(geometry.num_frames)
    return np.minimum(positions, max(n_frames - 1, 0) // stride * stride)


def video_tensor(frames: np.ndarray, geometry: ClipGeometry, train: bool) -> torch.Tensor:
    """uint8 [T, H, W, 3] (short side resized) -> uint8 [3, T, S, S]; random crop+flip in train.

    Pixels stay uint8 until they reach the model's device (the video tokeniser maps them to [-1, 1]): a
    quarter of the bytes through worker IPC, collation, pinning and the host-to-device copy."""
    size = geometry.img_size
    height, width = frames.shape[1:3]
    if train:
        top = int(torch.randint(height - size + 1, ()))
        left = int(torch.randint(width - size + 1, ()))
    else:
        top, left = (height - size) // 2, (width - size) // 2
    video = torch.from_numpy(np.ascontiguousarray(frames[:, top : top + size, left : left + size]))
    if train and bool(torch.rand(()) < 0.5):
        video = video.flip(2)
    return video.permute(3, 0, 1, 2)


def audio_tensor(fbank: torch.Tensor, stats: AudioStats) -> torch.Tensor:
    """Normalise a [A, mel] log-mel with dataset stats."""
    return (fbank.float() - stats.mean) / stats.std


def fit_frames(fbank: torch.Tensor, frames: int) -> torch.Tensor:
    """Crop or zero-pad (before normalisation, as AST does) to exactly `frames` rows."""
    if fbank.shape[0] >= frames:
        return fbank[:frames]
    return torch.nn.functional.pad(fbank, (0, 0, 0, frames - fbank.shape[0]))
