"""Tune callbacks on the driver that mirror every trial into MLflow (layout: `tracking`).

The driver is the one process that sees every trial end: when ASHA stops a trial, Tune kills its process, so
nothing after `fit()` runs there. The workers never talk to MLflow; their reports carry what is logged.
Tune pickles its callbacks with the experiment and hands the copy back on `Tuner.restore`, so the state
here is small and rebuilt from MLflow tags where needed.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avmae.platform import tracking as T
from avmae.platform.reports import CHECKPOINT_PATH, DIVERGED, HISTORY, EpochReport, better
from avmae.platform.spec import StudySpec
from avmae.platform.uris import MASK, redact
from ray import tune

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient
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
    """One nested MLflow run per trial under the study run: params, curves, probe scores, status."""

    def __init__(self, tracking_uri: str, study_run_id: str, spec: StudySpec) -> None:
        self.tracking_uri, self.study_run_id, self.spec = tracking_uri, study_run_id, spec
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}  # trial id -> MLflow run id
        self._best: dict[str, tuple[float, str]] = {}  # trial id -> (best metric, its checkpoint)
        self._placed: set[str] = set()  # trials whose node is tagged

    def __getstate__(self) -> dict[str, Any]:
        """What Tune stores with the experiment: no client, and no credentials from the tracking URI."""
        return {**self.__dict__, "_client": None, "tracking_uri": redact(self.tracking_uri)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        own = os.environ.get("MLFLOW_TRACKING_URI", "")  # the sweep's, credentials included (study.py)
        if MASK in self.tracking_uri and self.tracking_uri == redact(own):
            self.tracking_uri = own

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def run_id(self, trial: Trial) -> str:
        """The trial's run: created on its first start, found again by its tags after a restore."""
        if trial.trial_id not in self._runs:
            resolved = self.spec.resolve_trial(trial.config)
            self._runs[trial.trial_id] = T.start_trial_run(
                self.client, self.study_run_id, trial.trial_id, resolved.cell, resolved.params(self.spec),
                repeat=resolved.repeat,
            )
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        run_id = self.run_id(trial)
        self.client.update_run(run_id, status="RUNNING")  # reopened, if an interrupted sweep is resumed
        self.client.set_tag(run_id, T.STATUS_TAG, T.TrialStatus.RUNNING.value)

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        run_id = self.run_id(trial)
        report = EpochReport.from_result(result)
        result.pop(HISTORY, None)  # before Tune's own CSV/JSON loggers see it (user callbacks run first)
        # A diverged epoch logs where it diverged, never its sentinel score: MLflow keeps the last finite
        # metrics, and the status tag says the trial diverged.
        T.log_history(self.client, run_id, report.history)
        T.log_metrics(self.client, run_id, report.epoch_metrics(), step=report.epoch)
        if report.node_id and trial.trial_id not in self._placed:
            self.client.set_tag(run_id, T.NODE_TAG, report.node_id)
            self.client.set_tag(run_id, T.HOST_TAG, report.hostname)
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
        if reason is not None:
            self.client.set_tag(self.run_id(trial), T.ERROR_TAG, reason)
        self._end(trial, T.TrialStatus.FAILED)

    def _end(self, trial: Trial, status: T.TrialStatus) -> None:
        run_id = self.run_id(trial)
        checkpoint = self._best.get(trial.trial_id, (0, trial.last_result.get(CHECKPOINT_PATH)))[1]
        if checkpoint:
            self.client.set_tag(run_id, T.CHECKPOINT_TAG, checkpoint)
        T.end_trial_run(self.client, run_id, status)
