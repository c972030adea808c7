"""Preflight: find broken clips cheaply before a study, and refuse to train when too many are broken."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from tqdm import tqdm

from . import decode
from .broken import BrokenClip, BrokenRecord
from .config import DEFAULT_MAX_BROKEN
from .geometry import MIN_CLIP_SECONDS
from .indexes import Clip
from .pool import process_pool


class TooManyBrokenError(RuntimeError):
    """More of a dataset is broken than the study tolerates."""


@dataclass
class ScanReport:
    total: int
    broken: list[BrokenRecord]

    @property
    def counts(self) -> Counter:
        return Counter(record.reason for record in self.broken)

    @property
    def fraction(self) -> float:
        return len(self.broken) / self.total if self.total else 0.0

    def describe(self, examples: int = 3) -> str:
        lines = [f"{len(self.broken)} of {self.total} clips broken ({self.fraction:.1%})"]
        for reason, n in self.counts.most_common():
            shown = [_example(r) for r in self.broken if r.reason == reason][:examples]
            lines.append(f"  {reason}: {n}, e.g. {', '.join(shown)}")
        return "\n".join(lines)

    def check(self, max_fraction: float = DEFAULT_MAX_BROKEN) -> ScanReport:
        """Raise TooManyBrokenError when the broken fraction exceeds `max_fraction`."""
        if self.fraction > max_fraction:
            raise TooManyBrokenError(
                f"refusing to train: more than {max_fraction:.1%} of the dataset is broken; "
                f"fix or drop these files, or raise max_broken_fraction.\n{self.describe()}"
            )
        return self


def _example(record: BrokenRecord) -> str:
    """`path (index.csv:12: detail)`: the file, and where the index lists it."""
    about = ": ".join(part for part in (record.source, record.detail) if part)
    return f"{record.path} ({about})" if about else record.path


def probe_clip(clip: Clip, min_clip_s: float = MIN_CLIP_SECONDS) -> BrokenRecord | None:
    """Why the clip is broken, or None: the verdict raw training and the cache give it (`decode.plan_clip`),
    from demuxed timestamps and first frames, without a full decode."""
    try:
        decode.plan_clip(clip.path, clip.start, clip.end, min_clip_s)
    except BrokenClip as err:
        return BrokenRecord(err.path, err.reason, clip.source, err.detail)
    return None


def scan_clips(
    clips: Sequence[Clip], workers: int = 1, progress: bool = False, min_clip_s: float = MIN_CLIP_SECONDS
) -> ScanReport:
    """Probe every clip (in `workers` processes); cheap: no full decode."""
    probe = partial(probe_clip, min_clip_s=min_clip_s)
    bar = tqdm(total=len(clips), desc="scanning", unit="clip", disable=not progress)
    with bar:
        if workers <= 1:
            results = []
            for clip in clips:
                results.append(probe(clip))
                bar.update()
        else:
            with process_pool(workers) as pool:
                results = []
                for result in pool.map(probe, clips, chunksize=16):
                    results.append(result)
                    bar.update()
    return ScanReport(len(clips), [r for r in results if r is not None])
