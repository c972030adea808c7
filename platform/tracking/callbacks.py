"""Tune callbacks on the driver that mirror every trial into MLflow (layout: `tracking`).

The driver is the one process that sees every trial end: when ASHA stops a trial, Tune kills its process, so
nothing after `fit()` runs there. The workers never talk to MLflow; their reports carry what is logged, and
their checkpoints carry it too (`reports.BACKLOG`), for the epochs whose report a killed driver never saw.
The callback only queues writes (`queue`); a thread sends them. Tune pickles its callbacks with the
experiment and hands the copy back on `Tuner.restore`, so the state here is small, and runs are found again
by their MLflow tags.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avmae.platform.study.spec import StudySpec
from avmae.platform.tracking import entries as E
from avmae.platform.tracking import layout as T
from avmae.platform.tracking.queue import FLUSH_WAIT_S, MlflowQueue, open_queue, warn_left
from avmae.platform.tracking.uris import MASK, redact
from avmae.platform.train.reports import BACKLOG, CHECKPOINT_PATH, DIVERGED, HISTORY, EpochReport, better
from ray import tune

if TYPE_CHECKING:
    from ray.tune.experiment import Trial


def trial_status(result: dict[str, Any], epochs: int) -> T.TrialStatus:
    """What became of a trial that ended without an error, from its last result."""
    if result.get(DIVERGED):
        return T.TrialStatus.DIVERGED
    return T.TrialStatus.FINISHED if result.get(T.EPOCH, 0) >= epochs else T.TrialStatus.PRUNED



def error_reason(trial: Trial) -> str | None:
    """The last line of the exception that failed `trial`, unwrapped from Ray's task error. Tune writes the
    exception to the trial's local files before it calls the callbacks; its copy on the study's storage
    (`Trial.get_error`) is synced later, so it is read only where no local file exists."""
    error: BaseException | str | None = None
    pickled = Path(trial.pickled_error_file) if trial.pickled_error_file else None
    if pickled is not None and pickled.is_file():
        import ray.cloudpickle as cloudpickle

        error = cloudpickle.loads(pickled.read_bytes())
        while getattr(error, "cause", None) is not None:  # RayTaskError(cause=the trial's own exception)
            error = error.cause
    elif trial.error_file and Path(trial.error_file).is_file():
        error = Path(trial.error_file).read_text(errors="replace")
    else:
        error = trial.get_error()
    if error is None:
        return None
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("Failure #")]
    return lines[-1][:5000] if lines else None


class MlflowTrials(tune.Callback):
    """One nested MLflow run per trial under the study run: params, its data splits as dataset inputs, curves,
    probe scores, status. Every write goes through the study's durable queue (`queue`, shared with the study's
    driver in this process): Tune's loop never waits on MLflow."""

    def __init__(self, tracking_uri: str, study_run_id: str, spec: StudySpec, journal: str,
                 flush_wait_s: float = FLUSH_WAIT_S) -> None:
        """`journal`: the queue's folder on the study's storage; `flush_wait_s`: how long the end of the
        sweep waits for the queue to drain."""
        self.tracking_uri, self.study_run_id, self.spec = tracking_uri, study_run_id, spec
        self.journal, self.flush_wait_s = journal, flush_wait_s
        self._queue: MlflowQueue | None = None
        self._datasets: list[dict[str, Any]] | None = None  # the splits' datasets, measured once per process
        self._best: dict[str, tuple[float, str]] = {}  # trial id -> (best metric, its checkpoint)
        self._placed: set[str] = set()  # trials whose node is tagged since they (re)started

    def __getstate__(self) -> dict[str, Any]:
        """What Tune stores with the experiment: no queue, no datasets (the data may change before a resume),
        and no credentials from the tracking URI."""
        return {**self.__dict__, "_queue": None, "_datasets": None, "tracking_uri": redact(self.tracking_uri)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        own = os.environ.get("MLFLOW_TRACKING_URI", "")  # the sweep's, credentials included (study.py)
        if MASK in self.tracking_uri and self.tracking_uri == redact(own):
            self.tracking_uri = own

    @property
    def queue(self) -> MlflowQueue:
        if self._queue is None:
            self.setup()
        return self._queue

    def setup(self, **info: Any) -> None:
        """Start the queue with the experiment: it first sends what an earlier run of the sweep left queued
        (a `--resume` after the server was down at exit, or after the driver was killed); measure the
        datasets its trials log (`provenance.split_datasets`)."""
        if self._queue is None:
            self._queue = open_queue(self.journal, self.tracking_uri)
        if self._datasets is None:
            from avmae.platform.tracking.provenance import split_datasets

            self._datasets = split_datasets(self.spec)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        resolved = self.spec.resolve_trial(trial.config)
        self._placed.discard(trial.trial_id)  # a restored trial may run elsewhere: tagged again
        self.queue.put(E.TrialRun(self.study_run_id, trial.trial_id, resolved.cell,
                                  resolved.params(self.spec), resolved.repeat))
        for dataset in self._datasets:  # measured by `setup`, which `queue` ran
            self.queue.put(E.TrialDataset(self.study_run_id, trial.trial_id, **dataset))

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        report = EpochReport.from_result(result)
        # Consumed before Tune's own CSV/JSON loggers see them (user callbacks run first).
        result.pop(HISTORY, None)
        backlog = result.pop(BACKLOG, None) or []
        # A diverged epoch logs where it diverged, never its sentinel score: MLflow keeps the last finite
        # metrics, and the status tag says the trial diverged. A restored trial's first report brings the
        # epochs of its checkpoint: those this driver's predecessor never logged are logged now, once.
        self.queue.put(E.Epochs(self.study_run_id, trial.trial_id, [*backlog, report.record()]))
        if report.node_id and trial.trial_id not in self._placed:
            self.queue.put(E.Tags(self.study_run_id, trial.trial_id, {
                T.NODE_TAG: report.node_id, T.HOST_TAG: report.hostname, T.PID_TAG: str(report.pid)}))
            self._placed.add(trial.trial_id)
        if report.diverged:
            return
        score, path = result.get(self.spec.metric, math.nan), result.get(CHECKPOINT_PATH)
        best = self._best.get(trial.trial_id)
        if path and not math.isnan(score) and (best is None or not better(best[0], score, self.spec.metric)):
            self._best[trial.trial_id] = (score, path)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._end(trial, trial_status(trial.last_result, self.spec.train.epochs))

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        reason = error_reason(trial)
        self._end(trial, T.TrialStatus.FAILED, {T.ERROR_TAG: reason} if reason is not None else {})

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """The sweep ended (or was interrupted): let go of the queue. Its last holder (this callback, unless
        the study's driver holds it too and waits at the study's end) waits a while for MLflow to take what
        is queued, and says what is left."""
        left, self._queue = self.queue.close(self.flush_wait_s), None
        if left:
            warn_left(left, self.journal, self.tracking_uri, self.flush_wait_s)

    def _end(self, trial: Trial, status: T.TrialStatus, tags: dict[str, str] | None = None) -> None:
        checkpoint = self._best.get(trial.trial_id, (0, trial.last_result.get(CHECKPOINT_PATH)))[1]
        tags = {**(tags or {}), **({T.CHECKPOINT_TAG: checkpoint} if checkpoint else {})}
        self.queue.put(E.End(self.study_run_id, trial.trial_id, status, tags))
