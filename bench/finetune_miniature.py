"""Fine-tuning in miniature, measured without Ray: does fine-tuning from a pretrained tiny AV-MAE beat the
same MBT classifier fine-tuned from scratch (same recipe, same seed), for audiovisual, audio-only and
video-only classification on AV-Digits? The paper judges every ablation this way.

For each seed: an AV-MAE of that seed is probed at init, pretrained (`learning.pretrain`; the quickstart's
recipe by default: 420 training clips, 30 epochs, grey video) and probed again; then for each setting the
classifier is fine-tuned from its weights and from scratch (`platform/evaluation/finetune.py`,
`MINIATURE_RECIPE`). Scores are on val + test (180 unseen clips at 60 clips per digit; nothing is selected on
val). Prints per setting the fine-tuned accuracies (mean [95% t interval] over seeds), the paired gain
pretrained - scratch, and beside it the linear probe's gain pretrained - random init (mean pooling) of the
same encoders. The docs table (docs/miniature.md, "Fine-tuning in miniature") is its output:

    nice -n 5 .venv/bin/python bench/finetune_miniature.py --speech ../shared/data/fsdd/recordings \
        --seeds 0 1 2 3 --out finetune.json

`--ft-<field>` overrides a field of the fine-tuning recipe (e.g. --ft-lr 0.3 --ft-mixup-alpha 0).
AV-Digits builds go under data_cache/ (gitignored), one folder per setting, reused when there.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from avmae import models
from avmae.dashboards.stats import Interval, mean_ci, paired_difference
from avmae.platform.data import AVDigitsBuild, ClipGeometry
from avmae.platform.evaluation.finetune import finetune
from avmae.platform.evaluation.learning import Clips, Miniature, concat, load_split, pretrain, probe
from avmae.platform.evaluation.probe import encoder_features
from avmae.platform.evaluation.recipes import MINIATURE_RECIPE, miniature_recipe
from avmae.platform.study.spec import PROBE_MODALITIES

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)
# The quickstart's pretraining (docs/miniature.md, recipe A): 60 clips per digit, 30 epochs, base LR 1e-2.
QUICKSTART = Miniature(data=AVDigitsBuild(clips_per_digit=60, duration=1.0, grey=True), epochs=30)
TUNABLE = ("epochs", "warmup_epochs", "batch_size", "lr", "layer_decay", "drop_path", "label_smoothing",
           "mixup_alpha", "mixmod", "max_grad_norm", "num_bottlenecks", "fusion_layer")


def splits(m: Miniature, cache: Path) -> tuple[Clips, Clips]:
    """(train, held out = val + test) of the miniature's build, decoded into memory."""
    root = m.build(cache)
    geometry = ClipGeometry.from_input_shapes(m.config().input_shapes)
    held_out = concat(*(load_split(root, s, geometry) for s in ("val", "test")))
    return load_split(root, "train", geometry), held_out


def measure_seed(m: Miniature, seed: int, train: Clips, test: Clips, settings: list[str],
                 overrides: dict[str, Any]) -> dict:
    """One seed: probes before and after pretraining, and each setting fine-tuned pretrained and scratch."""
    config = m.config()
    torch.manual_seed(seed)
    model = models.AVMAE(config)
    row: dict = {"probe_random_init": probe(encoder_features(model), train, test, ["mean"], settings)["mean"]}
    began = time.perf_counter()
    row["pretrain_loss"] = pretrain(model, train, m, seed)[-1]
    row["pretrain_s"] = round(time.perf_counter() - began, 1)
    row["probe_pretrained"] = probe(encoder_features(model), train, test, ["mean"], settings)["mean"]
    encoder = model.state_dict()
    for s in settings:
        recipe = miniature_recipe(s, **overrides)
        for name, weights in (("scratch", None), ("pretrained", encoder)):
            result = finetune(config, recipe, train, test, seed, weights)
            row.setdefault(name, {})[s] = asdict(result)
            log.info("seed %d %-5s %-10s acc %.3f  loss %.3f -> %.3f  %.0f s", seed, s, name, result.accuracy,
                     result.losses[0], result.losses[-1], result.seconds)
    return row


