"""How a trial hands Ray Train's reports to Tune (platform/trial.py), on a real Ray runtime.

Ray's own `TuneReportCallback` passes them through Tune's result thread, which races the trial function's
return: when that thread takes the last report a moment after the Train run has ended, the trial hangs for
good. The delay below makes that moment deterministic; with Ray's callback this study never ends.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
import ray.cloudpickle
import ray.train
import ray.train.torch
from avmae.platform.study import ray_runtime
from avmae.platform.trial import TuneReports, fit_reporting
from ray import tune

EPOCHS = 3


def report_epochs(config: dict) -> None:
    for epoch in range(1, EPOCHS + 1):
        if config["outcome"] == "raise" and epoch == 2:
            raise ValueError("the loader found no clips")
        Path(config["storage"], f"{config['outcome']}-{epoch}").touch()  # the epoch started
        if config["outcome"] == "stop" and epoch > 1:
            time.sleep(10)  # long enough to be seen, had the stopped run not been ended
        ray.train.report({"epoch": epoch, "loss": 1.0 / epoch})


def slow_handover() -> None:
    """Tune's result thread (the process's main thread) takes each Train report 5 s late, long enough for
    the Train run to end behind its last report."""
    from ray.train._internal import session

    report = session._TrainSession.report

    def late(self, metrics: dict, checkpoint=None) -> None:
        if threading.current_thread() is threading.main_thread():
            time.sleep(5)
        report(self, metrics, checkpoint)

    session._TrainSession.report = late


def one_trial(config: dict) -> None:
    slow_handover()
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
    its Train run is ended with it (no later epoch starts), so the same process runs the next trial.
    Raised: failed with the run's own exception."""
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
    time.sleep(12)  # what a stopped run left running would need to start its next epoch
    assert sorted(p.name for p in (tmp_path / "train").glob("stop-*")) == ["stop-1", "stop-2"]
    assert results["stop"].metrics["pid"] == finished.metrics["pid"]  # one process ran both
