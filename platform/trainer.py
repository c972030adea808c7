"""What every Ray Train worker runs for one trial (through trial.train_loop_per_worker): model + loader, the
paper's recipe, one report per epoch, and a linear probe of the frozen encoder after the last epoch.

Metrics go to Tune with `ray.train.report` under the MLflow names of `tracking`. Step-wise values are averaged
over `log_every_steps` steps (one host sync per interval) and travel in the epoch's report as `history`, so a
worker never waits on MLflow: the driver logs them (callbacks.py).
"""

from __future__ import annotations

import logging
import math
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from avmae import models
from avmae.models.recipe import StepMetrics
from avmae.platform import tracking as T
from avmae.platform.data import ClipGeometry, build_loader
from avmae.platform.spec import StudySpec, split_params
from avmae.platform.trial import DIVERGED, FIRST_STEP_AT, HISTORY, HOSTNAME, NODE_ID
from ray.train.v2._internal.execution import context as train_context
from torch.utils.data import DataLoader, DistributedSampler, Subset

DIVERGED_LOSS = 1e6  # a diverged trial's reported loss: finite, so Optuna and ASHA simply rank it last
CHECKPOINT_FILE = "checkpoint.pt"  # {"config", "state_dict", ...}: loads with AVClassifier.from_pretrained


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


