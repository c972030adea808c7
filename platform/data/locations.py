"""Cache locations as strings: a local folder, or a URI pyarrow.fs opens (`s3://bucket/prefix?options`).

No pyarrow here: the study config validates locations without importing it."""

from __future__ import annotations

from pathlib import Path


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def join(location: str | Path, name: str) -> str | Path:
    """`location/name`: a Path for a folder; for a URI, `name` goes into its path, before any `?options`."""
    if not is_uri(location):
        return Path(location) / name
    base, sep, query = str(location).partition("?")
    return f"{base.rstrip('/')}/{name}{sep}{query}"
