"""The trainer without Ray (platform/train/trainer.py): its meters, its checkpoint record and file, a trial
resumed from its checkpoint, and a rewind after a divergence, on one in-process rank of a tiny model."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from avmae.models.downstream import AVClassifier
from avmae.models.recipe import StepMetrics
from avmae.platform.study.prepare import absolute, prepare_data
from avmae.platform.study.spec import StudySpec, parse_spec
from avmae.platform.tracking import layout as T
from avmae.platform.train import trainer
from avmae.platform.train.reports import BACKLOG, EpochReport
from avmae.platform.train.trainer import CheckpointState

EPOCHS, STEPS = 2, 2
# The dict the trainer has always written (and `AVClassifier.from_pretrained` and `model_export` read).
FILE_KEYS = ["config", "state_dict", "epoch", "step", "train_s", "optimizer", "scheduler", "records",
             "result", "rewinds"]


@pytest.fixture(scope="module")
def spec(tiny_av_digits: Path) -> StudySpec:
    spec = absolute(parse_spec({
        "name": "trainer",
        "data": {"kind": "av-digits", "root": str(tiny_av_digits), "cache_dir": str(tiny_av_digits / "cache"),
                 "val_split": "val", "av_digits": {"clips_per_digit": 4}},
        "model": {"preset": "tiny"},
        "train": {"epochs": EPOCHS, "batch_size": 4, "steps_per_epoch": STEPS, "log_every_steps": 1,
                  "warmup_epochs": 0.5, "seed": 5, "on_diverge": {"rewinds": 1, "lr_factor": 0.5}},
        "evaluation": {"probe": []},
    }))
    prepare_data(spec)
    return spec


def worker(spec: StudySpec, checkpoint: CheckpointState | None = None) -> trainer.Worker:
    return trainer.build_worker(spec, spec.resolve_trial({}), rank=0, world_size=1, checkpoint=checkpoint)


class Sent(list):
    """A `SendReport` that keeps what it was sent."""

    def __call__(self, result: dict[str, Any], checkpoint: bytes | None) -> None:
        self.append((result, checkpoint))


def recipe(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """The history records without their timings and machine load."""
    keys = ("step", T.TRAIN_LOSS, T.TRAIN_LOSS_AUDIO, T.TRAIN_LOSS_VIDEO, T.TRAIN_GRAD_NORM, T.TRAIN_LR)
    return [{k: r[k] for k in keys} for r in history]


def weights(w: trainer.Worker) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in w.model.state_dict().items()}


def test_a_meter_reads_the_means_of_its_steps_and_starts_again():
    meter = trainer.Meter(torch.device("cpu"))
    for loss, clips in ((1.0, 4), (3.0, 2)):
        value = torch.tensor(loss)
        meter.add(StepMetrics(value, value / 2, value * 2, value + 1), clips)
    read = meter.read()
    assert read[T.TRAIN_LOSS] == 2.0 and read[T.TRAIN_LOSS_AUDIO] == 1.0 and read[T.TRAIN_LOSS_VIDEO] == 4.0
    assert read[T.TRAIN_GRAD_NORM] == 3.0 and read[T.TRAIN_CLIPS_PER_S] > 0
    assert meter.read()[T.TRAIN_LOSS] == 0.0  # reset by the read


def test_a_resumed_trial_trains_what_an_uninterrupted_one_trains(spec: StudySpec, one_torch_thread):
    """Every epoch reports once, rank 0 with its checkpoint; a trial built from its epoch-1 checkpoint starts
    at epoch 2 (step, schedule, records) and ends with the uninterrupted trial's weights and losses."""
    whole, sent = worker(spec), Sent()
    trainer.run(whole, sent)
    assert [r[T.EPOCH] for r, _ in sent] == [1, 2] and all(c is not None for _, c in sent)
    first = CheckpointState.loads(sent[0][1])
    assert (first.epoch, first.step, len(first.records), first.rewinds) == (1, STEPS, 1, 0)
    restored_records = list(first.records)

    resumed, resent = worker(spec, checkpoint=first), Sent()
    assert (resumed.start_epoch, resumed.step) == (1, STEPS)
    assert resumed.scheduler.get_last_lr() == pytest.approx(first.scheduler["_last_lr"])
    trainer.run(resumed, resent)
    (result, checkpoint), = resent
    assert result[T.EPOCH] == 2 and result[BACKLOG] == restored_records  # sent once, with the first report
    assert recipe(result["history"]) == recipe(sent[1][0]["history"])
    assert result[T.TRAIN_LOSS] == sent[1][0][T.TRAIN_LOSS] and result[T.VAL_LOSS] == sent[1][0][T.VAL_LOSS]
    end, resumed_end = (CheckpointState.loads(c) for c in (sent[1][1], checkpoint))
    assert all(torch.equal(end.state_dict[k], resumed_end.state_dict[k]) for k in end.state_dict)
    assert [r["epoch"] for r in resumed_end.records] == [r["epoch"] for r in end.records] == [1, 2]


