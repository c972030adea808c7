"""The fine-tuning worker's Ray layer: what every Ray Train worker of a fine-tuning run runs (through
`finetune_trial.finetune_loop_per_worker`). It reads the Train context and the checkpoint Train hands back,
builds the rank with `finetune_worker.build_finetuner` and runs it, reporting as pretraining does (each report
waits until the controller registered its round: `ray_worker.report`'s contract)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from avmae.platform.train.finetune_worker import FT_CHECKPOINT_FILE, build_finetuner, run_finetune
from avmae.platform.train.ray_worker import _prepare_loader, _prepare_model
from avmae.platform.train.trainer import Placement


def finetune(config: dict[str, Any]) -> None:
    """`config`: {"spec": the StudySpec, "job": this run's FinetuneJob}."""
    spec, context = config["spec"], ray.train.get_context()
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
    placement = Placement(device=ray.train.torch.get_device(),
                          node_id=ray.get_runtime_context().get_node_id(), wrap_model=_prepare_model,
                          wrap_loader=_prepare_loader)
    worker = build_finetuner(spec, config["job"], context.get_world_rank(), context.get_world_size(),
                             placement, checkpoint=restored())
    run_finetune(worker, report)


def restored() -> bytes | None:
    """The state Train hands back to a restored run (its latest checkpoint), or None."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return (Path(folder) / FT_CHECKPOINT_FILE).read_bytes()


def report(result: dict[str, Any], checkpoint: bytes | None) -> None:
    """`ray.train.report` of `result` with `checkpoint` (a `Finetuner.state`) if given; returns once the
    controller registered this round."""
    if checkpoint is None:
        ray.train.report(result)
    else:
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / FT_CHECKPOINT_FILE).write_bytes(checkpoint)
            ray.train.report(result, checkpoint=ray.train.Checkpoint.from_directory(folder))
    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
