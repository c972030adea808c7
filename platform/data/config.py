"""A dataset, as a study config describes it: validated without importing torch.

The driver and `avmae sweep --dry-run` read this before any data is touched; building the Dataset (torch,
torchaudio) happens only in `DataConfig.dataset`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from pydantic import BaseModel, ConfigDict, model_validator

from .geometry import AudioStats, ClipGeometry

if TYPE_CHECKING:
    from .cache import CachedAVDataset
    from .dataset import AVDataset

Kind = Literal["vggsound", "audioset", "epic", "av-digits"]
KINDS: tuple[str, ...] = get_args(Kind)
DEFAULT_MAX_BROKEN = 0.05  # fraction of broken clips a split may have before preflight refuses it


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
