"""One rank of one trial, without Ray: model + loader, the paper's recipe, one report per epoch, and a linear
probe of the frozen encoder (every `probe_every` epochs and after the last). `ray_worker` is the Ray layer on
top: it reads the Train context and the checkpoint, calls `build_worker`, and hands `run` its `SendReport`.

`build_worker` builds a rank's state in the order that makes the recipe right for any number of workers:
the model, then this rank's loader (a seeded `DistributedSampler`, also for one worker), then the schedule
from the steps *that* loader takes per epoch, then DDP, then the checkpoint. `train_epoch` runs one epoch;
`finish_epoch` evaluates and reports it. Randomness is seeded per (seed, rank, epoch) (`begin_epoch`): ranks
draw different masks, and a trial resumed at epoch e draws what an uninterrupted one draws there.

Metrics go to Tune as `reports.EpochReport`s. Step-wise values are averaged over `log_every_steps` steps (one
host sync per interval) and travel in the epoch's report as `history`, so a worker never waits on MLflow.
Each checkpoint also holds the MLflow records of every epoch so far: a driver killed before it saw an epoch's
report logs that epoch late, from the restored trial's first report (`reports.BACKLOG`).
"""

from __future__ import annotations

import io
import itertools
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from avmae import models
from avmae.models.recipe import StepMetrics
from avmae.platform.data import ClipGeometry, build_from_config, build_loader
from avmae.platform.data.sampling import train_sampler
from avmae.platform.evaluation.probe import encoder_features, eval_loader, probe_scores
from avmae.platform.study.spec import StudySpec, TrialConfig, rank_seed
from avmae.platform.tracking import layout as T
from avmae.platform.tracking.system_metrics import SystemSampler
from avmae.platform.train.reports import BACKLOG, HISTORY, EpochReport
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

CHECKPOINT_FILE = "checkpoint.pt"  # a `CheckpointState` as a dict: loads with AVClassifier.from_pretrained

# Hands one report (Tune's result dict, and rank 0's serialised `CheckpointState` or None) to the trial;
# every rank calls it once per report, as Train's report is a collective.
SendReport = Callable[[dict[str, Any], bytes | None], None]


class Meter:
    """Sums of step metrics kept on the device; read (one host sync, summed over workers) when logged."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(6, device=self.device)  # loss, audio, video, grad norm, steps, clips
        self.began = time.perf_counter()

    def add(self, m: StepMetrics, clips: int) -> None:
        one = torch.ones((), device=self.device)
        self.sums += torch.stack([m.loss, m.loss_audio, m.loss_video, m.grad_norm, one, one * clips]).float()

    def read(self) -> dict[str, float]:
        """Means over the steps every rank took since the last read (a collective: all ranks call it)."""
        totals = self.sums.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        loss, audio, video, grad_norm, steps, clips = totals.tolist()
        seconds = time.perf_counter() - self.began
        self.reset()
        steps = max(steps, 1.0)
        return {
            T.TRAIN_LOSS: loss / steps,
            T.TRAIN_LOSS_AUDIO: audio / steps,
            T.TRAIN_LOSS_VIDEO: video / steps,
            T.TRAIN_GRAD_NORM: grad_norm / steps,
            T.TRAIN_CLIPS_PER_S: clips / seconds,
        }


@dataclass
class CheckpointState:
    """A trial's state after `epoch` (1-based) epochs. On disk (`CHECKPOINT_FILE`) it is a plain dict of these
    fields, in this order (`to_dict`): `AVClassifier.from_pretrained` and `model_export` read its `config`
    and `state_dict`. Checkpoints written before `records`, `result` and `rewinds` existed load with their
    defaults."""

    config: dict[str, Any]  # the model's `AVMAEConfig.to_dict()`
    state_dict: dict[str, torch.Tensor]
    epoch: int
    step: int
    train_s: float
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    # What MLflow keeps of every epoch so far (`EpochReport.record`) and the last epoch's Tune result, for a
    # driver that never saw the report of the epoch the checkpoint holds.
    records: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    rewinds: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> CheckpointState:
        """The record of a checkpoint's dict; ValueError for keys it does not know (not an avmae checkpoint,
        or one from a newer avmae), TypeError for a missing required one."""
        unknown = set(state) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"not an avmae trial checkpoint: unknown keys {sorted(unknown)}")
        return cls(**state)

    def dumps(self) -> bytes:
        """The checkpoint file's bytes."""
        buffer = io.BytesIO()
        torch.save(self.to_dict(), buffer)
        return buffer.getvalue()

    @classmethod
    def loads(cls, data: bytes, device: torch.device | str = "cpu") -> CheckpointState:
        return cls.from_dict(torch.load(io.BytesIO(data), map_location=device, weights_only=True))

    @classmethod
    def load(cls, path: Path, device: torch.device | str = "cpu") -> CheckpointState:
        return cls.from_dict(torch.load(path, map_location=device, weights_only=True))


