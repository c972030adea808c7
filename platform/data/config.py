"""A dataset, as a study config describes it: settings only, validated without importing torch.

The driver and `avmae sweep --dry-run` read this before any data is touched; `loader.build_from_config`
builds a split's Dataset from it. Of this package it imports at most `geometry` (no torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .geometry import MIN_CLIP_SECONDS

# AV-Digits' classes, in label order
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

Kind = Literal["vggsound", "audioset", "epic", "av-digits"]
KINDS: tuple[str, ...] = get_args(Kind)
CacheFormat = Literal["uint8", "jpeg", "h264"]
CACHE_FORMATS: tuple[str, ...] = get_args(CacheFormat)
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
    cache_dir: Path | str | None = Field(
        None, description="Cache folder, or a URI pyarrow.fs opens (s3://bucket/prefix?endpoint_override="
        "host:port&scheme=http) for the compressed formats: shards are written there and each trial copies "
        "those it reads into `cache_copy_dir`.")
    cache_copy_dir: Path | None = Field(
        None, description="Local folder for the copies of a remote cache's shards (default: the system's "
        "temporary folder); at most `cache_copy_gb`, least recently used out.")
    cache_copy_gb: float = Field(50, gt=0, description="Bound of `cache_copy_dir`, in GiB.")
    cache_format: CacheFormat = Field(
        "uint8", description="Frames in the cache: uint8 (no decoding, ~10x the source's bytes), jpeg or "
        "h264 (compressed shards, decoded per sample; docs/benchmarks.md, Training formats).")
    max_broken_fraction: float | None = DEFAULT_MAX_BROKEN
    min_clip_s: float = Field(MIN_CLIP_SECONDS, gt=0, description="Shorter clips are broken (too_short).")
    workers: int = 1

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _uri_kept(cls, value: object) -> object:
        """A URI stays a string (a Path would fold its `//`); anything else is a folder."""
        if value is None or (isinstance(value, str) and "://" in value):
            return value
        return Path(value)

    @model_validator(mode="after")
    def _uri_needs_shards(self) -> DataConfig:
        if isinstance(self.cache_dir, str) and self.cache_format == "uint8":
            raise ValueError(f"cache_dir {self.cache_dir} is a URI: set cache_format jpeg or h264 (the uint8 "
                             "cache is read from a local or shared folder)")
        return self

    @model_validator(mode="after")
    def _stats_come_in_pairs(self) -> DataConfig:
        if (self.audio_mean is None) != (self.audio_std is None):
            raise ValueError("set audio_mean and audio_std together (or neither, for the dataset's defaults)")
        return self

    def index_file(self, split: str | None) -> Path | None:
        """The index file `split` reads: its own when `index` maps splits to files, else `index`."""
        if not isinstance(self.index, dict):
            return self.index
        if split not in self.index:
            raise ValueError(f"the index has no file for split {split!r}; it maps: {', '.join(self.index)}")
        return self.index[split]
