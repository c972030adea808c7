"""Data pipeline: dataset indexes -> decoded audio log-mel + video windows -> batches, plus AV-Digits.

`build_dataset` / `DataConfig` give a Dataset for one split (raw media or decoded cache), `build_loader` the
DataLoader; `ClipGeometry` ties both to the model's input shapes.
"""

from .avdigits import DIGIT_WORDS, build_av_digits
from .broken import REASONS, BrokenClip, BrokenLog
from .cache import CachedAVDataset, write_cache
from .collate import AVCollate
from .dataset import AVDataset
from .geometry import AUDIOSET_STATS, AudioStats, ClipGeometry
from .indexes import Clip, Index, IndexFormatError, read_audioset, read_epic, read_vggsound
from .loader import DataConfig, build_dataset, build_loader, load_index, preflight
from .scan import ScanReport, TooManyBrokenError, scan_clips

__all__ = [
    "AUDIOSET_STATS",
    "AVCollate",
    "AVDataset",
    "AudioStats",
    "BrokenClip",
    "BrokenLog",
    "CachedAVDataset",
    "Clip",
    "ClipGeometry",
    "DIGIT_WORDS",
    "DataConfig",
    "Index",
    "IndexFormatError",
    "REASONS",
    "ScanReport",
    "TooManyBrokenError",
    "build_av_digits",
    "build_dataset",
    "build_loader",
    "load_index",
    "preflight",
    "read_audioset",
    "read_epic",
    "read_vggsound",
    "scan_clips",
    "write_cache",
]