def test_a_finished_trial_restored_from_its_last_checkpoint_reports_that_epoch_again(spec: StudySpec):
    done, sent = worker(spec), Sent()
    done.start_epoch, done.step, done.result = EPOCHS, EPOCHS * STEPS, {T.EPOCH: EPOCHS, "loss": 1.0}
    restored = worker(spec, checkpoint=CheckpointState.loads(done.keep_good(done.state(EPOCHS))))
    trainer.run(restored, sent)
    assert sent == [({T.EPOCH: EPOCHS, "loss": 1.0}, None)]


def test_a_rewind_goes_back_to_the_last_good_state_with_a_smaller_lr(spec: StudySpec):
    w = worker(spec)
    initial, lr, base_lr = weights(w), w.optimizer.param_groups[0]["lr"], w.scheduler.base_lrs[0]
    with torch.no_grad():
        for p in w.model.parameters():
            p.add_(1.0)
    w.step = 1
    diverged = EpochReport(epoch=1, steps=1, diverged_at_step=1)
    assert trainer.rewind(w, diverged)
    assert all(torch.equal(initial[k], v) for k, v in w.model.state_dict().items())
    assert (w.start_epoch, w.step, w.rewinds) == (0, 0, 1)
    assert w.optimizer.param_groups[0]["lr"] == lr * 0.5 and w.scheduler.base_lrs[0] == base_lr * 0.5
    assert w.events == [{"step": 1, T.TRAIN_REWINDS: 1.0, T.TRAIN_LR_SCALE: 0.5}]
    assert w.train_step.amp_dtype is None
    assert not trainer.rewind(w, diverged)  # `rewinds: 1`: the next divergence stops the trial


def test_the_checkpoint_file_is_the_dict_it_always_was(spec: StudySpec, tmp_path: Path):
    w = worker(spec)
    path = tmp_path / trainer.CHECKPOINT_FILE
    path.write_bytes(w.state(1).dumps())
    raw = torch.load(path, weights_only=True)
    assert list(raw) == FILE_KEYS and raw["epoch"] == 1
    model = AVClassifier.from_pretrained(path, num_classes=10)
    assert model is not None


@pytest.mark.parametrize("keys", [FILE_KEYS, FILE_KEYS[:7]], ids=["with records", "before records"])
def test_a_checkpoint_written_by_the_previous_trainer_still_loads(spec: StudySpec, tmp_path: Path, keys):
    """The previous trainer wrote a plain dict (and, before it kept MLflow records, only its first 7 keys)."""
    w = worker(spec)
    old = {"config": w.model.config.to_dict(), "state_dict": copy.deepcopy(w.model.state_dict()),
           "epoch": 1, "step": 3, "train_s": 2.5, "optimizer": w.optimizer.state_dict(),
           "scheduler": w.scheduler.state_dict(), "records": [{"epoch": 1}], "result": {T.EPOCH: 1},
           "rewinds": 1}
    torch.save({k: old[k] for k in keys}, tmp_path / trainer.CHECKPOINT_FILE)
    state = CheckpointState.load(tmp_path / trainer.CHECKPOINT_FILE)
    restored = worker(spec, checkpoint=state)
    assert (restored.start_epoch, restored.step, restored.train_s) == (1, 3, 2.5)
    assert all(torch.equal(old["state_dict"][k], v) for k, v in restored.model.state_dict().items())
    expected = (old["records"], old["result"], 1) if "records" in keys else ([], {}, 0)
    assert (restored.records, restored.result, restored.rewinds) == expected
    assert restored.backlog == restored.records


def test_a_file_that_is_no_checkpoint_is_refused(tmp_path: Path):
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"not an avmae trial checkpoint: unknown keys \['weights'\]"):
        CheckpointState.load(tmp_path / "other.pt")