def _as_is(module: nn.Module, find_unused_parameters: bool) -> nn.Module:
    return module


def _loader_as_is(loader: DataLoader) -> DataLoader:
    return loader


@dataclass(frozen=True)
class Placement:
    """Where a rank runs and how its model and loader are wrapped there (Ray Train's DDP and device copies,
    from `ray_worker`); the defaults run it in this process, on the CPU, unwrapped."""

    device: torch.device = torch.device("cpu")
    node_id: str = ""
    wrap_model: Callable[[nn.Module, bool], nn.Module] = _as_is  # (model, find_unused_parameters)
    wrap_loader: Callable[[DataLoader], DataLoader] = _loader_as_is


@dataclass
class Worker:
    """One rank's state for one trial; `step`, `train_s` and `start_epoch` come back with a checkpoint."""

    spec: StudySpec
    trial: TrialConfig
    rank: int
    world: int
    device: torch.device
    model: models.AVMAE  # unwrapped: checkpoints, validation and the probe
    train_step: models.TrainStep  # through DDP when world > 1
    evaluator: models.TrainStep
    loader: DataLoader
    sampler: DistributedSampler
    steps_per_epoch: int  # what this rank's loader really yields per epoch (capped by the study)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    geometry: ClipGeometry
    val_loader: DataLoader | None
    where: dict[str, Any]  # node id, host name and process id
    system: SystemSampler | None = None  # rank 0's machine load, logged with each history record
    start_epoch: int = 0
    step: int = 0
    train_s: float = 0.0
    records: list[dict[str, Any]] = field(default_factory=list)  # as in `CheckpointState`
    result: dict[str, Any] = field(default_factory=dict)
    backlog: list[dict[str, Any]] = field(default_factory=list)  # restored records, not yet sent (rank 0)
    # With `train.on_diverge`: the last good state (serialised: one host copy), the rewinds so far, and the
    # rewind events not yet reported (history records at the step that diverged).
    good: bytes | None = None
    rewinds: int = 0
    events: list[dict[str, float]] = field(default_factory=list)

    def state(self, epoch: int) -> CheckpointState:
        """The checkpoint after `epoch` (1-based) epochs."""
        return CheckpointState(
            config=self.model.config.to_dict(), state_dict=self.model.state_dict(), epoch=epoch,
            step=self.step, train_s=self.train_s, optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), records=self.records, result=self.result,
            rewinds=self.rewinds,
        )

    def restore(self, state: CheckpointState) -> None:
        """Back to `state`: weights, optimiser, schedule, position (`start_epoch`, `step`), records; rank 0
        sends the restored records with its next report."""
        self.model.load_state_dict(state.state_dict)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.start_epoch, self.step, self.train_s = state.epoch, state.step, state.train_s
        self.records, self.result = state.records, state.result
        self.backlog = list(self.records) if self.rank == 0 else []
        self.rewinds = state.rewinds
        policy = self.spec.train.on_diverge
        if self.rewinds and policy is not None and policy.fp32:
            self.train_step.amp_dtype = self.evaluator.amp_dtype = None

    def keep_good(self, state: CheckpointState) -> bytes:
        """`state` serialised; kept as the state a divergence rewinds to when `train.on_diverge` is set."""
        data = state.dumps()
        if self.spec.train.on_diverge is not None:
            self.good = data
        return data

    def tune_result(self, report: EpochReport) -> dict[str, Any]:
        """`report` as Tune's result; rank 0's first one after a restore brings the restored records."""
        result = report.to_result(self.spec.metric)
        if self.backlog:
            result[BACKLOG], self.backlog = self.backlog, []
        return result


