"""The AV-Digits miniature, measured without Ray: does pretraining the tiny AV-MAE beat a randomly initialised
encoder under the study's own probe, and does the raw input already solve the task?

For each seed: the random-init encoder of that seed is probed, then pretrained from that same init (the
recipe and step the platform trains with, `platform/evaluation/learning.py`) on the train split held in memory
(unaugmented, centred windows), and probed again; the raw input is probed once. Prints, per pooling and
probe setting, the mean over seeds with 95% t intervals and the paired difference pretrained - random init.
The defaults are the recipe of experiments/miniature.yaml. The docs table (docs/miniature.md) is its output:

    nice -n 5 .venv/bin/python bench/miniature.py --speech ../shared/data/fsdd/recordings --seeds 0 1 2 3 4

AV-Digits builds go under data_cache/ (gitignored), one folder per setting, reused when there.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from avmae.dashboards.stats import mean_ci, paired_difference
from avmae.platform.data import AVDigitsBuild
from avmae.platform.evaluation.learning import Miniature, measure
from avmae.platform.evaluation.probe import Pooling
from avmae.platform.study.spec import PROBE_MODALITIES

REPO = Path(__file__).resolve().parents[1]


def summary(rows: dict, pooling: Pooling) -> list[str]:
    """One line per setting: raw, random init and pretrained (mean [95% CI] over seeds), their difference."""
    lines = []
    for s in PROBE_MODALITIES:
        pre = {k: v[pooling][s] for k, v in rows["pretrained"].items()}
        rnd = {k: v[pooling][s] for k, v in rows["random_init"].items()}
        diff = paired_difference(pre, rnd, "pretrained", "random_init").diff
        lines.append(f"{pooling:6s} {s:5s} raw {rows['raw_input'][pooling][s]:.3f}"
                     f"  random init {mean_ci(list(rnd.values())).text()}"
                     f"  pretrained {mean_ci(list(pre.values())).text()}  difference {diff.text()}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cache", type=Path, default=REPO / "data_cache" / "miniature")
    parser.add_argument("--out", type=Path, help="also write every score as JSON here")
    parser.add_argument("--poolings", nargs="+", choices=["tokens", "mean"], default=["tokens", "mean"],
                        help="probe pooling(s); features are computed once per pooling")
    defaults = Miniature()
    for field, value in defaults.settings().items():  # the build's fields and the recipe's, with defaults
        flag = f"--{field.replace('_', '-')}"
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument(flag, type=type(value) if value is not None else str, default=value)
    args = vars(parser.parse_args())
    seeds, cache, out, poolings = (args.pop(k) for k in ("seeds", "cache", "out", "poolings"))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)  # a shared 2-core machine: tiny tensors gain nothing from threads
    data = AVDigitsBuild(**{f: args.pop(f) for f in AVDigitsBuild.model_fields})
    m = Miniature(**{**args, "data": data, "speech": str(Path(args["speech"]).resolve()) if args["speech"]
                     else None})
    began = time.perf_counter()
    rows = measure(m, seeds, cache, poolings)
    rows["total_s"] = round(time.perf_counter() - began, 1)
    print(json.dumps({"settings": m.settings(), "seeds": seeds, "clips": rows["clips"],
                      "pretrain_s": rows["pretrain_s"], "total_s": rows["total_s"],
                      "final_loss": {k: round(v[-1], 4) for k, v in rows["losses"].items()}}))
    print("\n".join(line for p in poolings for line in summary(rows, p)))
    if out:
        out.write_text(json.dumps({"settings": m.settings(), **rows}, indent=1))


if __name__ == "__main__":
    main()
