"""The trainer's Ray layer: what every Ray Train worker runs for one trial (through
`trial.train_loop_per_worker`). It reads the Train context (rank, world size, device) and the checkpoint Train
hands back, builds the rank with `trainer.build_worker`, and runs it with `report` as its `SendReport`.

`report` returns only once the Train controller has registered the report's round (every rank's report of
it, and so rank 0's checkpoint): a rank that dies right after a report loses nothing it reported
(docs/reliability.md).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from avmae.platform.study.spec import StudySpec, TrialConfig
from avmae.platform.train.ray_compat import train_context_logger
from avmae.platform.train.trainer import (
    CHECKPOINT_FILE,
    CheckpointState,
    Placement,
    Worker,
    build_worker,
    run,
)
from torch import nn
from torch.utils.data import DataLoader


def train(config: dict[str, Any]) -> None:
    """`config`: {"spec": the StudySpec, "trial": this trial's TrialConfig}."""
    run(setup(config["spec"], config["trial"]), report)


def setup(spec: StudySpec, trial: TrialConfig) -> Worker:
    """This worker's rank of the trial, restored from Train's latest checkpoint if it has one."""
    context = ray.train.get_context()
    where = placement(spec.resources.cpus_per_worker)
    return build_worker(spec, trial, context.get_world_rank(), context.get_world_size(), where,
                        checkpoint=restored(where.device))


def placement(cpus: float) -> Placement:
    """This Train worker's device and node, and Train's DDP wrapping of its model and loader; its torch
    threads set to its `cpus`, and Train's log of every report in full kept off the console."""
    logging.getLogger(train_context_logger()).setLevel(logging.WARNING)
    torch.set_num_threads(max(1, int(cpus)))
    return Placement(device=ray.train.torch.get_device(), node_id=ray.get_runtime_context().get_node_id(),
                     wrap_model=_prepare_model, wrap_loader=_prepare_loader)


def restored(device: torch.device) -> CheckpointState | None:
    """The checkpoint Train hands back to a restored trial (its latest), or None."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return CheckpointState.load(Path(folder) / CHECKPOINT_FILE, device)


def report(result: dict[str, Any], checkpoint: bytes | None, file_name: str = CHECKPOINT_FILE) -> None:
    """`ray.train.report` of `result`, with `checkpoint` (a `CheckpointState`'s bytes) as its checkpoint if
    given; returns once the controller has registered this round, every rank's report of it (with Train's
    public `get_all_reported_checkpoints`, COMMITTED: it waits for exactly that)."""
    if checkpoint is None:
        ray.train.report(result)
    else:
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / file_name).write_bytes(checkpoint)
            ray.train.report(result, checkpoint=ray.train.Checkpoint.from_directory(folder))
    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)


def _prepare_model(model: nn.Module, find_unused_parameters: bool) -> nn.Module:
    return ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": find_unused_parameters}
    )


def _prepare_loader(loader: DataLoader) -> DataLoader:
    """On a GPU, Ray's wrapper copies the next batch to the device on a side stream; elsewhere `loader`."""
    if ray.train.torch.get_device().type != "cuda":
        return loader
    return ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False, auto_transfer=True)
