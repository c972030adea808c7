"""Multi-worker trials train the recipe they print: real Ray Train workers (2 CPU workers, gloo) running the
trainer's own `ray_worker.setup` and `trainer.run`, instrumented to record what each rank fed each step.

One 2-worker trial, the same trial crashed in its second epoch and resumed from its checkpoint, and the
1-worker trial of the same global batch; rank 1 gets a batch of broken clips only in its second step. They
show: the schedule's steps are the steps taken and the LR ends at 0; 2 workers x batch b follow the LR of
1 worker x batch 2b; the first all-reduced gradient equals one process's on the same global batch; the
ranks' masks differ; a resumed trial feeds the same batches and masks as an uninterrupted one; and the rank
with nothing to train on keeps in step with the other (no hang: the run would time out).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import ray.cloudpickle
import ray.train
import torch
from avmae import models
from avmae.platform.study.prepare import absolute, prepare_data
from avmae.platform.study.runtime import ray_runtime
from avmae.platform.study.spec import StudySpec, parse_spec
from avmae.platform.tracking import layout as T
from avmae.platform.train import ray_worker, trainer
from avmae.platform.train.ray_compat import TorchTrainer

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/

EPOCHS, BATCH = 2, 4  # 20 train clips: 2 ranks x 2 steps of 4, or 1 rank x 2 steps of 8
BROKEN_STEP = 2  # rank 1's second step: every clip of its batch broken


def study(data: Path) -> StudySpec:
    return absolute(parse_spec({
        "name": "ddp",
        "data": {"kind": "av-digits", "root": str(data), "cache_dir": str(data / "cache"),
                 "av_digits": {"clips_per_digit": 4}},
        "model": {"preset": "tiny", "overrides": {"objective": "joint", "fusion": "mid"}},
        "train": {"epochs": EPOCHS, "batch_size": BATCH, "warmup_epochs": 0.5, "log_every_steps": 1,
                  "lr": 1e-2, "seed": 3},
        "evaluation": {"probe": []},
    }))


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def instrumented_loop(config: dict[str, Any]) -> None:
    """`ray_worker.train`, with each rank's inputs and mask RNG state recorded per step (and the first step's
    inputs and all-reduced gradient saved), rank 1's second batch emptied, and an optional crash."""
    worker = ray_worker.setup(config["spec"], config["trial"])
    out, rank, records = Path(config["out"]), worker.rank, []
    step, batches = worker.train_step, worker.loader

    def recorded_step(audio: torch.Tensor, video: torch.Tensor, weight: float = 1.0):
        if worker.step + 1 == config.get("crash_at_step"):
            raise RuntimeError("injected crash")
        records.append({"step": worker.step + 1, "audio": digest(audio), "video": digest(video),
                        "rng": digest(torch.get_rng_state()), "weight": weight})
        if worker.step == 0:
            first = {"audio": audio, "video": video, "rng": torch.get_rng_state()}
            torch.save(first, out / f"first-{rank}.pt")
        return step(audio, video, weight)

    def save_first_gradient(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if worker.step == 0 and rank == 0:  # the gradients DDP averaged over the ranks
            torch.save([p.grad.clone() for p in worker.model.parameters()], out / "grads.pt")

    class BreakOneBatch:
        """Rank 1's second batch of each run reads as all clips broken (what the collate makes of them)."""

        def __len__(self) -> int:
            return len(batches)

        def __iter__(self):
            for batch in batches:
                if rank == 1 and worker.step + 1 == BROKEN_STEP:
                    n = batch["audio"].shape[0]
                    batch = {**batch, "audio": batch["audio"][:0], "video": batch["video"][:0], "n_broken": n}
                yield batch

    worker.optimizer.register_step_pre_hook(save_first_gradient)
    worker.train_step, worker.loader = recorded_step, BreakOneBatch()
    try:
        trainer.run(worker, ray_worker.report)
    finally:
        (out / f"steps-{rank}-{config['tag']}.json").write_text(json.dumps(records))


def fit(spec: StudySpec, storage: Path, name: str, workers: int, batch: int, out: Path, **extra: Any):
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"batch_size": batch})})
    config = {"spec": spec, "trial": spec.resolve_trial({}), "out": str(out), "tag": name, **extra}
    return TorchTrainer(
        instrumented_loop,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=name.split("-")[0], storage_path=str(storage),
                                       failure_config=ray.train.FailureConfig(max_failures=0)),
    ).fit()


