"""The linear probe of frozen features, one protocol for every score a study shows: a trial's encoder (every
`probe_every` epochs and after the last), and the two reference rows measured beside it on the same splits
and clips: a randomly initialised encoder and the raw input (the model's own log-mel and pixel patches).

Without the references a score cannot be read: 0.7 on a 10-class task is a learned representation only if an
untrained encoder and the pixels themselves score well below it.

Pooling (`evaluation.pooling`) is the same for all three. `mean` (the default) averages each modality's
tokens, as the paper's finetuning does (GAP): the raw input then reads near chance, and only what the encoder
learned lifts a score. On the AV-Digits miniature it puts pretrained encoders 0.07-0.14 above their random
init in every setting, 95% intervals over 5 seeds excluding zero (docs/miniature.md). `tokens` keeps every
token in its place (per time step and frequency band, per tubelet position): higher scores for every row,
but mostly the random projection of the patches, so the raw input matches or beats the pretrained encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from avmae import models
from avmae.models.avmae import build_tokenizers
from avmae.models.downstream import select
from avmae.platform.data import ClipGeometry, build_from_config, build_loader
from avmae.platform.study.spec import StudySpec
from avmae.platform.tracking import layout as T
from torch import Tensor
from torch.utils.data import DataLoader, Subset

Pooling = Literal["mean", "tokens"]
# batches, modality settings (av, audio, video), pooling -> ({setting: [N, F] features}, labels)
Featurizer = Callable[[Iterable[Mapping[str, Any]], Sequence[str], Pooling], tuple[dict[str, Tensor], Tensor]]


def pool(tokens: Mapping[str, Tensor], pooling: Pooling) -> Tensor:
    """[B, F]: each modality's [B, N, D] tokens averaged (`mean`) or flattened in order (`tokens`), the
    modalities side by side (their widths may differ: raw audio and video patches do)."""
    return torch.cat([t.mean(dim=1) if pooling == "mean" else t.flatten(1) for t in tokens.values()], dim=1)


def eval_loader(spec: StudySpec, split: str, geometry: ClipGeometry,
                max_clips: int | None = None) -> DataLoader:
    """A split in fixed order, unaugmented; with `max_clips`, the same random subset in every trial."""
    dataset = build_from_config(spec.data, split, geometry, train=False)
    if max_clips is not None and len(dataset) > max_clips:
        keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:max_clips]
        dataset = Subset(dataset, keep.tolist())
    return build_loader(dataset, spec.train.batch_size, train=False, num_workers=spec.data.loader_workers)


Batches = Iterable[Mapping[str, Any]]  # {"audio", "video", "label"} each, e.g. a loader


def probe_accuracy(featurize: Featurizer, train: Batches, test: Batches,
                   settings: Sequence[str], pooling: Pooling, multilabel: bool = False,
                   max_iter: int = 200) -> dict[str, float]:
    """{setting: accuracy (mAP if multi-label)} of logistic regression fit on `train`, scored on `test`;
    each is read once for all settings."""
    train_x, train_y = featurize(train, settings, pooling)
    test_x, test_y = featurize(test, settings, pooling)
    key = "mAP" if multilabel else "accuracy"
    return {s: models.linear_probe(train_x[s], train_y, test_x[s], test_y, multilabel, max_iter=max_iter)[key]
            for s in settings}


def probe_scores(featurize: Featurizer, spec: StudySpec, geometry: ClipGeometry) -> dict[str, float]:
    """`probe/{av,audio,video}_{acc,map}` of one featurizer on the probe's train and test splits."""
    ev = spec.evaluation
    splits = (ev.train_split, ev.test_split)
    train, test = (eval_loader(spec, split, geometry, ev.max_clips) for split in splits)
    multilabel = train.collate_fn.multi_label  # build_loader's AVCollate knows the dataset's label format
    scores = probe_accuracy(featurize, train, test, ev.probe, ev.pooling, multilabel, ev.max_iter)
    return {T.probe_metric(s, "map" if multilabel else "acc"): v for s, v in scores.items()}


def encoder_features(model: torch.nn.Module) -> Featurizer:
    """The frozen encoder's tokens (eval mode, masking off), each setting through its own forward pass."""

    @torch.no_grad()
    def featurize(batches: Iterable[Mapping[str, Any]], settings: Sequence[str],
                  pooling: Pooling) -> tuple[dict[str, Tensor], Tensor]:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        feats: dict[str, list[Tensor]] = {s: [] for s in settings}
        labels = []
        try:
            for batch in batches:
                audio, video = (batch[m].to(device) for m in ("audio", "video"))
                for s in settings:
                    inputs = {m: x for m, x in select(s, audio, video).items() if x is not None}
                    feats[s].append(pool(model.forward_features(**inputs), pooling).float().cpu())
                labels.append(torch.as_tensor(batch["label"]))
        finally:
            model.train(was_training)
        return {s: torch.cat(f) for s, f in feats.items()}, torch.cat(labels)

    return featurize


def raw_features(config: models.AVMAEConfig) -> Featurizer:
    """The raw input through the model's own patchify, pooled as the encoder's tokens are."""
    tokenizers = build_tokenizers(config)

    @torch.no_grad()
    def featurize(batches: Iterable[Mapping[str, Any]], settings: Sequence[str],
                  pooling: Pooling) -> tuple[dict[str, Tensor], Tensor]:
        feats: dict[str, list[Tensor]] = {s: [] for s in settings}
        labels = []
        for batch in batches:
            patches = {m: tokenizers[m].patchify(batch[m]).float() for m in ("audio", "video")}
            for s in settings:
                feats[s].append(pool({m: p for m, p in patches.items() if s in ("av", m)}, pooling))
            labels.append(torch.as_tensor(batch["label"]))
        return {s: torch.cat(f) for s, f in feats.items()}, torch.cat(labels)

    return featurize


def baseline_scores(spec: StudySpec, seeds: Sequence[int]) -> dict[str, dict[int, dict[str, float]]]:
    """{"random_init": {k: scores}, "raw_input": {0: scores}} for the study's first cell's architecture: the
    randomly initialised encoder with each repeat's seed (k indexes `seeds`), the raw input once (it has no
    seed). Run on the driver before the trials."""
    config = spec.resolve_model(spec.cells()[0])
    geometry = ClipGeometry.from_input_shapes(config.input_shapes, frame_stride=spec.data.frame_stride)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    random_init = {}
    for k, seed in enumerate(seeds):
        torch.manual_seed(seed)
        random_init[k] = probe_scores(encoder_features(models.AVMAE(config).to(device)), spec, geometry)
    return {"random_init": random_init, "raw_input": {0: probe_scores(raw_features(config), spec, geometry)}}
