"""One rank of one fine-tuning run, without Ray: an MBT classifier (`models.MBTClassifier`) for one setting,
from a pretraining trial's checkpoint or from random init (the from-scratch row), trained with the paper's
recipe (`models.finetune_step`) on the study's train split and scored on its test split after every epoch.
`finetune_ray` is the Ray layer on top, as `ray_worker` is for `trainer`.

Seeded like pretraining: the classifier's init and data order by the job's seed, each epoch's mixup weights
and stochastic depth by (seed, rank, epoch) (`spec.rank_seed`), so a run resumed at epoch e draws what an
uninterrupted one draws there, and a pretrained run and its scratch row of one seed differ only in the
weights the encoder gives. Each epoch's report carries the MLflow record of every epoch so far in the
checkpoint (`records`), as pretraining's does: a killed driver's epochs are logged late, once.
"""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from avmae import models
from avmae.models.downstream import select
from avmae.platform.data import ClipGeometry, build_from_config, build_loader
from avmae.platform.data.sampling import train_sampler
from avmae.platform.evaluation.finetune import build_classifier
from avmae.platform.study.spec import StudySpec, rank_seed
from avmae.platform.tracking import layout as T
from avmae.platform.train.reports import BACKLOG, REPORTED_AT
from avmae.platform.train.trainer import CHECKPOINT_FILE, CheckpointState, Placement, SendReport
from torch.utils.data import DataLoader, DistributedSampler

FT_CHECKPOINT_FILE = "finetune.pt"


@dataclass(frozen=True)
class FinetuneJob:
    """One fine-tuning run: a cell's pretrained repeat (or the scratch row) x setting x LR."""

    cell: str  # cell key, or layout.SCRATCH_CELL
    setting: str  # av, audio, video
    repeat: int  # k: paired with repeat k of every cell and of the scratch row
    seed: int
    lr: float
    model: dict[str, Any]  # scratch row: the AVMAEConfig.to_dict() it is built over ({}: the checkpoint's)
    checkpoint: str | None = None  # the pretraining trial's checkpoint folder; None: from scratch
    pretrained_trial: str | None = None
    pretrained_run: str | None = None

    @property
    def scratch(self) -> bool:
        return self.checkpoint is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Finetuner:
    """One rank's state of a fine-tuning run."""

    spec: StudySpec
    job: FinetuneJob
    recipe: models.FinetuneConfig
    rank: int
    world: int
    device: torch.device
    model: models.MBTClassifier  # unwrapped: evaluation and checkpoints
    wrapped: torch.nn.Module  # through DDP when world > 1
    optim: models.FinetuneOptim
    loader: DataLoader
    sampler: DistributedSampler
    test_loader: DataLoader | None  # rank 0 scores the test split
    start_epoch: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    backlog: list[dict[str, Any]] = field(default_factory=list)

    def state(self, epoch: int) -> bytes:
        buffer = io.BytesIO()
        torch.save({"state_dict": self.model.state_dict(), "optimizer": self.optim.optimizer.state_dict(),
                    "scheduler": self.optim.scheduler.state_dict(), "epoch": epoch, "records": self.records},
                   buffer)
        return buffer.getvalue()

    def restore(self, data: bytes) -> None:
        state = torch.load(io.BytesIO(data), map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["state_dict"])
        self.optim.optimizer.load_state_dict(state["optimizer"])
        self.optim.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch, self.records = state["epoch"], state["records"]
        self.backlog = list(self.records) if self.rank == 0 else []


def pretraining(job: FinetuneJob) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """(the AV-MAE config the classifier is built over, the encoder weights it starts from): both from the
    job's pretraining checkpoint, or the job's model and None for the scratch row."""
    if job.checkpoint is None:
        return job.model, None
    state = CheckpointState.load(Path(job.checkpoint) / CHECKPOINT_FILE)
    return state.config, state.state_dict


