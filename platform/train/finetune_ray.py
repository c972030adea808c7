"""The fine-tuning worker's Ray layer: what every Ray Train worker of a fine-tuning run runs (through
`finetune_trial.finetune_loop_per_worker`). It reads the Train context and the checkpoint Train hands back,
builds the rank with `finetune_worker.build_finetuner` and runs it, reporting as pretraining does (each report
waits until the controller registered its round: `ray_worker.report`'s contract)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray.train
from avmae.platform.train import ray_worker
from avmae.platform.train.finetune_worker import FT_CHECKPOINT_FILE, build_finetuner, run_finetune


def finetune(config: dict[str, Any]) -> None:
    """`config`: {"spec": the StudySpec, "job": this run's FinetuneJob}."""
    spec, context = config["spec"], ray.train.get_context()
    worker = build_finetuner(spec, config["job"], context.get_world_rank(), context.get_world_size(),
                             ray_worker.placement(spec.resources.cpus_per_worker), checkpoint=restored())
    run_finetune(worker, report)


def restored() -> bytes | None:
    """The state Train hands back to a restored run (its latest checkpoint), or None."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return (Path(folder) / FT_CHECKPOINT_FILE).read_bytes()


def report(result: dict[str, Any], checkpoint: bytes | None) -> None:
    """`ray_worker.report`, with a `Finetuner.state` as the checkpoint's file."""
    ray_worker.report(result, checkpoint, FT_CHECKPOINT_FILE)
