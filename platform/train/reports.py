"""What a trial's workers report to Tune each epoch: one typed record, and the flat result dict Tune carries.

Written on the workers (trainer.py), read on the driver (callbacks.py, progress.py, bench/). Tune needs a flat
dict whose keys include the study metric (ASHA and Optuna rank by it) and `epoch` (ASHA's time axis); the
record names every other key once, so the two sides cannot drift apart. Torch- and MLflow-free.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from avmae.platform.tracking import layout as T

# Keys of a result besides the MLflow metric names of `tracking`.
DIVERGED = "diverged"  # 1 when the loss became non-finite (the trial then stops)
HISTORY = "history"  # step-wise records since the last report, for MLflow
FIRST_STEP_AT = "first_step_at"  # wall-clock time of the first optimiser step (bench/trial_overhead.py)
# Where rank 0 ran. Not `hostname` and `pid`: Tune overwrites those with the trial's own process's.
NODE_ID, HOSTNAME, WORKER_PID = "node_id", "worker_hostname", "worker_pid"
REPORTED_AT = "reported_at"  # wall-clock time rank 0 reported the epoch: its metrics' MLflow timestamp
# The MLflow records (`EpochReport.record`) of the epochs a restored trial's checkpoint holds, sent once with
# its first report: epochs whose report its driver never saw (it was killed) are logged late from them.
BACKLOG = "backlog"
STEPS = "steps"  # optimiser steps taken so far, on every rank alike
CHECKPOINT_PATH = "checkpoint_path"  # added by trial.TuneReports to results that carry a checkpoint
# A diverged trial's score for Tune: finite, so Optuna and ASHA simply rank it last (its sign follows the
# metric's mode: -1e6 for a probe score). Never logged to MLflow.
DIVERGED_SCORE = 1e6


def metric_mode(metric: str) -> Literal["min", "max"]:
    """Losses are minimised, probe scores (accuracy, mAP) maximised."""
    return "max" if metric.startswith(T.PROBE_PREFIX) else "min"


def better(score: float, than: float, metric: str) -> bool:
    """Whether `score` beats `than` on `metric` (NaN never does)."""
    return score > than if metric_mode(metric) == "max" else score < than


@dataclass
class EpochReport:
    """One epoch of one trial, as rank 0 reports it (the other ranks report the same epoch and steps)."""

    epoch: int  # 1-based: the epochs completed
    steps: int
    train: dict[str, float] = field(default_factory=dict)  # epoch means of train/loss, ..., clips/s
    val: dict[str, float] = field(default_factory=dict)  # val/loss, val/loss_audio, val/loss_video
    probe: dict[str, float] = field(default_factory=dict)  # probe/<modality>_<score>
    history: list[dict[str, float]] = field(default_factory=list)  # {"step": s, name: value, ...}
    train_s: float = 0.0
    n_broken: int = 0
    diverged_at_step: int | None = None  # set: the loss or gradient became non-finite at this step
    first_step_at: float | None = None
    node_id: str = ""
    hostname: str = ""
    pid: int = 0
    reported_at: float = 0.0

    @property
    def diverged(self) -> bool:
        return self.diverged_at_step is not None

    def to_result(self, metric: str) -> dict[str, Any]:
        """The flat dict for `ray.train.report`; a diverged epoch scores `DIVERGED_SCORE` on `metric`."""
        result: dict[str, Any] = {
            **self.train, **self.val, **self.probe,
            T.EPOCH: self.epoch, STEPS: self.steps, HISTORY: self.history, T.TRAIN_SECONDS: self.train_s,
            T.N_BROKEN: self.n_broken, DIVERGED: int(self.diverged), NODE_ID: self.node_id,
            HOSTNAME: self.hostname, WORKER_PID: self.pid, REPORTED_AT: self.reported_at,
        }
        if self.diverged:
            worst = DIVERGED_SCORE if metric_mode(metric) == "min" else -DIVERGED_SCORE
            result.update({metric: worst, T.DIVERGED_AT_STEP: self.diverged_at_step})
        if self.first_step_at is not None:
            result[FIRST_STEP_AT] = self.first_step_at
        return result

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> EpochReport:
        """The record back from a Tune result (the driver's side). Keys Tune added are ignored."""
        diverged = bool(result.get(DIVERGED))
        train = {k: v for k, v in result.items() if k.startswith("train/")}
        val = {k: v for k, v in result.items() if k.startswith("val/")}
        probe = {k: v for k, v in result.items() if k.startswith(T.PROBE_PREFIX)}
        if diverged:  # the scores of a diverged epoch are the sentinel, not measurements
            train, val, probe = {}, {}, {}
        return cls(
            epoch=int(result.get(T.EPOCH, 0)),
            steps=int(result.get(STEPS, 0)),
            train=train,
            val=val,
            probe=probe,
            history=list(result.get(HISTORY) or []),
            train_s=float(result.get(T.TRAIN_SECONDS, 0.0)),
            n_broken=int(result.get(T.N_BROKEN, 0)),
            diverged_at_step=int(result[T.DIVERGED_AT_STEP]) if diverged else None,
            first_step_at=result.get(FIRST_STEP_AT),
            node_id=str(result.get(NODE_ID, "")),
            hostname=str(result.get(HOSTNAME, "")),
            pid=int(result.get(WORKER_PID, 0)),
            reported_at=float(result.get(REPORTED_AT, 0.0)),
        )

    def epoch_metrics(self) -> dict[str, float]:
        """What MLflow logs at step = epoch: validation, probe scores, time and broken clips (and, for a
        diverged epoch, where it diverged). Step-wise train metrics travel in `history` instead."""
        metrics = {**self.val, **self.probe, T.EPOCH: float(self.epoch), T.TRAIN_SECONDS: self.train_s,
                   T.N_BROKEN: float(self.n_broken)}
        if self.diverged:
            metrics[T.DIVERGED_AT_STEP] = float(self.diverged_at_step)
        return metrics

    def record(self) -> dict[str, Any]:
        """What MLflow keeps of the epoch, as JSON: it travels in the checkpoint and the driver's journal, so
        an epoch is logged (once: `tracking.log_epochs`) even when its report never reached the driver."""
        at = self.reported_at or time.time()  # a result without the time (a test's) is timed on arrival
        return {"epoch": self.epoch, "time_ms": int(at * 1000), "metrics": self.epoch_metrics(),
                "history": self.history}
