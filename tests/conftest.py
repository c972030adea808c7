"""Shared test fixtures: where the real media live, and a guard that CI never skips data tests silently."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("AVMAE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (real clips and FSDD). Missing on a user's fresh clone: skip there, fail in CI."""
    path = shared_data_dir()
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the shared data at {path} (set AVMAE_SHARED_DATA)")
        pytest.skip(f"no shared data at {path}; set AVMAE_SHARED_DATA to run the real-media tests")
    return path


@pytest.fixture(scope="session")
def clips_dir(shared_data: Path) -> Path:
    return shared_data / "clips"


@pytest.fixture(scope="session")
def fsdd_dir(shared_data: Path) -> Path:
    return shared_data / "fsdd" / "recordings"
