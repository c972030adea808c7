"""The AV-Digits miniature, measured without Ray: does pretraining the tiny AV-MAE beat a randomly initialised
encoder under the study's own probe, and does the raw input already solve the task?

For each seed: the random-init encoder of that seed is probed, then pretrained from that same init (the
recipe and step the platform trains with: `models.build_optimizer`, `warmup_cosine`, `TrainStep`) on the
train split held in memory (unaugmented, centred windows), and probed again; the raw input is probed once.
Prints every score and, per probe setting, the mean over seeds with 95% t intervals, and the paired
difference pretrained - random init. The docs table (docs/miniature.md) is its output:

    nice -n 5 .venv/bin/python bench/miniature.py --speech ../shared/data/fsdd/recordings --seeds 0 1 2

AV-Digits builds go under data_cache/ (gitignored), one folder per setting, reused when there.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from avmae import models
from avmae.dashboards.stats import mean_ci, paired_difference
from avmae.platform.data import ClipGeometry, build_av_digits
from avmae.platform.data.loader import build_dataset
from avmae.platform.probe import Pooling, encoder_features, probe_accuracy, raw_features

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ("av", "audio", "video")
Clips = dict[str, torch.Tensor]  # audio [N, A, mel], video uint8 [N, 3, T, S, S], label [N]


@dataclass(frozen=True)
class Miniature:
    """One measured configuration: the AV-Digits build, the tiny model and its recipe, the probe."""

    speech: str | None = None
    clips_per_digit: int = 120
    duration: float = 1.0
    fusion: str = "mid"
    objective: str = "joint"
    decoder: str = "shared"
    mask_ratio_audio: float = 0.5
    mask_ratio_video: float = 0.75
    norm_targets: bool = False
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1.5e-3  # base: lr = base x batch / 256
    warmup_epochs: float = 2.0
    pooling: Pooling = "tokens"

    def config(self) -> models.AVMAEConfig:
        return models.resolve_config("tiny", fusion=self.fusion, objective=self.objective,
                                     decoder=self.decoder, mask_ratio_audio=self.mask_ratio_audio,
                                     mask_ratio_video=self.mask_ratio_video, norm_targets=self.norm_targets)

    def build(self, cache: Path) -> Path:
        """Build (or reuse) this setting's AV-Digits under `cache`; returns the build's folder."""
        name = f"{'speech' if self.speech else 'dtmf'}_{self.clips_per_digit}_{self.duration:g}s"
        root = cache / name
        build_av_digits(root, speech=self.speech, clips_per_digit=self.clips_per_digit,
                        duration=self.duration, workers=2, progress=False)
        return root


def load_split(root: Path, split: str, geometry: ClipGeometry) -> Clips:
    """A split decoded once into memory, centred windows (the probe's view); kept beside the build."""
    saved = root / f"decoded_{split}_{geometry.audio_frames}x{geometry.num_frames}x{geometry.img_size}.pt"
    if saved.is_file():
        return torch.load(saved)
    dataset = build_dataset("av-digits", root, None, split, geometry, train=False)
    items = [dataset[i] for i in range(len(dataset))]
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


def probe(featurize, train: Clips, test: Clips, pooling: Pooling) -> dict[str, float]:
    return probe_accuracy(featurize, batches(train, 128), batches(test, 128), SETTINGS, pooling,
                          max_iter=500)


def measure(m: Miniature, seeds: Sequence[int], cache: Path) -> dict:
    """Every probe score of the three rows, the pretraining losses and the time pretraining took."""
    config = m.config()
    root = m.build(cache)
    geometry = ClipGeometry.from_input_shapes(config.input_shapes)
    train, test = load_split(root, "train", geometry), load_split(root, "test", geometry)
    rows: dict = {"raw_input": probe(raw_features(config), train, test, m.pooling), "random_init": {},
                  "pretrained": {}, "losses": {}, "pretrain_s": {}}
    for seed in seeds:
        torch.manual_seed(seed)
        model = models.AVMAE(config)
        rows["random_init"][seed] = probe(encoder_features(model), train, test, m.pooling)
        began = time.perf_counter()
        rows["losses"][seed] = pretrain(model, train, m, seed)
        rows["pretrain_s"][seed] = round(time.perf_counter() - began, 1)
        rows["pretrained"][seed] = probe(encoder_features(model), train, test, m.pooling)
    rows["clips"] = {"train": len(train["label"]), "test": len(test["label"])}
    return rows


def summary(rows: dict) -> list[str]:
    """One line per setting: raw, random init and pretrained (mean [95% CI] over seeds), their difference."""
    lines = []
    for s in SETTINGS:
        pre = {k: v[s] for k, v in rows["pretrained"].items()}
        rnd = {k: v[s] for k, v in rows["random_init"].items()}
        diff = paired_difference(pre, rnd, "pretrained", "random_init").diff
        lines.append(f"{s:5s} raw {rows['raw_input'][s]:.3f}"
                     f"  random init {mean_ci(list(rnd.values())).text()}"
                     f"  pretrained {mean_ci(list(pre.values())).text()}  difference {diff.text()}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cache", type=Path, default=REPO / "data_cache" / "miniature")
    parser.add_argument("--out", type=Path, help="also write every score as JSON here")
    defaults = Miniature()
    for field, value in asdict(defaults).items():
        flag = f"--{field.replace('_', '-')}"
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument(flag, type=type(value) if value is not None else str, default=value)
    args = vars(parser.parse_args())
    seeds, cache, out = args.pop("seeds"), args.pop("cache"), args.pop("out")
    torch.set_num_threads(1)  # a shared 2-core machine: tiny tensors gain nothing from threads
    m = Miniature(**{**args, "speech": str(Path(args["speech"]).resolve()) if args["speech"] else None})
    began = time.perf_counter()
    rows = measure(m, seeds, cache)
    rows["total_s"] = round(time.perf_counter() - began, 1)
    print(json.dumps({"settings": asdict(m), "seeds": seeds, "clips": rows["clips"],
                      "pretrain_s": rows["pretrain_s"], "total_s": rows["total_s"],
                      "final_loss": {k: round(v[-1], 4) for k, v in rows["losses"].items()}}))
    print("\n".join(summary(rows)))
    if out:
        out.write_text(json.dumps({"settings": asdict(m), **rows}, indent=1))


if __name__ == "__main__":
    main()