def lr_history(result: Any) -> list[tuple[int, float]]:
    return [(r["step"], r[T.TRAIN_LR]) for r in result.metrics["history"]]


def test_two_workers_train_the_recipe_of_one(tmp_path: Path, tiny_av_digits: Path, one_torch_thread):
    spec = study(tiny_av_digits)
    prepare_data(spec)
    storage = tmp_path / "runs"
    with ray_runtime(None):
        two = fit(spec, storage, "two", workers=2, batch=BATCH, out=tmp_path)
        one = fit(spec, storage, "one", workers=1, batch=2 * BATCH, out=tmp_path)
        with pytest.raises(Exception, match="injected crash"):
            fit(spec, storage, "resumed-crash", workers=2, batch=BATCH, out=tmp_path, crash_at_step=3)
        resumed = fit(spec, storage, "resumed-after", workers=2, batch=BATCH, out=tmp_path)

    steps = lambda tag, rank: json.loads((tmp_path / f"steps-{rank}-{tag}.json").read_text())  # noqa: E731
    # The schedule counts the steps each rank really takes: 2 per epoch, 4 in all, and the LR ends at 0.
    assert two.metrics["steps"] == one.metrics["steps"] == EPOCHS * 2
    assert [len(steps("two", r)) for r in (0, 1)] == [EPOCHS * 2] * 2
    assert lr_history(two)[-1] == (4, pytest.approx(0.0, abs=1e-12))
    # 2 workers x b: the LR (base x global batch / 256, warmup, cosine) of 1 worker x 2b, step for step.
    (steps_two, lrs_two), (steps_one, lrs_one) = (zip(*lr_history(r), strict=True) for r in (two, one))
    assert steps_two == steps_one and lrs_two == pytest.approx(lrs_one, rel=1e-12)
    assert two.metrics[T.TRAIN_LOSS] > 0 and one.metrics[T.TRAIN_LOSS] > 0

    # Rank 1's all-broken batch: a zero-weight step in lockstep with rank 0, nothing skipped.
    assert [r["weight"] for r in steps("two", 1)] == [1.0, 0.0, 1.0, 1.0]
    assert [r["step"] for r in steps("two", 1)] == [r["step"] for r in steps("two", 0)]
    assert two.metrics[T.N_BROKEN] == 0  # epoch 2's count, on rank 0

    # The ranks draw different masks (RNG streams) over different clips, each step.
    for a, b in zip(steps("two", 0), steps("two", 1), strict=True):
        assert a["rng"] != b["rng"] and a["video"] != b["video"]

    # A trial crashed in epoch 2 resumes from its epoch-1 checkpoint and feeds what the uninterrupted one fed.
    assert resumed.metrics["steps"] == EPOCHS * 2 and resumed.metrics[T.EPOCH] == EPOCHS
    for rank in (0, 1):
        assert steps("resumed-after", rank) == steps("two", rank)[2:]
    assert resumed.metrics[T.TRAIN_LOSS] == pytest.approx(two.metrics[T.TRAIN_LOSS], rel=1e-5)

    # The first all-reduced gradient is the mean of each rank's gradient on its half of the global batch,
    # computed here in one process from the same initial weights, inputs and mask RNG states.
    torch.manual_seed(spec.train.seed)
    model = models.AVMAE(spec.resolve_trial({}).model)
    per_rank = []
    for rank in (0, 1):
        first = torch.load(tmp_path / f"first-{rank}.pt", weights_only=True)
        torch.set_rng_state(first["rng"])
        model.zero_grad()
        model(first["audio"], first["video"]).loss.backward()
        per_rank.append([p.grad.clone() for p in model.parameters()])
    reduced = torch.load(tmp_path / "grads.pt", weights_only=True)
    for got, g0, g1 in zip(reduced, *per_rank, strict=True):
        torch.testing.assert_close(got, (g0 + g1) / 2, rtol=1e-4, atol=1e-6)
