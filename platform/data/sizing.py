"""What a cache format costs a dataset at a geometry: bytes on disk, bytes and CPU time per sample.

Every number is measured: docs/benchmarks.md, "Training formats" (`bench/formats.py`, 2026-12-07), the 720p
10 s clip on one CPU core, at two geometries: the paper's (short side 256) and AV-Digits' (short side 73),
frame stride 4. Disk bytes include the whole clip's float16 log-mel, a sample's read its window; CPU time is
the batch reader's whole sample (window, decode, crop, log-mel): 1000 / its clips per CPU-second. A geometry
between or beyond them takes the nearest measured one's figures scaled by frame area (and 4 / stride on
disk): an estimate, said so. Published clip counts stand in for an index that cannot be read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import AVDigitsBuild, DataConfig
from .geometry import ClipGeometry
from .indexes import Index, load_index

MEASURED_SECONDS = 10.0  # the measured clip's length: disk bytes scale with a clip's seconds
VIT_B_CLIPS_PER_S = 1066  # one H200 running the ViT-B AV-MAE step (docs/benchmarks.md): a GPU's appetite
PUBLISHED_CLIPS = {"vggsound": 199_176, "audioset": 2_084_320, "epic": 89_977}  # whole datasets, all splits
NOMINAL_SECONDS = {"vggsound": 10.0, "audioset": 10.0, "epic": 3.1}  # EPIC-100: mean action segment


@dataclass(frozen=True)
class FormatCost:
    """One format at one geometry: MB on disk per clip second, MB read and CPU-ms per sample."""

    disk_mb_per_s: float
    read_mb: float
    cpu_ms: float

    def scaled(self, area: float, stride: float) -> FormatCost:
        return FormatCost(self.disk_mb_per_s * area * stride, self.read_mb * area, self.cpu_ms * area)


def row(disk_mb: float, read_mb: float, clips_per_cpu_s: float) -> FormatCost:
    """A row of the measured table: MB on disk (the 10 s clip), MB read a sample, loader clips/CPU-s."""
    return FormatCost(disk_mb / MEASURED_SECONDS, read_mb, 1000 / clips_per_cpu_s)


MEASURED: dict[int, dict[str, FormatCost]] = {  # short side -> format -> cost (docs/benchmarks.md, 720p rows)
    256: {"uint8": row(26.46, 5.85, 849), "jpeg": row(3.11, 0.87, 67), "h264": row(0.83, 0.41, 72)},
    73: {"uint8": row(2.39, 0.26, 9932), "jpeg": row(0.55, 0.065, 1114), "h264": row(0.31, 0.041, 217)},
}


def format_cost(fmt: str, geometry: ClipGeometry) -> tuple[FormatCost, bool]:
    """(cost of `fmt` at `geometry`, whether it is measured there rather than scaled from the nearest)."""
    if fmt not in MEASURED[256]:
        raise ValueError(f"no measured cost for cache format {fmt!r}; choose from {', '.join(MEASURED[256])}")
    side = min(MEASURED, key=lambda s: abs(s - geometry.short_side))
    cost = MEASURED[side][fmt]
    if side == geometry.short_side and geometry.frame_stride == 4:
        return cost, True
    return cost.scaled((geometry.short_side / side) ** 2, 4 / geometry.frame_stride), False


@dataclass(frozen=True)
class Sizing:
    """A prepared cache and the feed one trial needs at `clips_per_s`."""

    clips: int
    clip_seconds: float
    cost: FormatCost
    clips_per_s: float

    @property
    def prepared_gb(self) -> float:
        return self.clips * self.clip_seconds * self.cost.disk_mb_per_s / 1000

    @property
    def read_mb_per_s(self) -> float:
        return self.clips_per_s * self.cost.read_mb

    @property
    def cores(self) -> float:
        return self.clips_per_s * self.cost.cpu_ms / 1000


def index_clips(config: DataConfig) -> int | None:
    """Clips in every split of the dataset's index, or None when it cannot be read here."""
    files = config.index if isinstance(config.index, dict) else {None: config.index}
    try:
        return sum(len(_read(config, index).clips) for index in files.values())
    except (OSError, ValueError):
        return None


def _read(config: DataConfig, index: Path | None) -> Index:
    return load_index(config.kind, config.root, index, None, config.pattern, config.labels, config.target)


def dataset_clips(config: DataConfig, av_digits: AVDigitsBuild | None = None) -> tuple[int, float, str]:
    """(clips, seconds a clip, where the count comes from) of the whole dataset: its index when readable,
    else its build settings (AV-Digits) or its published count."""
    if config.kind == "av-digits":
        build = av_digits or AVDigitsBuild()
        counted = index_clips(config)
        return counted or build.clips_per_digit * 10, build.duration, "index" if counted else "build settings"
    counted = index_clips(config)
    seconds = NOMINAL_SECONDS[config.kind]
    if counted is not None:
        return counted, seconds, "index"
    return PUBLISHED_CLIPS[config.kind], seconds, "published count: the index is not readable here"
