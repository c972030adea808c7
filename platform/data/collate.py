"""Batches from dataset items: `audio` [B, A, mel] float, `video` [B, 3, T, S, S] uint8, `label` ([B] int64
or [B, C] multi-hot), `index` [B], `n_broken` (int: items of this batch that were skipped) and `broken`
[(path, reason), ...]. A batch can hold fewer than `batch_size` clips, even zero, when clips are broken.

Its own module (torch only) so that the GPU machine's loader benchmark collates exactly as the platform does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import default_collate

from .geometry import ClipGeometry


class Collated(dict):
    """A batch already assembled (by `batch_reader.CachedBatches.__getitems__`): AVCollate passes it on."""


@dataclass(frozen=True)
class AVCollate:
    """Drops broken items and counts them; knows the shapes so an all-broken batch is still well-formed."""

    geometry: ClipGeometry
    num_classes: int
    multi_label: bool

    def __call__(self, items: list[dict[str, Any]] | Collated) -> dict[str, Any]:
        if isinstance(items, Collated):
            return dict(items)
        good = [item for item in items if "broken" not in item]
        broken = [item["broken"] for item in items if "broken" in item]
        if good:
            # Video items are [3, T, H, W] views of decoded [T, H, W, 3] frames: stacking those frames as they
            # lie in memory is a plain copy (a strided gather into [3, T, H, W] took 43% of a worker's time at
            # the paper's geometry); the batch is the same [B, 3, T, H, W] tensor in channels_last_3d memory.
            batch = default_collate([
                {"audio": item["audio"], "video": item["video"].permute(1, 2, 3, 0), "label": item["label"],
                 "index": item["index"]}
                for item in good
            ])
            batch["video"] = batch["video"].permute(0, 4, 1, 2, 3)
        else:
            shapes = self.geometry.input_shapes
            label = (
                torch.zeros(0, self.num_classes) if self.multi_label else torch.zeros(0, dtype=torch.int64)
            )
            batch = {
                "audio": torch.zeros(0, *shapes["audio"]),
                "video": torch.zeros(0, *shapes["video"], dtype=torch.uint8),
                "label": label,
                "index": torch.zeros(0, dtype=torch.int64),
            }
        return {**batch, "n_broken": len(broken), "broken": broken}
