"""Runs a study: every cell's trials in one Ray Tune experiment (`cells.StudySearch` deals them, an ASHA per
cell stops poor ones), each trial a Ray Train `TorchTrainer` run (`train.trial`), mirrored into MLflow by
`tracking.callbacks`.

Resume: the Tune experiment lives at `<storage>/tune` and each trial's Train run at
`<storage>/trials/<trial id>`, both deterministic, so `Tuner.restore` resumes unfinished trials from their
latest checkpoint, and the MLflow runs are found again by their tags."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path
from typing import Any

from avmae.platform.data.indexes import IndexFormatError
from avmae.platform.data.scan import TooManyBrokenError
from avmae.platform.study.cells import (
    BudgetStopper,
    StudySearch,
    cell_of,
    read_budget,
    spent,
    study_scheduler,
)
from avmae.platform.study.finetune_stage import run_finetune_stage
from avmae.platform.study.prepare import prepare_data
from avmae.platform.study.progress import CellSummary, StudyProgress
from avmae.platform.study.record import (
    STUDY_FILE,
    TUNE_DIR,
    Launch,
    StudyExistsError,
    archive_study,
    per_cell_experiments,
    study_record,
)
from avmae.platform.study.resources import ResourceError, check_fits, local_nodes, ray_nodes
from avmae.platform.study.runtime import ray_runtime, signals_as_ctrl_c
from avmae.platform.study.spec import StudySpec
from avmae.platform.study.steps import log_baselines, log_encoders, record_provenance, start_baselines
from avmae.platform.tracking import entries as E
from avmae.platform.tracking import layout as T
from avmae.platform.tracking.callbacks import MlflowTrials
from avmae.platform.tracking.heartbeat import Heartbeat
from avmae.platform.tracking.queue import JOURNAL_DIR, MlflowQueue, held_queue
from avmae.platform.tracking.uris import redact
from avmae.platform.train.ray_compat import interrupted_fit, reopen_search
from avmae.platform.train.trial import run_trial
from ray import tune

# The trial's function only waits on its Train run: it reserves a little memory, the workers reserve cores.
TRIAL_DRIVER_RESOURCES = {"cpu": 0, "memory": 128 * 1024**2}


class StudyDataError(RuntimeError):
    """The study's data cannot be used as it is (an index, missing media, too many broken clips)."""


