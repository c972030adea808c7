"""Fine-tuning in miniature, without Ray: the paper's test of a pretrained encoder. An MBT classifier
(`models.MBTClassifier`) is fine-tuned for one setting (av, audio or video) on clips held in memory
(`learning.load_split`), from an AV-MAE encoder's weights or from its own random init (the from-scratch row:
the same classifier, recipe and seed), and scored on held-out clips. `bench/finetune_miniature.py` measures
pretrained against scratch over seeds (docs/miniature.md, "Fine-tuning in miniature").

Pure torch and typed configs, no globals: a Ray Train worker can call `finetune` (or its three steps,
`build_classifier`, `train_epoch`, `evaluate`) as it is. Seeded: the same inputs and seed give the same result
(init, data order, mixup weights and stochastic depth all draw from the seed).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from avmae import models
from avmae.models.downstream import select
from avmae.models.finetune import FinetuneOptim
from avmae.platform.evaluation.learning import Clips, batches
from torch import Tensor


@dataclass(frozen=True)
class FinetuneResult:
    """One fine-tuning run: held-out top-1 accuracy, each epoch's mean training loss, wall seconds."""

    modality: str
    pretrained: bool
    seed: int
    accuracy: float
    losses: tuple[float, ...]
    seconds: float


def build_classifier(config: models.AVMAEConfig, recipe: models.FinetuneConfig, seed: int,
                     encoder: Mapping[str, Tensor] | None = None) -> models.MBTClassifier:
    """The classifier for `recipe.modality` over the pretraining architecture `config`, initialised from
    `seed`; with `encoder` (an AV-MAE state_dict of `config`) its mapped weights are then copied in. So a
    pretrained and a scratch classifier of one seed differ only in the weights the encoder provides."""
    torch.manual_seed(seed)
    if encoder is None:
        return models.MBTClassifier(config, recipe)
    return models.MBTClassifier.from_pretrained(encoder, recipe, config=config)


def steps_per_epoch(clips: Clips, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped, as in pretraining)."""
    steps = len(clips["label"]) // batch_size
    if steps == 0:
        raise ValueError(f"{len(clips['label'])} training clips make no full batch of {batch_size}")
    return steps


def train_epoch(model: models.MBTClassifier, optim: FinetuneOptim, recipe: models.FinetuneConfig,
                clips: Clips, generator: torch.Generator) -> float:
    """One epoch of `finetune_step` over `clips` shuffled by `generator` (full batches); its mean loss.
    Mixup weights and stochastic depth draw from torch's global generator (seeded by `finetune`)."""
    steps = steps_per_epoch(clips, recipe.batch_size)
    order = torch.randperm(len(clips["label"]), generator=generator)[: steps * recipe.batch_size]
    losses = [models.finetune_step(model, optim, recipe, b["audio"], b["video"], b["label"]).loss
              for b in batches(clips, recipe.batch_size, order)]
    return float(torch.stack(losses).mean())


@torch.no_grad()
def evaluate(model: models.MBTClassifier, clips: Clips, batch_size: int = 128) -> float:
    """Top-1 accuracy on `clips` in eval mode, each clip seen once (one centred window); only the
    classifier's own modalities are given to it."""
    model.eval()
    correct = 0
    for b in batches(clips, batch_size):
        inputs = {m: x for m, x in select(model.finetune.modality, b["audio"], b["video"]).items()
                  if x is not None}
        correct += int((model(**inputs).argmax(dim=-1) == b["label"]).sum())
    return correct / len(clips["label"])


def finetune(config: models.AVMAEConfig, recipe: models.FinetuneConfig, train: Clips, test: Clips, seed: int,
             encoder: Mapping[str, Tensor] | None = None) -> FinetuneResult:
    """Fine-tune `recipe.modality`'s classifier on `train` (from `encoder`'s weights, or from scratch when
    None) for `recipe.epochs`, then score it on `test`."""
    began = time.perf_counter()
    model = build_classifier(config, recipe, seed, encoder)
    optim = models.build_finetune_optimizer(model, recipe, steps_per_epoch(train, recipe.batch_size))
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # mixup weights, stochastic depth
    losses = tuple(train_epoch(model, optim, recipe, train, generator) for _ in range(recipe.epochs))
    accuracy = evaluate(model, test)
    return FinetuneResult(recipe.modality, encoder is not None, seed, accuracy, losses,
                          round(time.perf_counter() - began, 1))