def build_worker(spec: StudySpec, trial: TrialConfig, rank: int, world_size: int,
                 placement: Placement | None = None, checkpoint: CheckpointState | None = None) -> Worker:
    """Rank `rank` of `world_size`, ready for `run`: the trial's initial weights (seeded by its seed), this
    rank's loader, the schedule of the steps it takes, DDP (through `placement`: by default this process, on
    the CPU), then `checkpoint` if any (a resumed trial starts at its epoch)."""
    placement = placement or Placement()
    torch.manual_seed(trial.seed)  # repeat k's init: the same in every cell (DDP broadcasts rank 0's anyway)
    device = placement.device
    model = models.AVMAE(trial.model).to(device)
    geometry, sampler, loader = _train_data(spec, trial, model, rank, world_size, placement)
    steps_per_epoch = min(len(loader), spec.train.steps_per_epoch or len(loader))
    global_batch = spec.train.batch_size * world_size
    optimizer = models.build_optimizer(model, trial.lr, global_batch, trial.weight_decay)
    scheduler = models.warmup_cosine(
        optimizer, round(trial.warmup_epochs * steps_per_epoch), spec.train.epochs * steps_per_epoch
    )
    val_split = spec.data.val_split if rank == 0 else None  # rank 0 validates alone
    val_loader = eval_loader(spec, val_split, geometry) if val_split else None
    # DDP only pays for a search of unused parameters where the objective leaves some unused.
    wrapped = placement.wrap_model(model, trial.model.unused_parameters)
    step = models.TrainStep(wrapped, optimizer, scheduler, amp_dtype="auto", compile=spec.train.compile)
    worker = Worker(
        spec=spec, trial=trial, rank=rank, world=world_size, device=device, model=model, train_step=step,
        evaluator=models.TrainStep(model, optimizer, amp_dtype="auto"),
        loader=loader, sampler=sampler, steps_per_epoch=steps_per_epoch, optimizer=optimizer,
        scheduler=scheduler, geometry=geometry, val_loader=val_loader,
        where={"node_id": placement.node_id, "hostname": socket.gethostname(), "pid": os.getpid()},
        system=SystemSampler(device) if rank == 0 else None,
    )
    if checkpoint is not None:
        worker.restore(checkpoint)
    if spec.train.on_diverge is not None:
        worker.keep_good(worker.state(worker.start_epoch))  # a divergence in the first epoch rewinds here
    return worker


def _train_data(spec: StudySpec, trial: TrialConfig, model: models.AVMAE, rank: int, world_size: int,
                placement: Placement) -> tuple[ClipGeometry, DistributedSampler, DataLoader]:
    """The clip geometry of `model`, and this rank's sampler and loader of the train split."""
    geometry = ClipGeometry.from_input_shapes(model.input_shapes, frame_stride=spec.data.frame_stride)
    dataset = build_from_config(spec.data, spec.data.train_split, geometry, train=True)
    # Repeat k's data order, the same in every cell; each rank reads its share of each global batch (of
    # whole shards, for a cache in object storage: `data.sampling`).
    sampler = train_sampler(dataset, world_size, rank, trial.seed)
    loader = build_loader(dataset, spec.train.batch_size, train=True, num_workers=spec.data.loader_workers,
                          sampler=sampler)
    loader = placement.wrap_loader(loader)
    if len(loader) == 0:
        raise ValueError(f"split {spec.data.train_split!r} holds fewer clips than one batch per worker "
                         f"({spec.train.batch_size} x {world_size} workers)")
    return geometry, sampler, loader


