"""The study-level steps around its trials, each on the study's MLflow run: provenance before them, the
reference probe rows beside them, the trained encoders after them. A failed step is told and tagged; the
trials' results stand without it. Their writes go through the study's durable queue (`tracking.queue`), but
for what must reach MLflow at once: the provenance artifacts and the encoders (`tracking.model_export`)."""

from __future__ import annotations

from typing import Any

import ray
from avmae.platform.study.spec import StudySpec
from avmae.platform.tracking import entries as E
from avmae.platform.tracking import layout as T
from avmae.platform.tracking.queue import FLUSH_WAIT_S, MlflowQueue


def start_baselines(spec: StudySpec, client: Any, study_run: str) -> ray.ObjectRef | None:
    """The reference probe rows (random-init encoder per repeat seed, raw input), measured as a Ray task with
    one trial worker's resources while the trials run; None when off, or already logged (a resumed study)."""
    ev = spec.evaluation
    if not (ev.probe and ev.baselines):
        return None
    logged = client.get_run(study_run).data.metrics
    if any(name.startswith(T.BASELINE_PREFIX) for name in logged):
        return None
    seeds = [spec.train.seed + k for k in range(spec.repeats)]
    res = spec.resources
    task = ray.remote(_baseline_scores).options(num_cpus=res.cpus_per_worker,
                                                num_gpus=min(res.gpus_per_worker, 1))
    return task.remote(spec.model_dump(mode="json"), seeds)


def _baseline_scores(spec: dict[str, Any], seeds: list[int]) -> dict[str, dict[int, dict[str, float]]]:
    from avmae.platform.evaluation.probe import (
        baseline_scores,  # torch and the data pipeline: in the task alone
    )

    return baseline_scores(StudySpec.model_validate(spec), seeds)


def log_baselines(queue: MlflowQueue, study_run: str, pending: ray.ObjectRef | None) -> None:
    """Wait for the reference rows and queue them for the study run: `baseline/<kind>/probe/...`, step k. A
    failure is told and tagged, never the end of a study whose trials are all done."""
    if pending is None:
        return
    try:
        rows = ray.get(pending)
    except Exception as err:  # noqa: BLE001 (any error of the task: the trials' results stand)
        tell_failure(queue, study_run, "baselines", "the reference probe rows failed", err)
        return
    for kind, per_seed in rows.items():
        for k, scores in per_seed.items():
            metrics = {T.baseline_metric(kind, name): value for name, value in scores.items()}
            queue.put(E.StudyMetrics(study_run, metrics, step=k))


def record_provenance(client: Any, queue: MlflowQueue, study_run: str, spec: StudySpec, resume: bool) -> None:
    """Packages, runtime, code and data of this run on the study run (its artifacts at once, its params
    queued); a resumed study warns of what changed since it started (a new index file, other code, another
    torch)."""
    from avmae.platform.tracking import model_export, provenance

    with model_export.quiet_mlflow():  # reading the first record back shows MLflow's download bars
        now = provenance.record(client, study_run, spec,
                                log_params=lambda params: queue.put(E.StudyParams(study_run, params)))
        changes = provenance.changes_since(client, study_run, spec, now) if resume else []
    for line in changes:
        print(f"warning: {line}", flush=True)


def log_encoders(client: Any, queue: MlflowQueue, study_run: str, spec: StudySpec, study: str) -> None:
    """The trained encoders `evaluation.log_models` keeps, as MLflow models; the study's winner registered
    under the study's name. A failure is told and tagged: the study's results stand without it. The trials'
    records are read from MLflow, so they must have left the queue."""
    from avmae.platform.tracking import model_export

    policy = spec.evaluation.log_models
    if policy != "none" and (left := queue.wait(FLUSH_WAIT_S)):
        tell_failure(queue, study_run, "log_models", "the trained encoders were not logged to MLflow",
                     RuntimeError(f"MLflow has not taken {left} queued writes of the trials, which choose "
                                  "them; --resume logs them once it has"))
        return
    try:
        with model_export.quiet_mlflow():
            model_export.log_study_models(client, study_run, spec.metric, policy)
            if policy != "none":
                model_export.register_winner(client, study_run, spec.metric, study)
    except Exception as err:  # noqa: BLE001 (any failure to log models: the trials' results stand)
        tell_failure(queue, study_run, "log_models", "the trained encoders were not logged to MLflow", err)


def tell_failure(queue: MlflowQueue, study_run: str, step: str, what: str, err: BaseException) -> None:
    """A step after the trials failed: say so, and tag the study run (`avmae.error`) with its last line."""
    text = str(err).strip()
    reason = text.splitlines()[-1][:500] if text else type(err).__name__
    print(f"warning: {what}: {reason}", flush=True)
    queue.put(E.StudyTags(study_run, {T.ERROR_TAG: f"{step}: {reason}"}))