def train(config: dict[str, Any]) -> None:
    """`config`: {"spec": the StudySpec as a dict, "params": the trial's cell and sampled values}."""
    spec = StudySpec.model_validate(config["spec"])
    # Train logs each report in full at INFO (history included) from a logger named after its file.
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    hparams, _ = split_params(config["params"])
    lr = hparams.get("lr", spec.train.lr)
    weight_decay = hparams.get("weight_decay", spec.train.weight_decay)
    warmup_epochs = hparams.get("warmup_epochs", spec.train.warmup_epochs)
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
    torch.manual_seed(spec.train.seed)  # the same init and data order in every trial: cells differ by design
    device = ray.train.torch.get_device()

    model = models.AVMAE(spec.resolve_model(config["params"])).to(device)
    geometry = ClipGeometry.from_input_shapes(model.input_shapes, frame_stride=spec.data.frame_stride)
    loader = _loader(spec, spec.data.train_split, geometry, train=True)
    if len(loader) == 0:
        raise ValueError(f"split {spec.data.train_split!r} holds fewer clips than one batch")
    steps_per_epoch = min(len(loader), spec.train.steps_per_epoch or len(loader))
    optimizer = models.build_optimizer(model, lr, spec.train.batch_size * world, weight_decay)
    scheduler = models.warmup_cosine(
        optimizer, round(warmup_epochs * steps_per_epoch), spec.train.epochs * steps_per_epoch
    )

    start_epoch, step, train_s = 0, 0, 0.0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restored trial: Train hands back its latest checkpoint
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location=device, weights_only=True)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step, train_s = state["epoch"], state["step"], state["train_s"]

    # DDP when world > 1; unused parameters exist in one-direction inpainting.
    wrapped = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    if world > 1 or device.type == "cuda":
        # A DistributedSampler when world > 1; on a GPU, Ray's wrapper also copies the next batch to the
        # device on a side stream while the current step runs (on the compute stream the copy stalls it).
        loader = ray.train.torch.prepare_data_loader(
            loader, add_dist_sampler=world > 1, move_to_device=device.type == "cuda", auto_transfer=True
        )
    train_step = models.TrainStep(wrapped, optimizer, scheduler, amp_dtype="auto", compile=spec.train.compile)
    evaluator = models.TrainStep(model, optimizer, amp_dtype="auto")  # unwrapped: rank 0 evaluates alone
    val_loader = _loader(spec, spec.data.val_split, geometry) if spec.data.val_split and rank == 0 else None
    window, epoch_meter = Meter(device), Meter(device)
    where = {NODE_ID: ray.get_runtime_context().get_node_id(), HOSTNAME: socket.gethostname()}
    first_step_at = None

    for epoch in range(start_epoch, spec.train.epochs):
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        history: list[dict[str, float]] = []
        n_broken, began = 0, time.perf_counter()
        for i, batch in enumerate(loader):
            if i == steps_per_epoch:
                break
            n_broken += batch["n_broken"]
            clips = batch["audio"].shape[0]
            if clips == 0:  # every clip of the batch was broken
                continue
            audio, video = (batch[m].to(device, non_blocking=True) for m in ("audio", "video"))
            metrics = train_step(audio, video)
            window.add(metrics, clips)
            epoch_meter.add(metrics, clips)
            step += 1
            if first_step_at is None:
                first_step_at = time.time()
            if step % spec.train.log_every_steps and i != steps_per_epoch - 1:
                continue
            history.append({"step": step, **window.read(), T.TRAIN_LR: scheduler.get_last_lr()[0]})
            if not _finite(history[-1]):
                ray.train.report({
                    T.EPOCH: epoch + 1, T.TRAIN_LOSS: DIVERGED_LOSS, spec.metric: DIVERGED_LOSS,
                    DIVERGED: 1, T.DIVERGED_AT_STEP: step, HISTORY: history, **where,
                })
                return
        train_s += time.perf_counter() - began
        report = {**epoch_meter.read(), T.EPOCH: epoch + 1, DIVERGED: 0, T.TRAIN_SECONDS: train_s,
                  T.N_BROKEN: n_broken, HISTORY: history, **where}
        if epoch == start_epoch and first_step_at is not None:
            report[FIRST_STEP_AT] = first_step_at
        if rank == 0 and val_loader is not None:
            report.update(_validation_loss(evaluator, val_loader, device))
        if rank == 0 and epoch == spec.train.epochs - 1 and spec.evaluation.probe:
            report.update(_probe(model, spec, geometry))
        state = {"config": model.config.to_dict(), "state_dict": model.state_dict(), "epoch": epoch + 1,
                 "step": step, "train_s": train_s, "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict()}
        _report(report, state if rank == 0 else None)


def _finite(metrics: dict[str, float]) -> bool:
    """Diverged means a non-finite loss, or a non-finite gradient (the weights it updated are lost too)."""
    return math.isfinite(metrics[T.TRAIN_LOSS]) and math.isfinite(metrics[T.TRAIN_GRAD_NORM])


def _report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    """Report to Tune through Train; rank 0 attaches the checkpoint, which Train copies to storage."""
    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, Path(folder) / CHECKPOINT_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _loader(spec: StudySpec, split: str, geometry: ClipGeometry, train: bool = False,
            max_clips: int | None = None) -> DataLoader:
    dataset = spec.data.dataset(split, geometry, train=train)
    if max_clips is not None and len(dataset) > max_clips:  # the same subset in every trial
        keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:max_clips]
        dataset = Subset(dataset, keep.tolist())
    return build_loader(dataset, spec.train.batch_size, train=train, num_workers=spec.data.loader_workers)


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


def _probe(model: torch.nn.Module, spec: StudySpec, geometry: ClipGeometry) -> dict[str, float]:
    """Linear probe on frozen mean-pooled features, per input modality: `probe/{av,audio,video}_{acc,map}`."""
    ev = spec.evaluation
    splits = (ev.train_split, ev.test_split)
    train, test = (_loader(spec, split, geometry, max_clips=ev.max_clips) for split in splits)
    multilabel = train.collate_fn.multi_label  # build_loader's AVCollate knows the dataset's label format
    # All modalities' features from one pass per split: each split's clips are read and decoded once, not
    # once per modality (VGGSound's train split alone is 180k clips).
    train_x, train_y = models.extract_features(model, train, ev.probe, return_labels=True)
    test_x, test_y = models.extract_features(model, test, ev.probe, return_labels=True)
    scores = {}
    for modality in ev.probe:
        result = models.linear_probe(train_x[modality], train_y, test_x[modality], test_y, multilabel,
                                     max_iter=ev.max_iter)
        name, value = ("map", result["mAP"]) if multilabel else ("acc", result["accuracy"])
        scores[T.probe_metric(modality, name)] = value
    return scores
