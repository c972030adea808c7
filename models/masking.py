"""Random per-sample token masking (MAE): argsort of uniform noise, keep a fixed count.

A fixed visible count per batch keeps shapes static, so there is no Python loop and no ragged batch. The
masking draws positions only; the tokeniser embeds just the kept patches (`_Tokenizer.embed(patches, ids)`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .config import masked_count


@dataclass
class Masked:
    ids_keep: Tensor  # [B, N - int(r*N)] positions the encoder sees, in shuffled order
    mask: Tensor  # [B, N] float, 1 = masked (to reconstruct), 0 = visible; raster order
    ids_restore: Tensor  # [B, N] permutation that puts [visible, masked] back into raster order


def random_masking(batch: int, num_tokens: int, ratio: float, device: torch.device,
                   generator: torch.Generator | None = None, field: str = "mask_ratio") -> Masked:
    """Mask int(ratio*N) of N positions per sample uniformly at random; `generator` makes it reproducible."""
    n_keep = num_tokens - masked_count(num_tokens, ratio, field)
    noise = torch.rand(batch, num_tokens, device=device, generator=generator)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    mask = torch.ones(batch, num_tokens, device=device)
    mask[:, :n_keep] = 0
    return Masked(ids_shuffle[:, :n_keep], mask.gather(1, ids_restore), ids_restore)


def gather_tokens(x: Tensor, ids: Tensor) -> Tensor:
    """x [B, N, D], ids [B, n] -> [B, n, D]: the rows of each sample at its positions."""
    return x.gather(1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def unshuffle(visible: Tensor, mask_token: Tensor, ids_restore: Tensor) -> Tensor:
    """Append mask tokens after the visible ones and scatter all back into raster order."""
    b, n = ids_restore.shape
    fill = mask_token.to(visible.dtype).expand(b, n - visible.shape[1], -1)
    return gather_tokens(torch.cat([visible, fill], dim=1), ids_restore)
