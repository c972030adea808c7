"""The fine-tuning stage of a study (its `finetune:` section): after pretraining, or later from
`avmae finetune STUDY`, one Tune experiment of fine-tuning runs. For every cell, every seed of its best
configuration (what `dashboards.summary.cell_summary` calls best: the dashboards and this stage agree) x
setting x LR of the grid, plus the from-scratch row (the same classifier from random init over the first
cell's architecture, same recipe and seeds); each a Tune trial of a Ray Train run (`train.finetune_trial`),
mirrored into MLflow as a child run of the study run with role `finetune` (`FinetuneTrials`).

Resume: the experiment lives at `<storage>/finetune/tune`, its Train runs at `<storage>/finetune/trials/<trial
id>`; its jobs are fixed when it first starts (Tune keeps them), so `Tuner.restore` resumes the runs not yet
finished from their latest checkpoints, and their MLflow runs are found again by their tags.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from avmae.platform.study.record import Launch
from avmae.platform.study.spec import StudySpec
from avmae.platform.tracking import entries as E
from avmae.platform.tracking import layout as T
from avmae.platform.tracking.callbacks import MlflowTrials, trial_status
from avmae.platform.tracking.queue import FLUSH_WAIT_S, JOURNAL_DIR, MlflowQueue, open_queue
from avmae.platform.train.finetune_trial import JOB_KEY, run_finetune_trial
from avmae.platform.train.finetune_worker import FinetuneJob
from avmae.platform.train.ray_compat import interrupted_fit
from avmae.platform.train.reports import BACKLOG
from ray import tune

FINETUNE_DIR = "finetune"  # in the study folder: the stage's Tune experiment (tune/) and Train runs (trials/)
TRIAL_DRIVER_RESOURCES = {"cpu": 0, "memory": 128 * 1024**2}  # as pretraining's: the workers reserve cores


class FinetunePlanError(RuntimeError):
    """Nothing to fine-tune yet: no cell has a finished configuration with checkpoints in MLflow."""


def best_trials(client: Any, study: str) -> dict[str, list[tuple[int, int, str, str]]]:
    """Per cell, its best configuration's finished repeats as (repeat k, seed, trial id, checkpoint folder),
    read from MLflow (the trial runs' `REPEAT_TAG`, seed param and `CHECKPOINT_TAG`)."""
    from avmae.dashboards.collect import collect_study
    from avmae.dashboards.summary import cell_summary

    data = collect_study(client, study)
    runs = data.trials.set_index("trial_id")["run_id"]
    best: dict[str, list[tuple[int, int, str, str]]] = {}
    for _, row in cell_summary(data).iterrows():
        for trial in str(row["best_trial"] or "").split(", "):
            if not trial:
                continue
            run = client.get_run(runs[trial])
            checkpoint = run.data.tags.get(T.CHECKPOINT_TAG)
            if checkpoint:
                seed = int(run.data.params.get(T.SEED_PARAM, 0))
                best.setdefault(row["cell"], []).append(
                    (int(run.data.tags.get(T.REPEAT_TAG, 0)), seed, trial, checkpoint))
    return best


def plan_jobs(spec: StudySpec, best: dict[str, list[tuple[int, int, str, str]]],
              run_ids: dict[str, str] | None = None) -> list[FinetuneJob]:
    """Every fine-tuning run: each cell's best repeats x setting x LR, then the scratch row (each repeat's
    seed any cell has) x setting x LR. `run_ids`: the pretraining trials' MLflow runs, for the link."""
    ft, run_ids = spec.finetune, run_ids or {}
    jobs = [FinetuneJob(cell, setting, k, seed, lr, {}, checkpoint, trial, run_ids.get(trial))
            for cell, repeats in best.items() for k, seed, trial, checkpoint in sorted(repeats)
            for setting in ft.settings for lr in ft.grid()]
    if ft.scratch:
        seeds = sorted({(k, seed) for repeats in best.values() for k, seed, _, _ in repeats})
        model = spec.resolve_model(spec.cells()[0]).to_dict()
        jobs += [FinetuneJob(T.SCRATCH_CELL, setting, k, seed, lr, model)
                 for k, seed in seeds for setting in ft.settings for lr in ft.grid()]
    return jobs


class FinetuneTrials(MlflowTrials):
    """One MLflow run per fine-tuning run, nested under the study run (role `finetune`), tagged with its cell,
    setting, seed, LR and the pretraining trial it started from; its epochs through the study's queue."""

    def setup(self, **info: Any) -> None:
        if self._queue is None:
            self._queue = open_queue(self.journal, self.tracking_uri)
        self._datasets = []

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        job = FinetuneJob(**trial.config[JOB_KEY])
        recipe = self.spec.finetune.resolve(job.setting, job.lr)
        tags = {T.CELL_TAG: job.cell, T.SETTING_TAG: job.setting, T.FINETUNE_LR_TAG: f"{job.lr:g}",
                **({T.PRETRAINED_TRIAL_TAG: job.pretrained_trial} if job.pretrained_trial else {}),
                **({T.PRETRAINED_RUN_TAG: job.pretrained_run} if job.pretrained_run else {})}
        params = {**recipe.to_dict(), T.SEED_PARAM: job.seed,
                  "init": "scratch" if job.scratch else "pretrained"}
        self.queue.put(E.TrialRun(self.study_run_id, trial.trial_id, {job.setting: job.cell}, params,
                                  job.repeat, role=T.FINETUNE_ROLE, tags=tags))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        records = result.pop(BACKLOG, None) or []
        if records:
            self.queue.put(E.Epochs(self.study_run_id, trial.trial_id, records))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        job = FinetuneJob(**trial.config[JOB_KEY])
        epochs = self.spec.finetune.resolve(job.setting, job.lr).epochs
        self._end(trial, trial_status(trial.last_result, epochs))


class FinetuneProgress(tune.Callback):
    """A console line per ended fine-tuning run: how many of `total` ended, what it was, its last score."""

    def __init__(self, total: int | None) -> None:
        self.total, self.ended = total, 0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tell(trial, "finished")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tell(trial, "failed")

    def tell(self, trial: Any, how: str) -> None:
        self.ended += 1
        job = FinetuneJob(**trial.config[JOB_KEY])
        result = trial.last_result or {}
        score = " ".join(f"{k} {result[k]:.3f}" for k in (T.FT_TEST_ACC, T.FT_TEST_MAP) if k in result)
        print(f"[{time.strftime('%H:%M:%S')}] fine-tuning {self.ended}/{self.total or '?'} ended: {job.cell} "
              f"{job.setting} seed {job.seed} lr {job.lr:g}: {how} {score}".rstrip(), flush=True)


def finetune_tuner(spec: StudySpec, launch: Launch, jobs: list[FinetuneJob] | None,
                   callbacks: list[tune.Callback]) -> tune.Tuner:
    """The stage's Tuner: restored from storage when it exists (its jobs are its own), else a new one."""
    folder = f"{launch.storage}/{FINETUNE_DIR}"
    trainable = tune.with_resources(tune.with_parameters(
        run_finetune_trial, spec=spec.model_dump(mode="json"), storage=f"{folder}/trials"),
        TRIAL_DRIVER_RESOURCES)
    if tune.Tuner.can_restore(f"{folder}/tune"):
        return tune.Tuner.restore(f"{folder}/tune", trainable, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space={JOB_KEY: tune.grid_search([job.to_dict() for job in jobs or []])},
        tune_config=tune.TuneConfig(max_concurrent_trials=spec.resources.max_concurrent_trials,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name="tune", storage_path=folder, callbacks=callbacks, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )


def run_finetune_stage(spec: StudySpec, launch: Launch, queue: MlflowQueue, study_run: str) -> bool:
    """Fine-tune every job (or go on with the stage's unfinished ones); False when a signal stopped it.
    Raises `FinetunePlanError` when a fresh stage finds nothing to fine-tune."""
    from mlflow.tracking import MlflowClient

    jobs = None
    if not tune.Tuner.can_restore(f"{launch.storage}/{FINETUNE_DIR}/tune"):
        queue.wait(FLUSH_WAIT_S)  # the pretraining trials' runs and checkpoint tags are in MLflow
        client = MlflowClient(launch.tracking_uri)
        best = best_trials(client, launch.name)
        if not best:
            raise FinetunePlanError(f"study {launch.name!r} has no finished configuration with checkpoints "
                                    "to fine-tune")
        runs = {r.data.tags[T.TRIAL_TAG]: r.info.run_id for r in client.search_runs(
            [client.get_run(study_run).info.experiment_id],
            f"tags.`{T.PARENT_TAG}` = '{study_run}' and tags.`{T.ROLE_TAG}` = 'trial'")}
        jobs = plan_jobs(spec, best, runs)
        print(f"Fine-tuning: {len(jobs)} runs ({len(best)} cells"
              + (" and the from-scratch row" if spec.finetune.scratch else "") + ")", flush=True)
    sigint = signal.getsignal(signal.SIGINT)
    trials = FinetuneTrials(launch.tracking_uri, study_run, spec, f"{launch.storage}/{JOURNAL_DIR}")
    finetune_tuner(spec, launch, jobs, [trials, FinetuneProgress(len(jobs) if jobs else None)]).fit()
    return not interrupted_fit(sigint)


def finetune_study(spec: StudySpec, launch: Launch) -> bool:
    """The stage alone, on a study whose pretraining ended (`avmae finetune STUDY`): its study run reopened
    while it runs, its writes through the study's queue; False when a signal stopped it (run it again to go
    on)."""
    from avmae.platform.study.runtime import ray_runtime, signals_as_ctrl_c
    from avmae.platform.tracking.heartbeat import Heartbeat
    from avmae.platform.tracking.queue import held_queue
    from mlflow.tracking import MlflowClient

    client = MlflowClient(launch.tracking_uri)
    with ray_runtime(launch.address), signals_as_ctrl_c():
        study_run = T.start_study_run(client, launch.name, spec.model_dump(mode="json"))
        with Heartbeat(launch.tracking_uri, study_run), \
                held_queue(f"{launch.storage}/{JOURNAL_DIR}", launch.tracking_uri) as queue:
            try:
                done = run_finetune_stage(spec, launch, queue, study_run)
            except BaseException:
                queue.put(E.EndStudy(study_run, "FAILED"))
                raise
            if not done:
                queue.put(E.InterruptTrials(study_run))
            queue.put(E.EndStudy(study_run, "FINISHED" if done else "KILLED"))
    return done


def recorded_study(storage: str) -> StudySpec:
    """The spec a study at `storage` recorded when it started (`record.STUDY_FILE`)."""
    import json

    import pyarrow.fs
    from avmae.platform.study.record import STUDY_FILE, recorded_spec

    fs, folder = pyarrow.fs.FileSystem.from_uri(storage)
    with fs.open_input_stream(f"{folder}/{STUDY_FILE}") as f:
        return StudySpec.model_validate(recorded_spec(json.loads(f.read())["spec"]))
