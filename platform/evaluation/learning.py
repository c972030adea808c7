"""Does pretraining learn? The AV-Digits miniature pretrained without Ray, on clips held in memory, and the
study's probe before and after: the one check that catches a training bug no loss curve shows (a schedule, a
mask, a loss on the wrong positions). `bench/miniature.py` measures it over seeds (docs/miniature.md);
`tests/test_learning.py` guards it in CI.

Pretraining uses what the platform trains with (`models.build_optimizer`, `warmup_cosine`, `TrainStep`) on
the train split in centred windows, unaugmented; each seed's random-init encoder is probed, then pretrained
from that same init and probed again, so the difference is paired.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from avmae import models
from avmae.platform.data import AVDigitsBuild, ClipGeometry, build_av_digits
from avmae.platform.data.loader import build_dataset
from avmae.platform.evaluation.probe import Pooling, encoder_features, probe_accuracy, raw_features
from avmae.platform.study.prepare import av_digits_build_name
from avmae.platform.study.spec import PROBE_MODALITIES

log = logging.getLogger(__name__)
Clips = dict[str, torch.Tensor]  # audio [N, A, mel], video uint8 [N, 3, T, S, S], label [N]


@dataclass(frozen=True)
class Miniature:
    """One measured configuration: the AV-Digits build, and the tiny model with its pretraining recipe. The
    defaults are the recipe of `experiments/miniature.yaml`."""

    speech: str | None = None
    # 1 s clips, 840 train / 180 val / 180 test; grey: with a random hue per clip the tiny MAE learns colour
    data: AVDigitsBuild = AVDigitsBuild(clips_per_digit=120, duration=1.0, grey=True)
    fusion: str = "mid"
    objective: str = "joint"
    decoder: str = "shared"
    mask_ratio_audio: float = 0.5
    mask_ratio_video: float = 0.75
    norm_targets: bool = True
    epochs: int = 40
    batch_size: int = 32
    lr: float = 1e-2  # base: lr = base x batch / 256
    warmup_epochs: float = 2.0

    def config(self) -> models.AVMAEConfig:
        return models.resolve_config("tiny", fusion=self.fusion, objective=self.objective,
                                     decoder=self.decoder, mask_ratio_audio=self.mask_ratio_audio,
                                     mask_ratio_video=self.mask_ratio_video, norm_targets=self.norm_targets)

    def settings(self) -> dict[str, Any]:
        """Every setting, flat (the build's among the recipe's): what a measurement records."""
        recipe = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "data"}
        return {**self.data.model_dump(), **recipe}

    def build(self, cache: Path) -> Path:
        """Build (or reuse) this setting's AV-Digits in a folder of its own under `cache`; returns it."""
        root = cache / av_digits_build_name(self.data, self.speech)
        build_av_digits(root, self.data, speech=self.speech, workers=2, progress=False)
        return root


def load_split(root: Path, split: str, geometry: ClipGeometry) -> Clips:
    """A split decoded once into memory, centred windows (the probe's view); kept beside the build."""
    saved = root / f"decoded_{split}_{geometry.audio_frames}x{geometry.num_frames}x{geometry.img_size}.pt"
    if saved.is_file():
        return torch.load(saved)
    dataset = build_dataset("av-digits", root, None, split, geometry, train=False)
    items = [item for item in map(dataset.__getitem__, range(len(dataset))) if "broken" not in item]
    if len(items) < len(dataset):  # each broken clip was logged by the dataset
        log.warning("%s: %d of %d clips broken, skipped", split, len(dataset) - len(items), len(dataset))
    clips = {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in ("audio", "video", "label")}
    partial = saved.with_suffix(f".{os.getpid()}.partial")  # concurrent runs never read a half-written file
    torch.save(clips, partial)
    partial.replace(saved)
    return clips


def batches(clips: Clips, batch_size: int, order: torch.Tensor | None = None) -> Iterator[Clips]:
    order = torch.arange(len(clips["label"])) if order is None else order
    for i in range(0, len(order), batch_size):
        yield {k: v[order[i : i + batch_size]] for k, v in clips.items()}


def pretrain(model: models.AVMAE, clips: Clips, m: Miniature, seed: int) -> list[float]:
    """Pretrain `model` in place on `clips` (full batches, shuffled each epoch); each epoch's mean loss."""
    steps_per_epoch = len(clips["label"]) // m.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(clips['label'])} training clips make no full batch of {m.batch_size}: lower "
                         "batch_size or raise clips_per_digit")
    optimizer = models.build_optimizer(model, m.lr, m.batch_size)
    scheduler = models.warmup_cosine(optimizer, round(m.warmup_epochs * steps_per_epoch),
                                     m.epochs * steps_per_epoch)
    step = models.TrainStep(model, optimizer, scheduler)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the masks
    losses = []
    for _ in range(m.epochs):
        order = torch.randperm(len(clips["label"]), generator=generator)[: steps_per_epoch * m.batch_size]
        total = sum(float(step(b["audio"], b["video"]).loss) for b in batches(clips, m.batch_size, order))
        losses.append(total / steps_per_epoch)
    return losses


def probe(featurize, train: Clips, test: Clips, poolings: Sequence[Pooling],
          settings: Sequence[str] = PROBE_MODALITIES) -> dict[str, dict[str, float]]:
    """{pooling: {setting: accuracy}}: one featurizer under each pooling (logistic regression)."""
    return {p: probe_accuracy(featurize, batches(train, 128), batches(test, 128), settings, p, max_iter=500)
            for p in poolings}


def concat(*splits: Clips) -> Clips:
    """Several decoded splits as one (e.g. val + test: more held-out clips for a tighter score)."""
    return {k: torch.cat([s[k] for s in splits]) for k in splits[0]}


def measure(m: Miniature, seeds: Sequence[int], cache: Path, poolings: Sequence[Pooling]) -> dict:
    """Every probe score of the three rows, the pretraining losses and the time pretraining took."""
    config = m.config()
    root = m.build(cache)
    geometry = ClipGeometry.from_input_shapes(config.input_shapes)
    train, test = load_split(root, "train", geometry), load_split(root, "test", geometry)
    rows: dict = {"raw_input": probe(raw_features(config), train, test, poolings), "random_init": {},
                  "pretrained": {}, "losses": {}, "pretrain_s": {}}
    for seed in seeds:
        torch.manual_seed(seed)
        model = models.AVMAE(config)
        rows["random_init"][seed] = probe(encoder_features(model), train, test, poolings)
        began = time.perf_counter()
        rows["losses"][seed] = pretrain(model, train, m, seed)
        rows["pretrain_s"][seed] = round(time.perf_counter() - began, 1)
        rows["pretrained"][seed] = probe(encoder_features(model), train, test, poolings)
        log.info("seed %d: pretrained in %.1f s, final loss %.4f", seed, rows["pretrain_s"][seed],
                 rows["losses"][seed][-1])
    rows["clips"] = {"train": len(train["label"]), "test": len(test["label"])}
    return rows
