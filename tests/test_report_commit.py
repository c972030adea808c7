"""No reported checkpoint is lost to a rank that dies right after its report (platform/train/ray_worker.py).

Ray Train registers a round's checkpoint only once its controller has polled every rank's report of that
round, and `ray.train.report` returns as soon as the report is on the worker's queue. Here rank 0's report
reaches its queue late (its checkpoint upload is slowed past several of the controller's polls) and rank 1
raises as soon as its own report returns: with a bare `ray.train.report` the run fails before rank 0's report
is polled, and a rerun of the trial starts from scratch. `ray_worker.report` returns only once the round is
registered, so the rerun resumes from rank 0's checkpoint.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import ray.cloudpickle
import ray.train
from avmae.platform.study.runtime import ray_runtime
from avmae.platform.train import ray_worker
from avmae.platform.train.ray_compat import TorchTrainer
from avmae.platform.train.trainer import CHECKPOINT_FILE

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/

SLOW_UPLOAD_S = 10.0  # several of the controller's polls (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default)
CHECKPOINT = b"epoch 1"


def slow_upload() -> None:
    """This worker's checkpoint uploads wait `SLOW_UPLOAD_S` first (Train's report: sync the folder name
    across ranks, upload, put the report on the queue)."""
    from ray.train.v2._internal.execution.context import TrainContext

    upload = TrainContext._upload_checkpoint

    def slow(self, *args, **kwargs):
        time.sleep(SLOW_UPLOAD_S)
        return upload(self, *args, **kwargs)

    TrainContext._upload_checkpoint = slow


def report_then_crash(config: dict) -> None:
    """Epoch 1 reported, rank 0 with the checkpoint (slow to upload); rank 1 dies right after its report."""
    rank = ray.train.get_context().get_world_rank()
    if rank == 0:
        slow_upload()
    ray_worker.report({"epoch": 1}, CHECKPOINT if rank == 0 else None)
    if rank == 1:
        raise RuntimeError("rank 1 died right after its report")


def resume(config: dict) -> None:
    """The rerun: writes down the checkpoint Train handed back (nothing: none)."""
    checkpoint, found = ray.train.get_checkpoint(), b""
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            found = (Path(folder) / CHECKPOINT_FILE).read_bytes()
    Path(config["storage"], "resumed-from").write_bytes(found)


def fit(loop, storage: Path, workers: int) -> None:
    TorchTrainer(
        loop,
        train_loop_config={"storage": str(storage)},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(name="trial", storage_path=str(storage),
                                       failure_config=ray.train.FailureConfig(max_failures=0)),
    ).fit()


def test_a_checkpoint_survives_a_rank_that_dies_right_after_its_report(tmp_path: Path):
    with ray_runtime(None):
        with pytest.raises(Exception, match="rank 1 died right after its report"):
            fit(report_then_crash, tmp_path, workers=2)
        fit(resume, tmp_path, workers=1)
    assert (tmp_path / "resumed-from").read_bytes() == CHECKPOINT
