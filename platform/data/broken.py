"""Broken input: one exception type with a machine-readable reason, and a tally the trial can log."""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

REASONS = ("missing", "empty", "truncated", "too_short", "no_audio", "short_audio", "no_video", "undecodable")

_already_logged: set[tuple[str, str]] = set()  # per process: each broken file is logged once


class BrokenClip(Exception):
    """A clip that cannot be used; `reason` is one of REASONS."""

    def __init__(self, path: str, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown broken reason {reason!r}")
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


class BrokenRecord(NamedTuple):
    """One skipped clip in a report: the file, why, and the index line that lists it (to fix or drop)."""

    path: str
    reason: str
    source: str = ""  # "index.csv:12"
    detail: str = ""


def write_broken_csv(path: str | Path, records: Iterable[BrokenRecord]) -> Path:
    """Every broken clip, one row each (index line, file, reason, detail): the list to fix the index from."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["index_line", "path", "reason", "detail"])
        writer.writerows((r.source, r.path, r.reason, r.detail) for r in records)
    return path


def log_broken_once(err: BrokenClip, source: str = "") -> None:
    """Warn once per file and reason; `source` ("index.csv:12") says which index line to fix or drop."""
    key = (err.path, err.reason)
    if key not in _already_logged:
        _already_logged.add(key)
        log.warning("skipping broken clip %s%s", err, f" (listed at {source})" if source else "")


@dataclass
class BrokenLog:
    """Counts skipped clips by reason, fed from batches (`update`) or directly (`record`)."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 3

    def record(self, path: str, reason: str) -> None:
        self.counts[reason] += 1
        paths = self.examples.setdefault(reason, [])
        if len(paths) < self.max_examples and path not in paths:
            paths.append(path)

    def update(self, batch: Mapping[str, Any]) -> None:
        """Add the `broken` list of a collated batch: [(path, reason), ...]."""
        for path, reason in batch.get("broken", ()):
            self.record(path, reason)

    def extend(self, items: Iterable[tuple[str, str]]) -> None:
        for path, reason in items:
            self.record(path, reason)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def metrics(self, prefix: str = "data/n_broken") -> dict[str, int]:
        """Flat metrics for MLflow: total plus one entry per reason seen."""
        return {prefix: self.total, **{f"{prefix}/{r}": n for r, n in sorted(self.counts.items())}}

    def summary(self) -> str:
        parts = [
            f"{r}={n} (e.g. {', '.join(self.examples.get(r, []))})" for r, n in sorted(self.counts.items())
        ]
        return "; ".join(parts) or "none"
