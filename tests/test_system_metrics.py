"""Rank 0's system metrics (system_metrics): real CPU work in this process and in children, real memory."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from avmae.platform.tracking import system_metrics as S

LINUX = Path("/proc/stat").is_file()
needs_proc = pytest.mark.skipif(not LINUX, reason="the process tree and machine figures are read from /proc")
BURN = "import time\nend = time.perf_counter() + {s}\nwhile time.perf_counter() < end: pass\n"


def burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_the_names_are_mlflows_system_metrics_and_the_values_plausible():
    sampler = S.SystemSampler("cpu")
    time.sleep(0.2)

    metrics = sampler.read()

    assert all(name.startswith("system/") for name in metrics)
    assert not [name for name in metrics if "gpu" in name]  # no GPU in use: no GPU metrics
    if LINUX:
        assert set(metrics) == {S.CPU, S.MEMORY_MB, S.MEMORY_PERCENT, S.PROCESS_CPU, S.PROCESS_RSS_MB}
        assert 0 <= metrics[S.CPU] <= 100 and 0 < metrics[S.MEMORY_PERCENT] <= 100
        assert metrics[S.MEMORY_MB] > 0 and metrics[S.PROCESS_RSS_MB] > 10  # torch alone is more
    assert S.gpu_metric(0, "utilization_percentage") == "system/gpu_0_utilization_percentage"


def test_process_cpu_is_the_windows_mean_busy_or_idle():
    sampler = S.SystemSampler()
    cpu, wall = time.process_time(), time.monotonic()
    burn(0.6)
    busy = sampler.read()[S.PROCESS_CPU]
    share = 100 * (time.process_time() - cpu) / (time.monotonic() - wall)  # what the machine let us have
    time.sleep(0.6)
    idle = sampler.read()[S.PROCESS_CPU]

    assert busy == pytest.approx(share, abs=10), (busy, share)  # one core at most, less what others took
    assert idle < 20, idle


@needs_proc
def test_children_count_while_they_run_and_after_they_are_reaped():
    sampler = S.SystemSampler()
    child = subprocess.Popen([sys.executable, "-c", BURN.format(s=3)])
    try:
        time.sleep(1.5)
        running = sampler.read()[S.PROCESS_CPU]  # the child is alive: read from its own /proc entry
    finally:
        child.wait(timeout=30)
    reaped = sampler.read()[S.PROCESS_CPU]  # its time is now in our cutime, not lost and not counted twice

    assert running > 30, running
    assert 20 < reaped < 150, reaped


@needs_proc
def test_rss_follows_memory_the_process_tree_touches():
    """A child that writes 200 MB (a loader worker, say): in this process the allocator may instead reuse
    pages an earlier test left resident, and RSS would not move."""
    sampler = S.SystemSampler()
    before = sampler.read()[S.PROCESS_RSS_MB]
    code = "import numpy, time; b = numpy.ones(25_000_000); print('written', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "written"
        after = sampler.read()[S.PROCESS_RSS_MB]
    finally:
        child.kill()
        child.wait()

    assert after - before > 150, (before, after)


def test_without_proc_only_the_processs_own_cpu_is_read(tmp_path):
    sampler = S.SystemSampler("cpu", proc=tmp_path)
    cpu, wall = time.process_time(), time.monotonic()
    burn(0.4)

    metrics = sampler.read()
    share = 100 * (time.process_time() - cpu) / (time.monotonic() - wall)

    assert set(metrics) == {S.PROCESS_CPU}
    assert metrics[S.PROCESS_CPU] == pytest.approx(share, abs=10), (metrics, share)


@needs_proc
def test_a_read_is_cheap():
    sampler = S.SystemSampler()
    began = time.perf_counter()
    for _ in range(20):
        sampler.read()
    assert (time.perf_counter() - began) / 20 < 0.05
