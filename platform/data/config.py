"""A dataset, as a study config describes it: validated without importing torch.

The driver and `avmae sweep --dry-run` read this before any data is touched; building the Dataset (torch,
torchaudio) happens only in `DataConfig.dataset`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .geometry import AudioStats, ClipGeometry

if TYPE_CHECKING:
    from .cache import CachedAVDataset
    from .dataset import AVDataset

Kind = Literal["vggsound", "audioset", "epic", "av-digits"]
KINDS: tuple[str, ...] = get_args(Kind)
DEFAULT_MAX_BROKEN = 0.05  # fraction of broken clips a split may have before preflight refuses it


class AVDigitsBuild(BaseModel):
    """How AV-Digits is built, in one place: `build_av_digits` takes it, a study gives it as `data.av_digits`,
    and `avmae data av-digits` has one option per field (with these defaults and descriptions). The defaults
    rebuild earlier builds byte for byte. The video nuisance fields exist because a tiny MAE learns whatever
    is easiest to predict: with a random hue per clip it learns the hue instead of the digit's shape, and
    its video probe falls below random init (docs/miniature.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, description="Seed of every random choice; the same seed gives the same bytes.")
    clips_per_digit: int = Field(80, ge=1, description="Clips per digit, split 70/15/15 into train/val/test.")
    duration: float = Field(2.0, gt=0, description="Clip length in seconds.")
    size: int = Field(96, ge=16, description="Frame width and height in pixels (even: H.264 4:2:0).")
    fps: int = Field(32, ge=1, description="Video frames per second.")
    motion: float = Field(1.0, ge=0, le=1,
                          description="How far the digit travels: 1 anywhere in the frame, 0 not at all.")
    scale_min: float = Field(0.35, gt=0, le=1, description="Smallest fraction of the frame the digit spans.")
    scale_max: float = Field(0.65, gt=0, le=1, description="Largest fraction of the frame the digit spans.")
    noise: float = Field(1.0, ge=0, description="Background noise, fixed and per frame: 1 is sd 18 and ~10 "
                                                 "grey levels, 0 none.")
    grey: bool = Field(False, description="Grey video, or a random hue per clip (which a tiny MAE learns "
                                          "instead of shapes).")

    @field_validator("size")
    @classmethod
    def _even(cls, size: int) -> int:
        if size % 2:
            raise ValueError(f"size must be even (H.264 4:2:0), got {size}")
        return size

    @model_validator(mode="after")
    def _scale_range(self) -> AVDigitsBuild:
        if self.scale_min > self.scale_max:
            raise ValueError(f"need scale_min <= scale_max, got scale_min={self.scale_min}, "
                             f"scale_max={self.scale_max}")
        return self


class DataConfig(BaseModel):
    """Serializable dataset description for study configs; `index` may map split -> file (AudioSet, EPIC)."""

    model_config = ConfigDict(extra="forbid")

    kind: Kind
    root: Path
    index: Path | dict[str, Path] | None = None
    pattern: str | None = None
    labels: Path | None = None
    target: Literal["verb", "noun"] = "verb"
    audio_mean: float | None = None
    audio_std: float | None = None
    cache_dir: Path | None = None
    max_broken_fraction: float | None = DEFAULT_MAX_BROKEN
    workers: int = 1

    @model_validator(mode="after")
    def _stats_come_in_pairs(self) -> DataConfig:
        if (self.audio_mean is None) != (self.audio_std is None):
            raise ValueError("set audio_mean and audio_std together (or neither, for the dataset's defaults)")
        return self

    def dataset(self, split: str, geometry: ClipGeometry, train: bool) -> AVDataset | CachedAVDataset:
        # Lazy: the driver and --dry-run read this config and must not pay for importing torch.
        from .loader import build_dataset

        stats = None if self.audio_mean is None else AudioStats(self.audio_mean, self.audio_std)
        return build_dataset(
            self.kind,
            self.root,
            self.index[split] if isinstance(self.index, dict) else self.index,
            split,
            geometry,
            train,
            pattern=self.pattern,
            labels=self.labels,
            target=self.target,
            audio_stats=stats,
            cache_dir=self.cache_dir,
            max_broken_fraction=self.max_broken_fraction,
            workers=self.workers,
        )
