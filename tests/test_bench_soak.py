"""bench/soak.py is a benchmark, not a test: only its command line is checked here."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_the_soak_bench_explains_itself():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "soak.py"), "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--trials" in result.stdout and "--outage" in result.stdout and "PostgreSQL" in result.stdout
    assert "--concurrent" in result.stdout  # the docstring names it: it is an option