def signed(interval: Interval) -> str:
    """'+0.106 [0.067, 0.144]': a difference's interval with its sign."""
    return ("+" if interval.mean >= 0 else "") + interval.text()


def table(rows: dict[int, dict], settings: list[str]) -> list[str]:
    """Per setting: fine-tuned scratch and pretrained (mean [95% CI]), the paired gains of fine-tuning and
    of the probe."""
    lines = ["| setting | scratch | pretrained | fine-tuning gain | probe gain (pretrained - random init) |",
             "|---|---|---|---|---|"]
    for s in settings:
        acc = {k: {seed: r[k][s]["accuracy"] for seed, r in rows.items()} for k in ("scratch", "pretrained")}
        probes = {k: {seed: r[k][s] for seed, r in rows.items()}
                  for k in ("probe_pretrained", "probe_random_init")}
        ft_gain = paired_difference(acc["pretrained"], acc["scratch"]).diff
        probe_gain = paired_difference(probes["probe_pretrained"], probes["probe_random_init"]).diff
        mark = " ↑" if ft_gain.lo > 0 else ""
        lines.append(f"| {s} | {mean_ci(list(acc['scratch'].values())).text()} | "
                     f"{mean_ci(list(acc['pretrained'].values())).text()} | **{signed(ft_gain)}**{mark} | "
                     f"{signed(probe_gain)} |")
    return lines


def parse() -> tuple[dict[str, Any], Miniature, dict[str, Any]]:
    """(the run's own options, the pretraining Miniature, the fine-tuning recipe's overrides)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", choices=PROBE_MODALITIES, default=list(PROBE_MODALITIES))
    parser.add_argument("--cache", type=Path, default=REPO / "data_cache" / "miniature")
    parser.add_argument("--out", type=Path, help="also write every score as JSON here")
    add_flags(parser, QUICKSTART.settings(), "")
    recipe = miniature_recipe()
    add_flags(parser, {f: getattr(recipe, f) for f in TUNABLE}, "ft-")
    args = vars(parser.parse_args())
    own = {k: args.pop(k) for k in ("seeds", "settings", "cache", "out")}
    overrides = {f: args.pop(f"ft_{f}") for f in TUNABLE}
    overrides["mixmod"] = overrides["mixmod"] and overrides["mixup_alpha"] > 0  # no mixing: nothing to mix
    data = AVDigitsBuild(**{f: args.pop(f) for f in AVDigitsBuild.model_fields})
    speech = str(Path(args.pop("speech")).resolve()) if args["speech"] else args.pop("speech")
    return own, Miniature(**args, data=data, speech=speech), overrides


def add_flags(parser: argparse.ArgumentParser, defaults: dict[str, Any], prefix: str) -> None:
    """One `--{prefix}{field}` option per field, typed by its default (booleans get --no-...)."""
    for field, value in defaults.items():
        flag = f"--{prefix}{field.replace('_', '-')}"
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument(flag, type=type(value) if value is not None else str, default=value)


def main() -> None:
    own, m, overrides = parse()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)  # a shared 2-core machine: tiny tensors gain nothing from threads
    began = time.perf_counter()
    train, test = splits(m, own["cache"])
    rows = {seed: measure_seed(m, seed, train, test, own["settings"], overrides) for seed in own["seeds"]}
    total_s = round(time.perf_counter() - began, 1)
    recipe = {**MINIATURE_RECIPE, **overrides}
    print(json.dumps({"pretraining": m.settings(), "finetuning": recipe, "seeds": own["seeds"],
                      "clips": {"train": len(train["label"]), "held_out": len(test["label"])},
                      "pretrain_s": {k: r["pretrain_s"] for k, r in rows.items()}, "total_s": total_s}))
    print("\n".join(table(rows, own["settings"])))
    if own["out"]:
        own["out"].write_text(json.dumps({"pretraining": m.settings(), "finetuning": recipe, "rows": rows},
                                         indent=1))


if __name__ == "__main__":
    main()