def build_finetuner(spec: StudySpec, job: FinetuneJob, rank: int, world: int,
                    placement: Placement | None = None, checkpoint: bytes | None = None) -> Finetuner:
    """Rank `rank` of `world`: the classifier (seeded, from the job's encoder if any), this rank's loader of
    the train split (a global batch of the recipe's size, split over the ranks), the recipe's optimiser and
    schedule, DDP through `placement`, then `checkpoint` (a `Finetuner.state`) if given."""
    placement = placement or Placement()
    ft = spec.finetune
    recipe = ft.resolve(job.setting, job.lr)
    config, encoder = pretraining(job)
    pretrained = models.AVMAEConfig(**config)
    model = build_classifier(pretrained, recipe, job.seed, encoder).to(placement.device)
    shapes = replace(pretrained, num_frames=recipe.num_frames).input_shapes  # both modalities: the loader's
    geometry = ClipGeometry.from_input_shapes(shapes, frame_stride=recipe.frame_stride)
    dataset = build_from_config(spec.data, ft.train_split, geometry, train=True)
    sampler = train_sampler(dataset, world, rank, job.seed)
    loader = build_loader(dataset, recipe.batch_size // world, train=True,
                          num_workers=spec.data.loader_workers, sampler=sampler)
    if len(loader) == 0:
        raise ValueError(f"split {ft.train_split!r} holds fewer clips than one fine-tuning batch "
                         f"({recipe.batch_size})")
    optim = models.build_finetune_optimizer(model, recipe, len(loader))
    test = build_from_config(spec.data, ft.test_split, geometry, train=False) if rank == 0 else None
    worker = Finetuner(
        spec=spec, job=job, recipe=recipe, rank=rank, world=world, device=placement.device, model=model,
        wrapped=placement.wrap_model(model, True), optim=optim, loader=placement.wrap_loader(loader),
        sampler=sampler, test_loader=None if test is None else build_loader(
            test, recipe.batch_size, train=False, num_workers=spec.data.loader_workers),
    )
    if checkpoint is not None:
        worker.restore(checkpoint)
    return worker


def train_epoch(w: Finetuner, epoch: int) -> float:
    """One epoch (0-based) of `finetune_step`; the mean loss over every rank's steps."""
    w.sampler.set_epoch(epoch)
    torch.manual_seed(rank_seed(w.job.seed, w.rank, epoch))  # mixup weights, stochastic depth
    amp = torch.bfloat16 if w.device.type == "cuda" else None
    losses = []
    for batch in itertools.islice(w.loader, len(w.loader)):
        clips = batch["audio"].shape[0]
        audio, video, labels = (_or_dummy(batch[k], clips).to(w.device, non_blocking=True)
                                for k in ("audio", "video", "label"))
        step = models.finetune_step(w.wrapped, w.optim, w.recipe, audio, video, labels, amp,
                                    weight=1.0 if clips else 0.0)
        if clips:
            losses.append(step.loss)
    return mean_over_ranks(losses, w.device)


def _or_dummy(x: torch.Tensor, clips: int) -> torch.Tensor:
    """`x`, or one all-zero clip (class 0) where every clip of the batch was broken: the rank still steps,
    with zero weight, so the DDP ranks stay in lockstep."""
    return x if clips else torch.zeros((1, *x.shape[1:]), dtype=x.dtype)


def mean_over_ranks(losses: list[torch.Tensor], device: torch.device) -> float:
    """The mean of every rank's step losses: a collective where a process group runs (DDP ranks take the
    same number of steps, so all call it); NaN where no rank stepped."""
    sums = torch.zeros(2, device=device)
    if losses:
        sums[0], sums[1] = torch.stack(losses).float().sum(), len(losses)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    total, steps = sums.tolist()
    return total / steps if steps else float("nan")


@torch.no_grad()
def test_score(w: Finetuner) -> dict[str, float]:
    """Top-1 accuracy (mAP for a multi-label recipe) on the test split, each clip once, in eval mode."""
    w.model.eval()
    logits, labels = [], []
    for batch in w.test_loader:
        if batch["audio"].shape[0] == 0:
            continue
        given = select(w.recipe.modality, batch["audio"], batch["video"])
        inputs = {m: x.to(w.device) for m, x in given.items() if x is not None}
        logits.append(w.model(**inputs).float().cpu())
        labels.append(batch["label"])
    z, y = torch.cat(logits), torch.cat(labels)
    if not w.recipe.multilabel:
        return {T.FT_TEST_ACC: float((z.argmax(dim=-1) == y).float().mean())}
    from sklearn.metrics import average_precision_score

    present = y.sum(dim=0) > 0
    return {T.FT_TEST_MAP: float(average_precision_score(y[:, present], z[:, present], average="macro"))}


def run_finetune(w: Finetuner, send: SendReport, clock: Callable[[], float] = time.time) -> None:
    """The epochs left, each reported through `send` with rank 0's checkpoint: {epoch, train loss, test
    score, the epoch's MLflow record}; a run restored after its last epoch reports that epoch again."""
    epochs = w.recipe.epochs
    if w.start_epoch >= epochs and w.records:
        send({**w.records[-1]["metrics"], BACKLOG: w.backlog}, None)
        return
    for epoch in range(w.start_epoch, epochs):
        loss = train_epoch(w, epoch)
        metrics = {T.EPOCH: float(epoch + 1), T.FT_TRAIN_LOSS: loss}
        if w.rank == 0:
            metrics.update(test_score(w))
        record = {"epoch": epoch + 1, "time_ms": int(clock() * 1000), "metrics": metrics, "history": []}
        result = {**metrics, REPORTED_AT: record["time_ms"] / 1000}
        if w.rank != 0:
            send(result, None)
            continue
        w.records.append(record)
        result[BACKLOG], w.backlog = [*w.backlog, record], []
        send(result, w.state(epoch + 1))
