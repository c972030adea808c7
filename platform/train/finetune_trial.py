"""One fine-tuning run as a Tune trial: the function trainable that launches its Ray Train `TorchTrainer` run,
with the study's resources (DDP workers), reporting to Tune through the trial's own thread as pretraining's
trials do (`trial.TuneReports`, `trial.fit_reporting`). The Train run is named after the Tune trial, so a
restored experiment resumes each run from its latest checkpoint."""

from __future__ import annotations

from typing import Any

import ray.train
from avmae.platform.study.spec import StudySpec
from avmae.platform.train.finetune_worker import FinetuneJob
from avmae.platform.train.ray_compat import TorchTrainer
from avmae.platform.train.trial import TuneReports, fit_reporting, scaling
from ray import tune

JOB_KEY = "job"  # the Tune config's key holding the run's FinetuneJob as a dict


def finetune_loop_per_worker(config: dict[str, Any]) -> None:
    from avmae.platform.train.finetune_ray import finetune

    finetune(config)


def run_finetune_trial(config: dict[str, Any], spec: dict[str, Any], storage: str) -> None:
    """Tune function trainable: `config[JOB_KEY]` is the run's `FinetuneJob.to_dict()`; `spec` the StudySpec
    as a dict; `storage` where Train keeps the runs' checkpoints."""
    study = StudySpec.model_validate(spec)
    reports = TuneReports()
    trainer = TorchTrainer(
        finetune_loop_per_worker,
        train_loop_config={"spec": study, "job": FinetuneJob(**config[JOB_KEY])},
        scaling_config=scaling(study.resources),
        run_config=ray.train.RunConfig(
            name=tune.get_context().get_trial_id(),
            storage_path=storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),  # the latest: where it resumes
            failure_config=ray.train.FailureConfig(max_failures=0, controller_failure_limit=2),
            callbacks=[reports],
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    fit_reporting(trainer, reports)
