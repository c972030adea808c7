"""One trial: the Tune function trainable that launches a Ray Train `TorchTrainer` run.

Kept light on purpose. The Tune trial process imports this module to run `run_trial`, and the Train controller
and workers unpickle what it passes them; so the study spec travels as a plain dict and the training code
(torch, timm, the data pipeline: seconds of imports on 2 cores) is imported by the workers alone.
"""

from __future__ import annotations

from typing import Any

import ray.train
from avmae.platform.ray_compat import TorchTrainer
from avmae.platform.reports import metric_mode
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry point on each worker (see trainer.train)."""
    from avmae.platform.trainer import train

    train(config)


def run_trial(config: dict[str, Any], spec: dict[str, Any], storage: str) -> None:
    """Tune function trainable: one Train run per trial (Train V2 refuses a Trainer passed to a Tuner).

    `config`: the trial's Tune config (cell, sampled values, repeat index); `spec`: the StudySpec as a dict;
    `storage`: where Train keeps the trial's checkpoints.
    """
    res = spec["resources"]
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec, "params": config},
        scaling_config=ray.train.ScalingConfig(
            num_workers=res["workers"],
            use_gpu=res["gpus_per_worker"] > 0,
            resources_per_worker={"CPU": res["cpus_per_worker"], "GPU": res["gpus_per_worker"]},
        ),
        run_config=ray.train.RunConfig(
            name=tune.get_context().get_trial_id(),  # deterministic, so a restored trial finds its checkpoint
            storage_path=storage,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=spec["metric"],
                checkpoint_score_order=metric_mode(spec["metric"]),
            ),
            # A worker error fails the trial (Tune records it); a worker group that cannot start: 2 retries.
            failure_config=ray.train.FailureConfig(max_failures=0, controller_failure_limit=2),
            callbacks=[TuneReportCallback()],
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    trainer.fit()
