"""How a trial hands Ray Train's reports to Tune (platform/train/trial.py), on a real Ray runtime.

Ray's own `TuneReportCallback` passes them through Tune's result thread, which races the trial function's
return: when that thread takes the last report only after the Train run has ended, the trial hangs for good.
`slow_handover` makes that order certain; with Ray's callback this study never ends.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest
import ray.cloudpickle
import ray.train
import ray.train.torch
from avmae.platform.study.runtime import ray_runtime
from avmae.platform.train.trial import TuneReports, fit_reporting
from ray import tune

EPOCHS = 3


def report_epochs(config: dict) -> None:
    for epoch in range(1, EPOCHS + 1):
        if config["outcome"] == "raise" and epoch == 2:
            raise ValueError("the loader found no clips")
        Path(config["storage"], f"{config['outcome']}-{epoch}").write_text(str(os.getpid()))  # epoch started
        if config["outcome"] == "stop" and epoch > 1:
            time.sleep(3600)  # only the end of its run ends this worker
        ray.train.report({"epoch": epoch, "loss": 1.0 / epoch})


def slow_handover() -> None:
    """Tune's result thread (the process's main thread) takes a run's last report only once the run has
    ended behind it: once the trial function's end marker fills Tune's one-slot result queue."""
    from ray.train._internal import session

    report = session._TrainSession.report

    def late(self, metrics: dict, checkpoint=None) -> None:
        if threading.current_thread() is threading.main_thread() and metrics.get("epoch") == EPOCHS:
            deadline = time.monotonic() + 60
            while not self.result_queue.full() and time.monotonic() < deadline:
                time.sleep(0.1)
        report(self, metrics, checkpoint)

    session._TrainSession.report = late


def one_trial(config: dict) -> None:
    slow_handover()
    if config["outcome"] == "finish":  # next after "stop", in its process: the stopped run must be gone now
        stopped_worker = int(Path(config["storage"], "stop-1").read_text())
        Path(config["storage"], "stopped-worker-gone").write_text(str(gone(stopped_worker)))
    reports = TuneReports()
    trainer = ray.train.torch.TorchTrainer(
        report_epochs, train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.2}),
        run_config=ray.train.RunConfig(name=tune.get_context().get_trial_id(), storage_path=config["storage"],
                                       callbacks=[reports]))
    fit_reporting(trainer, reports)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_every_report_reaches_tune_and_each_trial_ends_as_its_run_did(tmp_path):
    """Finished: every epoch reported, in order. Stopped by Tune after epoch 1: ends there, not failed, and
    its Train run is ended with it (its worker, asleep in epoch 2, is gone before the next trial starts in
    the same process). Raised: failed with the run's own exception."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    outcomes = ["stop", "finish", "raise"]
    (tmp_path / "train").mkdir()
    with ray_runtime(None):
        grid = tune.Tuner(
            tune.with_resources(one_trial, {"cpu": 0.01}),
            param_space={"outcome": tune.grid_search(outcomes), "storage": str(tmp_path / "train")},
            tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True),
            run_config=tune.RunConfig(
                storage_path=str(tmp_path / "tune"), verbose=0,
                stop=lambda _, result: result["config"]["outcome"] == "stop" and result["epoch"] == 1),
        ).fit()
    results = {r.config["outcome"]: r for r in grid}
    finished = results["finish"]
    assert finished.error is None
    assert finished.metrics_dataframe["epoch"].tolist() == list(range(1, EPOCHS + 1))
    assert results["stop"].error is None and results["stop"].metrics["epoch"] == 1
    assert "the loader found no clips" in str(results["raise"].error)
    assert results["raise"].metrics_dataframe["epoch"].tolist() == [1]
    assert (tmp_path / "train" / "stopped-worker-gone").read_text() == "True"
    assert results["stop"].metrics["pid"] == finished.metrics["pid"]  # one process ran both


def gone(pid: int) -> bool:
    """Whether process `pid` has ended, waiting up to 2 minutes (ending a run is asynchronous: a bounded
    wait, not a bet on timing)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False
