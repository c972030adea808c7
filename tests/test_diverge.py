"""`train.on_diverge`: a forced divergence recovered by a rewind, in a real Ray Train run of the trainer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import ray.train
import torch
from avmae.platform.study.runtime import ray_runtime
from avmae.platform.study.spec import parse_spec
from avmae.platform.tracking import layout as T
from avmae.platform.train.ray_compat import TorchTrainer
from avmae.platform.train.reports import DIVERGED
from avmae.platform.train.trainer import CHECKPOINT_FILE
from avmae.platform.train.trial import train_loop_per_worker

HUGE_LR = 1e9  # base LR, no warmup: the gradient of the second step is already NaN
FACTOR = 1e-10  # the LR after the rewind: 1e9 x 8 / 256 x 1e-10 = 3e-3


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_a_diverged_trial_rewinds_to_its_last_good_state_and_goes_on(tmp_path: Path, tiny_av_digits: Path):
    """The trial diverges in its first epoch, rewinds to its initial state with a smaller LR, and ends its
    epochs with finite losses, each step once; the rewind is in its history at the step that diverged, and
    its checkpoints remember it."""
    spec = parse_spec({
        "name": "rewind",
        "data": {"kind": "av-digits", "root": str(tiny_av_digits), "cache_dir": str(tiny_av_digits / "cache"),
                 "val_split": "val", "av_digits": {"clips_per_digit": 4}},
        "model": {"preset": "tiny"},
        "axes": {"objective": ["joint"]},
        "search": {"lr": {"dist": "grid", "values": [HUGE_LR]}},
        "train": {"epochs": 2, "batch_size": 8, "log_every_steps": 1, "warmup_epochs": 0,
                  "on_diverge": {"rewinds": 2, "lr_factor": FACTOR}},
        "metric": "val/loss",
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "evaluation": {"probe": [], "baselines": False, "log_models": "none"},
    })
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec, "trial": spec.resolve_trial({"objective": "joint", "lr": HUGE_LR})},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name="rewind", storage_path=str(tmp_path)),
    )
    with ray_runtime(None):
        result = trainer.fit()
    assert result.metrics[T.EPOCH] == 2 and not result.metrics[DIVERGED]
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=True)
    history = [record for epoch in state["records"] for record in epoch["history"]]
    events = [r for r in history if T.TRAIN_REWINDS in r]
    assert events == [{"step": 2, T.TRAIN_REWINDS: 1.0, T.TRAIN_LR_SCALE: FACTOR}] and state["rewinds"] == 1
    assert state["scheduler"]["base_lrs"][0] == pytest.approx(HUGE_LR * 8 / 256 * FACTOR)
    steps = [(r["step"], r[T.TRAIN_LOSS]) for r in history if T.TRAIN_LOSS in r]
    assert [s for s, _ in steps] == [1, 2, 3, 4]  # 20 clips, batches of 8: 2 steps an epoch, each once
    assert all(math.isfinite(loss) for _, loss in steps)
    assert all(math.isfinite(v) for v in state["records"][-1]["metrics"].values())
