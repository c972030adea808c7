"""Data pipeline: dataset indexes -> decoded audio log-mel + video windows -> batches, plus AV-Digits.

Data flows one way: settings (`DataConfig`, no torch) -> index adapters and media decoding -> Dataset and
cache -> loader. `build_from_config` gives a Dataset for one split of a `DataConfig` (raw media or decoded
cache), `build_loader` the DataLoader, `preflight_index` the index check a study starts with; `ClipGeometry`
ties the data to the model's input shapes.

Names resolve on first use (PEP 562): reading a study's `DataConfig` must not import torch and torchaudio,
which most submodules need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .avdigits import build_av_digits
    from .broken import REASONS, BrokenClip, BrokenLog
    from .cache import CachedAVDataset, write_cache
    from .collate import AVCollate
    from .config import DIGIT_WORDS, AVDigitsBuild, DataConfig
    from .dataset import AVDataset
    from .geometry import AUDIOSET_STATS, AudioStats, ClipGeometry
    from .hygiene import HygieneReport, IndexHygieneError, check_splits
    from .indexes import (
        Clip,
        Index,
        IndexFormatError,
        read_audioset,
        read_epic,
        read_vggsound,
        read_vggsound_splits,
    )
    from .loader import (
        build_dataset,
        build_from_config,
        build_loader,
        check_index,
        load_index,
        load_split,
        load_splits,
        preflight,
        preflight_index,
    )
    from .scan import ScanReport, TooManyBrokenError, scan_clips

_SUBMODULE = {
    "build_av_digits": "avdigits",
    **dict.fromkeys(("REASONS", "BrokenClip", "BrokenLog"), "broken"),
    **dict.fromkeys(("CachedAVDataset", "write_cache"), "cache"),
    "AVCollate": "collate",
    **dict.fromkeys(("DIGIT_WORDS", "AVDigitsBuild", "DataConfig"), "config"),
    "AVDataset": "dataset",
    **dict.fromkeys(("AUDIOSET_STATS", "AudioStats", "ClipGeometry"), "geometry"),
    **dict.fromkeys(("HygieneReport", "IndexHygieneError", "check_splits"), "hygiene"),
    **dict.fromkeys(("Clip", "Index", "IndexFormatError", "read_audioset", "read_epic", "read_vggsound",
                     "read_vggsound_splits"), "indexes"),
    **dict.fromkeys(("build_dataset", "build_from_config", "build_loader", "check_index", "load_index",
                     "load_split", "load_splits", "preflight", "preflight_index"), "loader"),
    **dict.fromkeys(("ScanReport", "TooManyBrokenError", "scan_clips"), "scan"),
}
__all__ = [
    "AUDIOSET_STATS", "AVCollate", "AVDataset", "AVDigitsBuild", "AudioStats", "BrokenClip", "BrokenLog",
    "CachedAVDataset", "Clip", "ClipGeometry", "DIGIT_WORDS", "DataConfig", "HygieneReport", "Index",
    "IndexFormatError", "IndexHygieneError", "REASONS", "ScanReport", "TooManyBrokenError", "build_av_digits",
    "build_dataset", "build_from_config", "build_loader", "check_index", "check_splits", "load_index",
    "load_split", "load_splits", "preflight", "preflight_index", "read_audioset", "read_epic",
    "read_vggsound", "read_vggsound_splits", "scan_clips", "write_cache",
]


def __getattr__(name: str) -> Any:
    """Import the submodule that defines `name`, and cache the value here for later lookups."""
    if name not in _SUBMODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_SUBMODULE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
