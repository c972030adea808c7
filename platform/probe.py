"""The linear probe of frozen features, one protocol for every score a study shows: a trial's encoder (every
`probe_every` epochs and after the last), and the two reference rows measured beside it on the same splits
and clips: a randomly initialised encoder and the raw input (mean-pooled log-mel and pixel patches).

Without the references a score cannot be read: 0.7 on a 10-class task is a learned representation only if an
untrained encoder and the pixels themselves score well below it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from avmae import models
from avmae.models.avmae import build_tokenizers
from avmae.platform import tracking as T
from avmae.platform.data import ClipGeometry, build_loader
from avmae.platform.spec import StudySpec
from torch import Tensor
from torch.utils.data import DataLoader, Subset

# loader, modalities -> ({modality: [N, D] features}, labels)
Featurizer = Callable[[DataLoader, Sequence[str]], tuple[dict[str, Tensor], Tensor]]


def eval_loader(spec: StudySpec, split: str, geometry: ClipGeometry,
                max_clips: int | None = None) -> DataLoader:
    """A split in fixed order, unaugmented; with `max_clips`, the same random subset in every trial."""
    dataset = spec.data.dataset(split, geometry, train=False)
    if max_clips is not None and len(dataset) > max_clips:
        keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:max_clips]
        dataset = Subset(dataset, keep.tolist())
    return build_loader(dataset, spec.train.batch_size, train=False, num_workers=spec.data.loader_workers)


def probe_scores(featurize: Featurizer, spec: StudySpec, geometry: ClipGeometry) -> dict[str, float]:
    """`probe/{av,audio,video}_{acc,map}` of one featurizer: logistic regression on the probe's train split,
    scored on its test split. Each split is read once for all modalities."""
    ev = spec.evaluation
    splits = (ev.train_split, ev.test_split)
    train, test = (eval_loader(spec, split, geometry, ev.max_clips) for split in splits)
    multilabel = train.collate_fn.multi_label  # build_loader's AVCollate knows the dataset's label format
    train_x, train_y = featurize(train, ev.probe)
    test_x, test_y = featurize(test, ev.probe)
    scores = {}
    for modality in ev.probe:
        result = models.linear_probe(train_x[modality], train_y, test_x[modality], test_y, multilabel,
                                     max_iter=ev.max_iter)
        name, value = ("map", result["mAP"]) if multilabel else ("acc", result["accuracy"])
        scores[T.probe_metric(modality, name)] = value
    return scores


def encoder_features(model: torch.nn.Module) -> Featurizer:
    """Mean-pooled tokens of the frozen encoder (masking off), per modality setting."""

    def featurize(loader: DataLoader, modalities: Sequence[str]) -> tuple[dict[str, Tensor], Tensor]:
        return models.extract_features(model, loader, list(modalities), return_labels=True)

    return featurize


def raw_features(config: models.AVMAEConfig) -> Featurizer:
    """The raw input through the model's own patchify: each modality's patches averaged over positions; the
    audiovisual setting concatenates the two (their widths differ, so they are not averaged)."""
    tokenizers = build_tokenizers(config)

    @torch.no_grad()
    def featurize(loader: DataLoader, modalities: Sequence[str]) -> tuple[dict[str, Tensor], Tensor]:
        feats: dict[str, list[Tensor]] = {m: [] for m in modalities}
        labels = []
        for batch in loader:
            pooled = {m: tokenizers[m].patchify(batch[m]).float().mean(dim=1) for m in ("audio", "video")}
            pooled["av"] = torch.cat([pooled["audio"], pooled["video"]], dim=1)
            for m in modalities:
                feats[m].append(pooled[m])
            labels.append(torch.as_tensor(batch["label"]))
        return {m: torch.cat(f) for m, f in feats.items()}, torch.cat(labels)

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
