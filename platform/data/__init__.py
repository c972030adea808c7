"""Data pipeline: dataset indexes -> decoded audio log-mel + video windows -> batches, plus AV-Digits.

`build_dataset` / `DataConfig` give a Dataset for one split (raw media or decoded cache), `build_loader` the
DataLoader; `ClipGeometry` ties both to the model's input shapes.

Names resolve on first use (PEP 562): reading a study's `DataConfig` must not import torch and torchaudio,
which most submodules need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .avdigits import DIGIT_WORDS, build_av_digits
    from .broken import REASONS, BrokenClip, BrokenLog
    from .cache import CachedAVDataset, write_cache
    from .collate import AVCollate
    from .config import AVDigitsBuild, DataConfig
    from .dataset import AVDataset
    from .geometry import AUDIOSET_STATS, AudioStats, ClipGeometry
    from .indexes import Clip, Index, IndexFormatError, read_audioset, read_epic, read_vggsound
    from .loader import build_dataset, build_loader, load_index, preflight
    from .scan import ScanReport, TooManyBrokenError, scan_clips

_SUBMODULE = {
    **dict.fromkeys(("DIGIT_WORDS", "build_av_digits"), "avdigits"),
    **dict.fromkeys(("REASONS", "BrokenClip", "BrokenLog"), "broken"),
    **dict.fromkeys(("CachedAVDataset", "write_cache"), "cache"),
    "AVCollate": "collate",
    **dict.fromkeys(("AVDigitsBuild", "DataConfig"), "config"),
    "AVDataset": "dataset",
    **dict.fromkeys(("AUDIOSET_STATS", "AudioStats", "ClipGeometry"), "geometry"),
    **dict.fromkeys(("Clip", "Index", "IndexFormatError", "read_audioset", "read_epic", "read_vggsound"),
                    "indexes"),
    **dict.fromkeys(("build_dataset", "build_loader", "load_index", "preflight"), "loader"),
    **dict.fromkeys(("ScanReport", "TooManyBrokenError", "scan_clips"), "scan"),
}
__all__ = [
    "AUDIOSET_STATS", "AVCollate", "AVDataset", "AVDigitsBuild", "AudioStats", "BrokenClip", "BrokenLog",
    "CachedAVDataset", "Clip", "ClipGeometry", "DIGIT_WORDS", "DataConfig", "Index", "IndexFormatError",
    "REASONS", "ScanReport", "TooManyBrokenError", "build_av_digits", "build_dataset", "build_loader",
    "load_index", "preflight", "read_audioset", "read_epic", "read_vggsound", "scan_clips", "write_cache",
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