def run(worker: Worker, send: SendReport) -> None:
    """The epochs left to train (all of them, or those after the checkpoint), each reported through `send`."""
    epochs = worker.spec.train.epochs
    if worker.start_epoch >= epochs and worker.result:
        # Restored from its last checkpoint (its driver was killed before it saw that report): the last
        # epoch is reported again, so Tune ends the trial as finished and its records reach MLflow.
        backlog = {BACKLOG: worker.backlog} if worker.backlog else {}
        send({**worker.result, **backlog}, None)
        return
    epoch = worker.start_epoch
    while epoch < epochs:
        report = train_epoch(worker, epoch)
        if report.diverged and rewind(worker, report):
            epoch = worker.start_epoch
            continue
        if report.diverged:
            send(worker.tune_result(report), None)
            return
        finish_epoch(worker, report, last=epoch == epochs - 1, send=send)
        epoch += 1


def rewind(worker: Worker, report: EpochReport) -> bool:
    """`train.on_diverge`: back to the last good state, the LR times `lr_factor` once more (compounding over
    rewinds), mixed precision off if asked; the event joins the next report's history. Every rank rewinds
    alike: a divergence is read from the window summed over all of them. False when no rewind is left."""
    policy, w = worker.spec.train.on_diverge, worker
    if policy is None or w.good is None or w.rewinds >= policy.rewinds:
        return False
    rewinds, backlog = w.rewinds + 1, w.backlog
    w.restore(CheckpointState.loads(w.good, w.device))
    scale = policy.lr_factor ** (rewinds - w.rewinds)  # the good state already runs at its own scale
    w.rewinds, w.backlog = rewinds, backlog
    for i, group in enumerate(w.optimizer.param_groups):
        w.scheduler.base_lrs[i] *= scale
        group["lr"] *= scale
    if policy.fp32:
        w.train_step.amp_dtype = w.evaluator.amp_dtype = None
    w.events.append({"step": report.diverged_at_step, T.TRAIN_REWINDS: float(rewinds),
                     T.TRAIN_LR_SCALE: policy.lr_factor ** rewinds})
    return True


def begin_epoch(worker: Worker, epoch: int) -> None:
    """Seed epoch `epoch` (0-based) of this rank: the clip order (the trial's seed and the epoch: one
    permutation, split over the ranks) and this rank's masks and augmentations (`rank_seed`)."""
    worker.sampler.set_epoch(epoch)
    torch.manual_seed(rank_seed(worker.trial.seed, worker.rank, epoch))


def train_epoch(worker: Worker, epoch: int) -> EpochReport:
    """One epoch (0-based) of `steps_per_epoch` steps on every rank alike; stops at the first non-finite
    window (the report then says where it diverged)."""
    w, log_every = worker, worker.spec.train.log_every_steps
    begin_epoch(w, epoch)
    window, epoch_meter = Meter(w.device), Meter(w.device)
    history = list(w.events)  # rewinds since the last report come first (kept until it is made)
    n_broken, began, first_step_at = 0, time.perf_counter(), None
    for i, batch in enumerate(itertools.islice(w.loader, w.steps_per_epoch)):
        n_broken += batch["n_broken"]
        _step(w, batch, (window, epoch_meter))
        first_step_at = first_step_at or time.time()
        if w.step % log_every and i != w.steps_per_epoch - 1:
            continue
        record = _window_record(w, window)
        if not _finite(record):  # the same on every rank: the window was summed over all of them
            return EpochReport(epoch=epoch + 1, steps=w.step, history=history, diverged_at_step=w.step,
                               n_broken=n_broken, reported_at=time.time(), **w.where)
        history.append(record)
    w.train_s += time.perf_counter() - began
    return EpochReport(
        epoch=epoch + 1, steps=w.step, train=epoch_meter.read(), history=history, train_s=w.train_s,
        n_broken=n_broken, first_step_at=first_step_at if epoch == w.start_epoch else None,
        reported_at=time.time(), **w.where,
    )


