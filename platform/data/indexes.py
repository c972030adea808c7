"""Adapters that read the datasets' published index files unchanged and map rows onto media files.

A `pattern` (str.format fields listed per reader) names each row's file under `root`. Any row that cannot be
understood raises IndexFormatError naming the file and the 1-based line; a problem of the whole file (no rows,
a split with no clips) names the file alone.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import DIGIT_WORDS, KINDS

VGGSOUND_PATTERN = "{youtube_id}_{start:06d}.mp4"
AUDIOSET_PATTERN = "{ytid}_{start:.3f}.mp4"
EPIC_PATTERN = "{video_id}.MP4"
EPIC_CLASSES = {"verb": 97, "noun": 300}  # EPIC-KITCHENS-100 class counts


class IndexFormatError(ValueError):
    """An index file, or one of its rows, that cannot be used; the message names the file and the line
    (`line=None` for a problem of the whole file)."""

    def __init__(self, path: str | Path, line: int | None, problem: str) -> None:
        super().__init__(f"{path}:{line}: {problem}" if line is not None else f"{path}: {problem}")


@dataclass(frozen=True)
class Clip:
    """One sample: a file, its label(s), and the span to use (None = whole file)."""

    path: Path
    label: int | tuple[int, ...]
    start: float = 0.0
    end: float | None = None
    source: str = ""  # "index.csv:12", for messages


@dataclass(frozen=True)
class Index:
    clips: list[Clip]
    classes: list[str]
    multi_label: bool = False


def _rows(path: Path, skip_comments: bool = False) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, stripped cells) of each non-blank line; with `skip_comments`, lines starting with
    `#` are skipped whatever they hold. Every line is one row: a quote left open at its end is an error, never
    a field that runs on into the next line. A UTF-8 BOM (spreadsheet exports write one) is dropped; a file
    that is not UTF-8 CSV text raises IndexFormatError naming it."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        try:
            for line, text in enumerate(f, 1):
                if not text.strip() or (skip_comments and text.lstrip().startswith("#")):
                    continue
                if "\0" in text:
                    raise IndexFormatError(path, line, "binary data (NUL bytes), not a CSV index")
                yield line, [cell.strip() for cell in _cells(path, line, text)]
        except UnicodeDecodeError:
            raise _not_utf8(path) from None


def _cells(path: Path, line: int, text: str) -> list[str]:
    """The cells of one line of CSV text (its line break dropped)."""
    try:
        return next(csv.reader([text.rstrip("\r\n")], skipinitialspace=True, strict=True))
    except csv.Error as exc:
        raise IndexFormatError(path, line, f"not CSV: {exc} (a row is one line: check its quotes)") from None


def _not_utf8(path: Path) -> IndexFormatError:
    """The error for an index that is not UTF-8: where the first bad byte is, and what to do."""
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return IndexFormatError(path, None, "UTF-16 text; save the index as UTF-8")
    body = data.removeprefix(codecs.BOM_UTF8)
    try:
        body.decode("utf-8")
        offset = 0  # the file changed since it was read
    except UnicodeDecodeError as exc:
        offset = len(data) - len(body) + exc.start
    line = data.count(b"\n", 0, offset) + 1
    return IndexFormatError(
        path, line, f"not UTF-8 text (byte 0x{data[offset]:02x}); is this the index file? save it as UTF-8"
    )


def _file(root: Path, pattern: str, index: Path, line: int, **fields: object) -> Path:
    try:
        return root / pattern.format(**fields)
    except (KeyError, ValueError, IndexError) as exc:
        raise IndexFormatError(index, line, f"pattern {pattern!r} does not fit {fields}: {exc}") from exc


def _number(text: str, index: Path, line: int, what: str, cast: type = float) -> float:
    try:
        value = cast(text)
    except ValueError:
        raise IndexFormatError(index, line, f"bad {what} {text!r}") from None
    if value < 0:
        raise IndexFormatError(index, line, f"negative {what} {text!r}")
    return value


def read_vggsound(
    index: str | Path,
    root: str | Path,
    split: str | None = None,
    pattern: str = VGGSOUND_PATTERN,
    classes: Sequence[str] | None = None,
) -> Index:
    """`vggsound.csv`: no header, rows `youtube_id,start_seconds,label,split`; the clips of `split` (None:
    every row), in file order.

    Classes are the sorted labels of the whole file (all splits agree), unless `classes` fixes them; then an
    unknown label is an error. Pattern fields: youtube_id, start (int), label, split. An empty file, or a
    `split` no row has, is an error: an empty split would give a silent empty loader (val/loss 0.0).
    """
    rows, names = _vggsound_rows(Path(index), Path(root), pattern, classes)
    clips = [clip for row_split, clip in rows if split is None or row_split == split]
    if not clips:
        present = ", ".join(sorted({row_split for row_split, _ in rows}))
        raise IndexFormatError(
            index,
            None,
            f"no clips in split {split!r} (the file has splits: {present}); "
            "set data.train_split / data.val_split (or evaluation.*_split) to one of them",
        )
    return Index(clips, names)


def read_vggsound_splits(
    index: str | Path,
    root: str | Path,
    pattern: str = VGGSOUND_PATTERN,
    classes: Sequence[str] | None = None,
) -> dict[str, Index]:
    """Every split of a `vggsound.csv` (as `read_vggsound` reads each), keyed by the split column."""
    rows, names = _vggsound_rows(Path(index), Path(root), pattern, classes)
    splits: dict[str, list[Clip]] = {}
    for row_split, clip in rows:
        splits.setdefault(row_split, []).append(clip)
    return {name: Index(clips, names) for name, clips in splits.items()}


def _vggsound_rows(
    index: Path, root: Path, pattern: str, classes: Sequence[str] | None
) -> tuple[list[tuple[str, Clip]], list[str]]:
    """(split, clip) of every row in file order, and the class names."""
    rows = []
    for line, row in _rows(index):
        if len(row) != 4:
            raise IndexFormatError(
                index, line, f"expected 4 columns youtube_id,start_seconds,label,split; got {row}"
            )
        youtube_id, start_text, label, row_split = row
        start = int(_number(start_text, index, line, "start_seconds", int))
        if not youtube_id or not label:
            raise IndexFormatError(index, line, "empty youtube_id or label")
        rows.append((line, youtube_id, start, label, row_split))
    if not rows:
        raise IndexFormatError(index, None, "no rows; expected youtube_id,start_seconds,label,split lines")
    names = list(classes) if classes is not None else sorted({r[3] for r in rows})
    lookup = {name: i for i, name in enumerate(names)}
    clips = []
    for line, youtube_id, start, label, row_split in rows:
        if label not in lookup:
            raise IndexFormatError(index, line, f"unknown label {label!r}")
        path = _file(
            root, pattern, index, line, youtube_id=youtube_id, start=start, label=label, split=row_split
        )
        clips.append((row_split, Clip(path, lookup[label], source=f"{index}:{line}")))
    return clips, names


def read_audioset_labels(path: str | Path) -> list[str]:
    """`class_labels_indices.csv` (header `index,mid,display_name`) -> mids in index order."""
    path = Path(path)
    mids: dict[int, str] = {}
    for line, row in _rows(path):
        if line == 1 and row[:2] == ["index", "mid"]:
            continue
        if len(row) < 2:
            raise IndexFormatError(path, line, f"expected index,mid,display_name; got {row}")
        mids[int(_number(row[0], path, line, "index", int))] = row[1]
    if not mids:
        raise IndexFormatError(path, None, "no classes; expected index,mid,display_name rows")
    if sorted(mids) != list(range(len(mids))):
        raise IndexFormatError(path, 1, "class indices are not 0..N-1")
    return [mids[i] for i in range(len(mids))]


def read_audioset(
    index: str | Path,
    root: str | Path,
    labels: str | Path,
    pattern: str = AUDIOSET_PATTERN,
) -> Index:
    """AudioSet segment CSV: `# ` comment lines, then `YTID, start_seconds, end_seconds, "mid1,mid2"`.

    Multi-label; classes from `class_labels_indices.csv`. Pattern fields: ytid, start, end (floats).
    """
    index, root = Path(index), Path(root)
    mids = read_audioset_labels(labels)
    lookup = {mid: i for i, mid in enumerate(mids)}
    clips = []
    for line, row in _rows(index, skip_comments=True):
        if len(row) != 4:
            raise IndexFormatError(
                index, line, f"expected YTID, start_seconds, end_seconds, positive_labels; got {row}"
            )
        ytid, start_text, end_text, positive = row
        start = _number(start_text, index, line, "start_seconds")
        end = _number(end_text, index, line, "end_seconds")
        if end <= start:
            raise IndexFormatError(
                index, line, f"end_seconds {end_text} is not after start_seconds {start_text}"
            )
        found = [m.strip() for m in positive.split(",") if m.strip()]
        unknown = [m for m in found if m not in lookup]
        if unknown or not found:
            raise IndexFormatError(index, line, f"unknown label(s) {unknown or positive!r}")
        path = _file(root, pattern, index, line, ytid=ytid, start=start, end=end)
        clips.append(Clip(path, tuple(sorted({lookup[m] for m in found})), source=f"{index}:{line}"))
    if not clips:
        raise IndexFormatError(
            index, None, "no segments; expected `YTID, start_seconds, end_seconds, positive_labels` rows"
        )
    return Index(clips, mids, multi_label=True)


_TIMESTAMP = re.compile(r"(\d+):([0-5]\d):([0-5]\d(?:\.\d*)?)")


def parse_timestamp(text: str) -> float:
    """EPIC `HH:MM:SS.ff` -> seconds. Anything else, a sign included, is a ValueError: `-00:00:01.00` once
    read as 1 s, because int("-00") has no sign to lose."""
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not HH:MM:SS.ff (unsigned)")
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def read_epic(
    index: str | Path,
    root: str | Path,
    target: str = "verb",
    pattern: str = EPIC_PATTERN,
    num_classes: int | None = None,
) -> Index:
    """EPIC-KITCHENS-100 annotation CSV (with header); each row is a segment cut from `{video_id}.MP4`.

    `target` is "verb" or "noun" (the `*_class` column). Pattern fields: video_id, participant_id.
    """
    if target not in EPIC_CLASSES:
        raise ValueError(f"EPIC target must be one of {sorted(EPIC_CLASSES)}, got {target!r}")
    index, root = Path(index), Path(root)
    num_classes = num_classes or EPIC_CLASSES[target]
    clips, columns = [], None
    for line, row in _rows(index):
        if columns is None:
            columns = {name: i for i, name in enumerate(row)}
            needed = {"video_id", "participant_id", "start_timestamp", "stop_timestamp", f"{target}_class"}
            if needed - set(columns):
                raise IndexFormatError(index, line, f"header lacks {sorted(needed - set(columns))}")
            continue
        if len(row) < len(columns):
            raise IndexFormatError(index, line, f"expected {len(columns)} columns, got {len(row)}")
        try:
            start = parse_timestamp(row[columns["start_timestamp"]])
            stop = parse_timestamp(row[columns["stop_timestamp"]])
        except ValueError as exc:
            raise IndexFormatError(index, line, f"bad timestamp: {exc}") from None
        if stop <= start:
            raise IndexFormatError(index, line, "stop_timestamp is not after start_timestamp")
        label = int(_number(row[columns[f"{target}_class"]], index, line, f"{target}_class", int))
        if label >= num_classes:
            raise IndexFormatError(index, line, f"unknown {target}_class {label} (>= {num_classes})")
        video_id, participant = row[columns["video_id"]], row[columns["participant_id"]]
        path = _file(root, pattern, index, line, video_id=video_id, participant_id=participant)
        clips.append(Clip(path, label, start, stop, source=f"{index}:{line}"))
    if columns is None:
        raise IndexFormatError(index, None, "empty file; expected the EPIC-KITCHENS-100 header and segments")
    if not clips:
        raise IndexFormatError(index, None, "no segments after the header")
    names = [f"{target}_{i}" for i in range(num_classes)]
    return Index(clips, names)


def load_index(
    kind: str,
    root: str | Path,
    index: str | Path | None,
    split: str | None,
    pattern: str | None = None,
    labels: str | Path | None = None,
    target: str = "verb",
) -> Index:
    """Read one split of an index with the adapter for `kind`.

    VGGSound-format indexes (default ROOT/vggsound.csv) filter rows on their split column; AudioSet and EPIC
    publish one file per split, so there `split` only names the cache.
    """
    root = Path(root)
    if kind in ("vggsound", "av-digits"):
        index = index or root / "vggsound.csv"
        classes = DIGIT_WORDS if kind == "av-digits" else None
        return read_vggsound(index, root, split, pattern or VGGSOUND_PATTERN, classes=classes)
    if index is None:
        raise ValueError(f"kind {kind!r} needs an index file")
    if kind == "audioset":
        if labels is None:
            raise ValueError("AudioSet needs `labels` (class_labels_indices.csv)")
        return read_audioset(index, root, labels, pattern or AUDIOSET_PATTERN)
    if kind == "epic":
        return read_epic(index, root, target, pattern or EPIC_PATTERN)
    raise ValueError(f"unknown dataset kind {kind!r}; choose from {', '.join(KINDS)}")
