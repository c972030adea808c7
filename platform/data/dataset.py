"""The raw-media Dataset: decode one window per item, or report the clip as broken instead of raising."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .broken import BrokenClip, log_broken_once
from .geometry import AUDIOSET_STATS, HOP_SECONDS, MIN_CLIP_SECONDS, AudioStats, ClipGeometry
from .indexes import Clip
from .window import audio_tensor, choose_window, fit_frames, frame_positions, video_tensor


def label_tensor(label: int | tuple[int, ...], num_classes: int, multi_label: bool) -> torch.Tensor:
    """int64 scalar for multi-class, float multi-hot [num_classes] for multi-label."""
    if not multi_label:
        return torch.tensor(label, dtype=torch.int64)
    hot = torch.zeros(num_classes)
    hot[list(label)] = 1.0
    return hot


def broken_item(index: int, err: BrokenClip, source: str = "") -> dict[str, Any]:
    log_broken_once(err, source)
    return {"index": index, "broken": (err.path, err.reason)}


class AVDataset(Dataset):
    """Decodes clips straight from their media files (PyAV frames and audio on one clock, Kaldi fbank).

    Items are dicts `audio` [A, mel], `video` [3, T, S, S], `label`, `index`; a broken clip (the verdict of
    `decode.plan_clip`, as the preflight and the cache give it) yields `{"index", "broken": (path, reason)}`
    for `collate_av` to drop and count.
    """

    def __init__(
        self,
        clips: Sequence[Clip],
        geometry: ClipGeometry,
        train: bool,
        num_classes: int,
        multi_label: bool = False,
        audio_stats: AudioStats = AUDIOSET_STATS,
        min_clip_s: float = MIN_CLIP_SECONDS,
    ) -> None:
        self.clips, self.geometry, self.train = list(clips), geometry, train
        self.num_classes, self.multi_label, self.audio_stats = num_classes, multi_label, audio_stats
        self.min_clip_s = min_clip_s

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip = self.clips[index]
        try:
            fbank, frames = self.decode(clip)
        except BrokenClip as err:
            return broken_item(index, err, clip.source)
        return {
            "audio": audio_tensor(fbank, self.audio_stats),
            "video": video_tensor(frames, self.geometry, self.train),
            "label": label_tensor(clip.label, self.num_classes, self.multi_label),
            "index": index,
        }

    def decode(self, clip: Clip) -> tuple[torch.Tensor, np.ndarray]:
        """Un-normalised log-mel [A, mel] and uint8 frames [T, H, W, 3] (short side resized) of one window."""
        from . import decode  # here, not at the top: training from the cache needs no decoder libraries

        g = self.geometry
        plan = decode.plan_clip(clip.path, clip.start, clip.end, self.min_clip_s)
        # The clip's audio, as far as a window can reach: the video's span, or one window when that is longer.
        seconds = max(plan.seconds, g.audio_samples / g.sample_rate)
        if clip.end is not None:  # a segment of a longer file: its audio stops where the segment does
            seconds = min(seconds, clip.end - plan.origin)
        wave = decode.read_audio(clip.path, plan.origin, seconds, g.sample_rate)
        window = choose_window(len(plan.pts), plan.seconds, g, self.train, len(wave) / g.sample_rate)
        frames = decode.read_frames(plan, frame_positions(window, len(plan.pts), g), g.short_side)
        first = window.audio_frame * round(g.sample_rate * HOP_SECONDS)
        wave = wave[first : first + g.audio_samples]
        return fit_frames(decode.log_mel(wave, g), g.audio_frames), frames
