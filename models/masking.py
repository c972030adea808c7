"""Random per-sample token masking (MAE): argsort of uniform noise, keep a fixed count, gather.

A fixed visible count per batch keeps shapes static, so there is no Python loop and no ragged batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .config import masked_count


@dataclass
class Masked:
    visible: Tensor  # [B, N - int(r*N), D] tokens the encoder sees, in shuffled order
    mask: Tensor  # [B, N] float, 1 = masked (to reconstruct), 0 = visible; raster order
    ids_restore: Tensor  # [B, N] permutation that puts [visible, masked] back into raster order


def random_masking(tokens: Tensor, ratio: float, generator: torch.Generator | None = None,
                   field: str = "mask_ratio") -> Masked:
    """Mask int(ratio*N) tokens per sample uniformly at random; `generator` makes it reproducible."""
    b, n, d = tokens.shape
    n_keep = n - masked_count(n, ratio, field)
    noise = torch.rand(b, n, device=tokens.device, generator=generator)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :n_keep]
    visible = tokens.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
    mask = torch.ones(b, n, device=tokens.device)
    mask[:, :n_keep] = 0
    return Masked(visible, mask.gather(1, ids_restore), ids_restore)


def unshuffle(visible: Tensor, mask_token: Tensor, ids_restore: Tensor) -> Tensor:
    """Append mask tokens after the visible ones and scatter all back into raster order."""
    b, n = ids_restore.shape
    fill = mask_token.to(visible.dtype).expand(b, n - visible.shape[1], -1)
    x = torch.cat([visible, fill], dim=1)
    return x.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