def _step(worker: Worker, batch: dict[str, Any], meters: tuple[Meter, ...]) -> None:
    """One optimiser step on `batch`, counted in each of `meters`. A rank whose every clip was broken still
    steps, with zero weight: the ranks stay in lockstep."""
    audio, video, clips = _inputs(worker, batch)
    metrics = worker.train_step(audio, video, weight=1.0 if clips else 0.0)
    if clips:
        for meter in meters:
            meter.add(metrics, clips)
    worker.step += 1


def _window_record(worker: Worker, window: Meter) -> dict[str, float]:
    """The history record of the steps since the last one (a collective); rank 0 adds its machine's load
    (CPU, memory, GPU: a starved loader is told from a slow model)."""
    record = {"step": worker.step, **window.read(), T.TRAIN_LR: worker.scheduler.get_last_lr()[0]}
    if worker.system is not None:
        record.update(worker.system.read())
    return record


def finish_epoch(worker: Worker, report: EpochReport, last: bool, send: SendReport) -> None:
    """Rank 0 adds the validation loss (and the probe every `probe_every` epochs and after the last) and
    attaches the checkpoint; every rank reports (Train's report is a collective)."""
    w = worker
    if w.rank == 0 and w.val_loader is not None:
        report.val = _validation_loss(w.evaluator, w.val_loader, w.device)
    if w.rank == 0 and w.spec.evaluation.probes_after(report.epoch, last):
        report.probe = probe_scores(encoder_features(w.model), w.spec, w.geometry)
    result, w.events = w.tune_result(report), []
    if w.rank != 0:
        if w.spec.train.on_diverge is not None:
            w.keep_good(w.state(report.epoch))
        send(result, None)
        return
    w.records.append(report.record())
    w.result = {k: v for k, v in result.items() if k not in (HISTORY, BACKLOG)}
    send(result, w.keep_good(w.state(report.epoch)))


def _inputs(worker: Worker, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The batch on the device, or one all-zero clip when every clip of it was broken."""
    clips = batch["audio"].shape[0]
    if clips == 0:
        batch = {m: torch.zeros((1, *worker.model.input_shapes[m]), dtype=batch[m].dtype)
                 for m in ("audio", "video")}
    audio, video = (batch[m].to(worker.device, non_blocking=True) for m in ("audio", "video"))
    return audio, video, clips


def _finite(metrics: dict[str, float]) -> bool:
    """Diverged means a non-finite loss, or a non-finite gradient (the weights it updated are lost too)."""
    return math.isfinite(metrics[T.TRAIN_LOSS]) and math.isfinite(metrics[T.TRAIN_GRAD_NORM])


@torch.no_grad()
def _validation_loss(evaluator: models.TrainStep, loader: DataLoader, device: torch.device) -> dict:
    """Reconstruction loss on the validation split with fixed masks (seed 0): the paper's pretraining eval."""
    sums, count = torch.zeros(3, device=device), 0
    for batch in loader:
        clips = batch["audio"].shape[0]
        if clips:
            out = evaluator.evaluate(batch["audio"].to(device), batch["video"].to(device), generator=0)
            sums += torch.stack([out.loss, out.loss_audio, out.loss_video]).float() * clips
            count += clips
    if not count:  # a loss of 0 would win every search: fail the trial, saying why
        raise RuntimeError("no validation clip could be read (every one broken?): see the broken-clip log")
    loss, audio, video = (sums / count).tolist()
    return {T.VAL_LOSS: loss, T.VAL_LOSS_AUDIO: audio, T.VAL_LOSS_VIDEO: video}
