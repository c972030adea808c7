"""Worker processes for decoding, building and scanning."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import torch


def _single_threaded() -> None:
    # One thread per process is what makes N workers use N cores.
    torch.set_num_threads(1)


def process_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` processes started by a fork server, not forked from this process: a process that has run
    threads (PyAV's and FFmpeg's decoders, torch's OpenMP pool) can hand a forked child a lock another
    thread held, and the child hangs in its first encode or op."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"),
                               initializer=_single_threaded)
