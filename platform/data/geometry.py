"""What one decoded sample looks like: the model's input shapes plus how they map onto seconds and pixels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

HOP_SECONDS = 0.010  # Kaldi fbank frame shift (10 ms): audio_frames / 100 = seconds
WINDOW_SECONDS = 0.025  # Kaldi fbank frame length (25 ms)
MIN_CLIP_SECONDS = 0.5  # default shortest usable clip; below it a window is mostly repeats and padding


@dataclass(frozen=True)
class ClipGeometry:
    """Mirrors the model's `input_shapes`; everything the decoder needs to cut a window."""

    audio_frames: int
    num_frames: int
    img_size: int
    frame_stride: int = 4
    sample_rate: int = 16000
    num_mel_bins: int = 128

    def __post_init__(self) -> None:
        for name in ("audio_frames", "num_frames", "img_size", "frame_stride", "sample_rate", "num_mel_bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"ClipGeometry.{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_input_shapes(cls, shapes: Mapping[str, Sequence[int]], frame_stride: int = 4) -> ClipGeometry:
        """`{"audio": (A, mel), "video": (3, T, S, S)}` -> geometry."""
        audio_frames, mel = shapes["audio"]
        channels, num_frames, height, width = shapes["video"]
        if channels != 3 or height != width:
            raise ValueError(f"video input shape must be (3, T, S, S), got {tuple(shapes['video'])}")
        return cls(int(audio_frames), int(num_frames), int(height), frame_stride, num_mel_bins=int(mel))

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {
            "audio": (self.audio_frames, self.num_mel_bins),
            "video": (3, self.num_frames, self.img_size, self.img_size),
        }

    @property
    def short_side(self) -> int:
        """Resize target before cropping: 256 for a 224 crop, scaled the same way for other sizes."""
        return round(self.img_size * 256 / 224)

    @property
    def duration(self) -> float:
        """Seconds covered by the audio window."""
        return self.audio_frames * HOP_SECONDS

    @property
    def video_span(self) -> int:
        """Source frames spanned by the video window (first to last sampled frame, inclusive)."""
        return (self.num_frames - 1) * self.frame_stride + 1

    @property
    def audio_samples(self) -> int:
        """Samples that give exactly `audio_frames` Kaldi frames (snip_edges=True)."""
        hop = round(self.sample_rate * HOP_SECONDS)
        return (self.audio_frames - 1) * hop + round(self.sample_rate * WINDOW_SECONDS)


@dataclass(frozen=True)
class AudioStats:
    """Dataset log-mel statistics for `(fbank - mean) / std`."""

    mean: float
    std: float


# AudioSet statistics of this exact Kaldi fbank (16 kHz, 128 bins, 25 ms Hanning, 10 ms hop), as AST
# and CAV-MAE measured them. The authors' finetuning configs use 1.102 / 2.762 (paper.md §1), but those
# belong to Scenic's own spectrogram: on this fbank (real clips average about -6.7) they would leave
# inputs far off zero.
AUDIOSET_STATS = AudioStats(mean=-4.2677393, std=4.5689974)
