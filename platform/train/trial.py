"""One trial: the Tune function trainable that launches a Ray Train `TorchTrainer` run.

Kept light on purpose. The Tune trial process imports this module to run `run_trial`, and the Train controller
and workers unpickle what it passes them: the study spec, parsed once here, and the trial's `TrialConfig`
(pydantic models and dataclasses, no torch). The training code (torch, timm, the data pipeline: seconds of
imports on 2 cores) is imported by the workers alone.

Train's reports reach Tune through the trial's own thread (`TuneReports`, `fit_reporting`), not through Ray's
`TuneReportCallback`: that one hands them to Tune's result thread, which races the trial function's return
(Tune's "function returned" marker can fill the one-slot result queue while the last report is in flight, and
the trial hangs for good; seen with several trials ending at once on a loaded machine). A trial that Tune
stops (ASHA, a stopper) ends its Train run at once, so the process can run the next trial (`reuse_actors`).
"""

from __future__ import annotations

import threading
from typing import Any

import ray.train
from avmae.platform.study.spec import ResourceSpec, StudySpec
from avmae.platform.train.ray_compat import TorchTrainer
from avmae.platform.train.reports import CHECKPOINT_PATH
from ray import tune
from ray.util.queue import Empty, Queue

POLL_S = 1.0  # how often the trial thread looks whether the Train run has ended while no report comes


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry point on each worker: `config` is {"spec": StudySpec, "trial": TrialConfig} (see
    ray_worker.train)."""
    from avmae.platform.train.ray_worker import train

    train(config)


class TuneReports(ray.train.UserCallback):
    """Runs in the Train controller: hands rank 0's metrics of each report, with the path of the checkpoint it
    carried, to the trial thread, and first the controller's own handle (to end the run if Tune stops the
    trial). The queue holds one item, so the workers are at most one epoch ahead of what Tune (ASHA) has
    seen, as with Ray's own callback."""

    def __init__(self) -> None:
        self.queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
        self.introduced = False  # per controller: this copy of the callback lives in it

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: ray.train.Checkpoint | None) -> None:
        if not self.introduced:
            self.queue.put(ray.get_runtime_context().current_actor)
            self.introduced = True
        result = dict(metrics[0])
        if checkpoint is not None:
            result[CHECKPOINT_PATH] = checkpoint.path  # already on storage: Tune gets the path, not a copy
        self.queue.put(result)


def fit_reporting(trainer: Any, reports: TuneReports) -> None:
    """`trainer.fit()` in a helper thread while this (the trial's) thread passes each report to `tune.report`:
    every report is handed over before the trial function returns, and an error of the run is raised here.

    When Tune stops the trial, `tune.report` raises `SystemExit` (Tune's own way to end a trial thread): the
    Train run is killed with its controller (its workers and placement group go with it) before the thread
    ends, so a reused process starts the next trial with the slot free."""
    errors: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # re-raised in the trial thread, where Tune records it
            errors.append(e)

    run = threading.Thread(target=fit, name="avmae-train-run", daemon=True)
    run.start()
    controller = None
    try:
        while True:
            try:
                item = reports.queue.get(timeout=POLL_S)
            except Empty:
                if not run.is_alive() and reports.queue.empty():  # every put happened before fit() returned
                    break
                continue
            if isinstance(item, dict):
                tune.report(item)
            else:
                controller = item
    except SystemExit:
        if controller is not None:
            ray.kill(controller)
        raise
    finally:
        reports.queue.shutdown(force=True)
    if errors:
        raise errors[0]


def run_trial(config: dict[str, Any], spec: dict[str, Any], storage: str) -> None:
    """Tune function trainable: one Train run per trial (Train V2 refuses a Trainer passed to a Tuner).

    `config`: the trial's Tune config (cell, sampled values, repeat index); `spec`: the StudySpec as a dict;
    `storage`: where Train keeps the trial's checkpoints.
    """
    study = StudySpec.model_validate(spec)
    reports = TuneReports()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": study, "trial": study.resolve_trial(config)},
        scaling_config=scaling(study.resources),
        run_config=run_config(study, storage, reports),
    )
    fit_reporting(trainer, reports)


def scaling(resources: ResourceSpec) -> ray.train.ScalingConfig:
    """One Train worker per DDP rank, each with its CPUs and (a share of) GPUs."""
    return ray.train.ScalingConfig(
        num_workers=resources.workers,
        use_gpu=resources.gpus_per_worker > 0,
        resources_per_worker={"CPU": resources.cpus_per_worker, "GPU": resources.gpus_per_worker},
    )


def run_config(spec: StudySpec, storage: str, reports: TuneReports) -> ray.train.RunConfig:
    """The trial's Train run: named by the trial (so a restored trial finds its checkpoints), keeping its two
    best checkpoints by the study metric, reporting to Tune through `reports`."""
    return ray.train.RunConfig(
        name=tune.get_context().get_trial_id(),
        storage_path=storage,
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=2, checkpoint_score_attribute=spec.metric, checkpoint_score_order=spec.mode,
        ),
        # A worker error fails the trial (Tune records it); a worker group that cannot start: 2 retries.
        failure_config=ray.train.FailureConfig(max_failures=0, controller_failure_limit=2),
        callbacks=[reports],
        logging_config=ray.train.LoggingConfig(log_level="WARNING"),
    )
