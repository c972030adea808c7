"""Index hygiene: rows that disagree with one another, across every split of a dataset.

A clip is the media a row names: its file and, for a segment of a longer file, its span. Three findings:
- conflict (error): one clip under different labels; whichever row is right, the other trains or scores a
  wrong target.
- overlap (error): one clip in two splits; a test clip seen in training inflates the score it is tested on.
- duplicate (warning): one clip listed more than once in a split with the same label; it is drawn more
  often, but nothing is wrong with it.
`check_splits` is pure: it takes what the index adapters read and touches no file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from .indexes import Clip, Index, IndexFormatError

Kind = Literal["conflict", "overlap", "duplicate"]
SEVERITY: dict[Kind, Literal["error", "warning"]] = {
    "conflict": "error", "overlap": "error", "duplicate": "warning",
}
ADVICE: dict[Kind, str] = {
    "conflict": "keep the row with the right label and delete the others",
    "overlap": "delete the clip's rows from all but one split",
    "duplicate": "delete all but one of the rows",
}
TITLE: dict[Kind, str] = {
    "conflict": "conflicting labels", "overlap": "in more than one split", "duplicate": "duplicate rows",
}


class Row(NamedTuple):
    """One index row that lists a clip: where it is ("index.csv:12"), its split and its label's name(s)."""

    source: str
    split: str
    label: str


@dataclass(frozen=True)
class Finding:
    kind: Kind
    clip: str  # the media: its file, and its span when it is a segment
    rows: tuple[Row, ...]  # every row involved, in the order read

    @property
    def severity(self) -> Literal["error", "warning"]:
        return SEVERITY[self.kind]

    def describe(self) -> str:
        rows = ", ".join(f"{row.source} ({row.split}: {row.label})" for row in self.rows)
        return f"{self.clip}: {rows}"


@dataclass(frozen=True)
class HygieneReport:
    findings: tuple[Finding, ...]

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "warning")

    def describe(self, examples: int = 10) -> str:
        """A summary line, then per kind: its count, severity, what to do, and its first `examples` clips."""
        lines = [f"index check: {len(self.errors)} error(s), {len(self.warnings)} warning(s)"]
        for kind in SEVERITY:
            found = [f for f in self.findings if f.kind == kind]
            if found:
                lines.append(f"  {TITLE[kind]} ({SEVERITY[kind]}): {len(found)} clip(s); {ADVICE[kind]}")
                lines += [f"    {f.describe()}" for f in found[:examples]]
                if len(found) > examples:
                    lines.append(f"    ... {len(found) - examples} more (`avmae data scan` lists them all)")
        return "\n".join(lines)

    def check(self) -> HygieneReport:
        """Raise IndexHygieneError when any finding is an error."""
        if self.errors:
            raise IndexHygieneError(self)
        return self


class IndexHygieneError(IndexFormatError):
    """An index whose rows disagree: a clip with two labels, or in two splits; the message lists every row."""

    def __init__(self, report: HygieneReport) -> None:
        self.report = report
        ValueError.__init__(
            self, "refusing to use this index: its rows disagree (fix them, then rerun)\n"
            + report.describe()
        )


def _clip_name(clip: Clip) -> str:
    whole = clip.start == 0 and clip.end is None
    return str(clip.path) if whole else f"{clip.path} [{clip.start}, {clip.end}] s"


def _label_name(label: int | tuple[int, ...], classes: list[str]) -> str:
    return "+".join(classes[i] for i in label) if isinstance(label, tuple) else classes[label]


def check_splits(splits: Mapping[str, Index]) -> HygieneReport:
    """Findings over every row of every split (`split name -> Index`, as the adapters read them), in the order
    their clips are first read."""
    seen: dict[tuple[Path, float, float | None], tuple[Clip, list[Row]]] = {}
    for split, table in splits.items():
        for clip in table.clips:
            row = Row(clip.source, split, _label_name(clip.label, table.classes))
            seen.setdefault((clip.path, clip.start, clip.end), (clip, []))[1].append(row)
    findings = []
    for clip, rows in seen.values():
        if len(rows) == 1:
            continue
        conflict, overlap = len({row.label for row in rows}) > 1, len({row.split for row in rows}) > 1
        kinds: list[Kind] = [k for k, found in (("conflict", conflict), ("overlap", overlap)) if found]
        findings += [Finding(kind, _clip_name(clip), tuple(rows)) for kind in kinds or ["duplicate"]]
    return HygieneReport(tuple(findings))
