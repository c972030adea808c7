"""Reconstruction losses: MSE over the positions to reconstruct only, normalised as the authors' code
(sum of squared errors / (number of loss tokens in the batch x patch dim), i.e. an element-wise mean)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def standardise_patches(target: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-patch standardisation (MAE's `norm_pix_loss`; off in the released AV-MAE configs)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True, unbiased=False)
    return (target - mean) / (var + eps).sqrt()


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """pred/target [B, N, P], mask [B, N] (1 = in the loss). Computed in fp32 even under autocast."""
    err = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=-1)  # one fused kernel
    mask = mask.float()
    return (err * mask).sum() / mask.sum()


def inpainting_mask(batch: int, num_tokens: int, num_context: int, device: torch.device) -> Tensor:
    """[B, N_k] loss mask of the inpainting placement: positions >= v (mask-token slots) count."""
    return (torch.arange(num_tokens, device=device) >= num_context).float().expand(batch, -1)