class StudyInterrupted(RuntimeError):
    """The sweep was stopped (Ctrl-C, SIGTERM, SIGHUP) before every trial ended; `--resume` continues it."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum  # the signal that stopped it: the exit code says which (128 + signum)


def cell_seed(seed: int, cell: dict[str, Any]) -> int:
    """The cell's sampler seed: derived from the study seed and the cell's key, the same in every run and on
    resume (a hash of the text, not Python's per-process `hash()`), and different from cell to cell, so that
    the cells do not all sample the same points (the LR-stability view compares cells across LRs)."""
    digest = hashlib.sha256(f"{seed}/{T.cell_key(cell)}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def study_search(spec: StudySpec, record: str | None = None) -> StudySearch:
    """Every cell's search in one searcher: each cell's sampler seeded by `cell_seed`."""
    seeds = {T.cell_key(cell): cell_seed(spec.train.seed, cell) for cell in spec.cells()}
    return StudySearch(spec, seeds, record)


def tune_config(spec: StudySpec, search: StudySearch) -> tune.TuneConfig:
    """One experiment for the whole study: the cells' searches dealt round-robin, ASHA per cell (or FIFO),
    at most `max_concurrent_trials` trials of any cells at once."""
    return tune.TuneConfig(
        metric=spec.metric,
        mode=spec.mode,
        search_alg=search,
        scheduler=study_scheduler(spec),
        num_samples=len(spec.cells()) * spec.trials_in_cell,
        max_concurrent_trials=spec.resources.max_concurrent_trials,
        # A trial's process runs the next one (no new process, no re-imports: seconds per trial in which a
        # freed slot would wait). A trial ASHA stops ends its Train run first (trial.fit_reporting).
        reuse_actors=True,
    )


def warn_if_unplaceable(spec: StudySpec) -> None:
    """On a cluster the autoscaler may still add nodes: say so when today's nodes cannot hold a trial."""
    try:
        check_fits(spec, ray_nodes(), "the cluster")
    except ResourceError as err:
        print(f"warning: {err}. Trials wait for the autoscaler and fail after Train's worker-group timeout "
              "if no such node comes.", flush=True)


def study_tuner(spec: StudySpec, launch: Launch, callbacks: list[tune.Callback]) -> tune.Tuner:
    """A new Tuner for the whole study, or, with `resume`, the study's Tuner restored from storage."""
    spec_dict, trials = spec.model_dump(mode="json"), f"{launch.storage}/trials"
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=spec_dict, storage=trials), TRIAL_DRIVER_RESOURCES
    )
    path = f"{launch.storage}/{TUNE_DIR}"
    if launch.resume and not tune.Tuner.can_restore(path) and per_cell_experiments(launch.storage):
        raise StudyExistsError(
            f"{launch.storage} holds a study started by an avmae that ran one Tune experiment per cell: "
            "finish it with that version, or start it afresh with --restart (its runs are archived)")
    if launch.resume and tune.Tuner.can_restore(path):
        # A study its budget stopped goes on with the budget it has now, one given more seeds runs them.
        reopen_search(path, total_trials=len(spec.cells()) * spec.trials_in_cell)
        return tune.Tuner.restore(path, trainable, resume_errored=True)
    search = study_search(spec, f"{launch.storage}/{STUDY_FILE}")
    return tune.Tuner(
        trainable,
        tune_config=tune_config(spec, search),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=launch.storage,
            callbacks=callbacks,
            stop=BudgetStopper(search.record),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


def run_study(
    spec: StudySpec,
    spec_path: Path | None,
    launch: Launch,
    speech: str | Path | None = None,
    callbacks: tuple[tune.Callback, ...] = (),
) -> list[CellSummary]:
    """Run (or resume) every cell; returns each cell's summary. `spec` must have absolute data paths;
    `callbacks` are added to the Tuner (bench/trial_overhead.py times trials with one)."""
    from mlflow.tracking import MlflowClient

    if launch.address is None:  # refused in seconds, before anything is recorded
        check_fits(spec, local_nodes(), "this machine")
    # The driver's callbacks find the URI here after a restore: what Tune pickles of them is redacted.
    os.environ["MLFLOW_TRACKING_URI"] = launch.tracking_uri
    client = MlflowClient(launch.tracking_uri)
    open_study(spec, launch, client, speech)
    # The signals are taken over once Ray is up: the driver's Ray core installs its own SIGTERM handler.
    with ray_runtime(launch.address), signals_as_ctrl_c() as received:
        if launch.address is not None:
            warn_if_unplaceable(spec)
        study_run = T.start_study_run(client, launch.name, spec.model_dump(mode="json"), spec_path)
        # Every later write of the study goes through its durable queue; the driver beats while it runs.
        journal = f"{launch.storage}/{JOURNAL_DIR}"
        with Heartbeat(launch.tracking_uri, study_run), held_queue(journal, launch.tracking_uri) as queue:
            record_provenance(client, queue, study_run, spec, launch.resume)
            baselines = start_baselines(spec, client, study_run)
            try:
                summaries = run_trials(spec, launch, queue, study_run, callbacks)
                if spec.finetune is not None and not run_finetune_stage(spec, launch, queue, study_run):
                    raise StudyInterrupted("")
            except (StudyInterrupted, KeyboardInterrupt):
                queue.put(E.InterruptTrials(study_run))
                queue.put(E.EndStudy(study_run, "KILLED"))
                raise StudyInterrupted(signum=received[0] if received else signal.SIGINT) from None
            except BaseException:
                queue.put(E.EndStudy(study_run, "FAILED"))
                raise
            log_baselines(queue, study_run, baselines)
            log_encoders(client, queue, study_run, spec, launch.name)
            queue.put(E.EndStudy(study_run, "FINISHED"))
    return summaries


def open_study(spec: StudySpec, launch: Launch, client: Any, speech: str | Path | None) -> None:
    """Before Ray starts: archive what `--restart` replaces, refuse a fresh study whose name is taken, check a
    resumed one against its record, get the data ready, then record the study."""
    if launch.restart:
        for line in archive_study(launch, client):
            print(f"Archived {line}", flush=True)
    if not launch.resume and client.get_experiment_by_name(launch.name) is not None:
        raise StudyExistsError(
            f"MLflow at {redact(launch.tracking_uri)} already has a study {launch.name!r}: pass --resume to "
            "continue it, --restart to archive it and start afresh, or --name to start another"
        )
    study_record(launch, spec, write=False)
    try:
        prepare_data(spec, speech, launch.address)  # on the cluster's CPUs, if any
    except (IndexFormatError, TooManyBrokenError, FileNotFoundError) as err:
        raise StudyDataError(str(err)) from err
    study_record(launch, spec)


def run_trials(spec: StudySpec, launch: Launch, queue: MlflowQueue, study_run: str,
               callbacks: tuple[tune.Callback, ...]) -> list[CellSummary]:
    """Every trial of the study in one `Tuner.fit()`; each cell's summary. Raises `StudyInterrupted` when a
    signal stopped the fit (Tune saved the study's state and returned)."""
    sigint = signal.getsignal(signal.SIGINT)
    keys = [T.cell_key(cell) for cell in spec.cells()]
    trials = MlflowTrials(launch.tracking_uri, study_run, spec, f"{launch.storage}/{JOURNAL_DIR}")
    progress = StudyProgress(keys, spec.trials_in_cell, spec.metric, spec.train.epochs, list(spec.axes))
    grid = study_tuner(spec, launch, [trials, progress, *callbacks]).fit()
    if interrupted_fit(sigint):
        raise StudyInterrupted("")
    results = list(grid)
    summaries = [CellSummary.from_results(key, [r for r in results if cell_of(spec, r.config) == key],
                                          spec.metric, spec.train.epochs, list(spec.search))
                 for key in keys]
    stopped = spent(read_budget(f"{launch.storage}/{STUDY_FILE}", spec), spec.resources,
                    sum(r.metrics.get("time_total_s", 0.0) for r in results if r.metrics) / 3600)
    if stopped and sum(sum(s.counts.values()) for s in summaries) < len(keys) * spec.trials_in_cell:
        print(f"Stopped early: {stopped}. --resume with a larger budget continues.", flush=True)
        queue.put(E.StudyTags(study_run, {T.STOPPED_TAG: stopped}))
    return summaries
