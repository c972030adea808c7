"""Worker processes for decoding, building and scanning."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import torch


def _single_threaded() -> None:
    # A forked child that runs torch ops on the parent's OpenMP pool hangs; one thread per process is also
    # what makes N workers use N cores.
    torch.set_num_threads(1)


def process_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, initializer=_single_threaded)
