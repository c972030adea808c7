"""Run a cache's shard jobs: in this process, in a local process pool, or as Ray tasks on every node of the
cluster this process is connected to (one task a shard, one CPU each; docs/benchmarks.md, Preparing on a
cluster, measures it against the pool). Each job returns how many clips it wrote; jobs finish in any order.

The node a shard was decoded on is recorded in its entries (`node`): Ray's node id in a Ray worker, else the
host name."""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import as_completed
from contextlib import contextmanager
from typing import Any

from .pool import process_pool

Job = tuple[Any, ...]


def node_id() -> str:
    """This process's Ray node id when it runs inside Ray, else the host name."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    return socket.gethostname()


def run_jobs(writer: Callable[..., Any], jobs: Sequence[Job], workers: int = 1,
             cluster: bool = False) -> Iterator[int]:
    """`writer(*job)` for every job; yields each finished job's clip count (`len(job[2])`). `cluster`: as Ray
    tasks on the cluster `ray.init` connected to (every node's CPUs), else `workers` local processes."""
    if cluster:
        yield from _on_ray(writer, jobs)
    elif workers <= 1:
        for job in jobs:
            writer(*job)
            yield len(job[2])
    else:
        with process_pool(workers) as pool:
            futures = {pool.submit(writer, *job): len(job[2]) for job in jobs}
            for future in as_completed(futures):
                future.result()
                yield futures[future]


def _on_ray(writer: Callable[..., Any], jobs: Sequence[Job]) -> Iterator[int]:
    import ray

    if not ray.is_initialized():
        raise RuntimeError("cluster preparation needs a Ray connection: ray.init(address=...) first")
    task = ray.remote(num_cpus=1, max_retries=2)(_run_one)
    pending = {task.remote(writer, job): len(job[2]) for job in jobs}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ray.get(done[0])  # a failed shard raises here, with its task's traceback
            yield pending.pop(done[0])
    finally:
        for ref in pending:  # interrupted: finished shards stay, the rest is resumed next time
            ray.cancel(ref)


def _run_one(writer: Callable[..., Any], job: Job) -> Any:
    return writer(*job)


@contextmanager
def ray_connection(address: str | None) -> Iterator[bool]:
    """Connected to the Ray cluster at `address` inside (True), disconnected after unless it was connected
    before; with no address nothing happens (False: prepare locally)."""
    if address is None:
        yield False
        return
    import ray

    if ray.is_initialized():
        yield True
        return
    ray.init(address=address, logging_level=logging.WARNING)
    try:
        yield True
    finally:
        ray.shutdown()
