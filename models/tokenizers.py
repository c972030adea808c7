"""Patch tokenisers: patchify, then a linear patch embedding, plus fixed 1-D sinusoidal positional embeddings.

Audio: a log-mel [B, T, F] is a 1-channel image with time as rows; 16x16 patches, time-major tokens,
trailing time bins that do not fill a patch are dropped (1000x128 -> 62x8 = 496 tokens).
Video: [B, 3, T, H, W], uint8 pixels or floats in [-1, 1]; 2x16x16 tubelets, tokens in (t, h, w) raster order.

The embedding is the authors' kernel=stride convolution written as what it is, one matrix applied to each
flattened patch (Scenic's conv kernel [t, h, w, c, D] is this matrix transposed). Because it acts on each
patch alone, the model can mask first and embed only the visible patches (`embed(patches, ids)`): the same
tokens as embedding everything and then gathering, for a tenth of the work at video mask ratio 0.9, and the
patches double as the reconstruction targets.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .masking import gather_tokens


def sincos_1d(num_positions: int, dim: int) -> Tensor:
    """MAE's 1-D sin-cos table [1, N, dim]: fixed, so any geometry can be rebuilt without a checkpoint."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = torch.arange(num_positions, dtype=torch.float64)[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float().unsqueeze(0)


def video_to_unit_range(video: Tensor) -> Tensor:
    """uint8 pixels [0, 255] -> float [-1, 1] (floats pass through). Loaders ship uint8, a quarter of the
    bytes, and the conversion runs here on the model's device (fused into patchify under torch.compile)."""
    return video.float().div(127.5).sub(1.0) if video.dtype == torch.uint8 else video


class _Tokenizer(nn.Module):
    """Linear patch embedding + fixed positional embedding (+ optional learned modality embedding)."""

    def __init__(self, grid: tuple[int, ...], patch_dim: int, embed_dim: int, modality_embed: bool) -> None:
        super().__init__()
        self.grid, self.num_tokens, self.patch_dim = grid, math.prod(grid), patch_dim
        self.proj = nn.Linear(patch_dim, embed_dim)  # xavier-uniform, zero bias: init_vit_weights, as MAE
        # Non-persistent: checkpoints stay loadable under another input geometry.
        self.register_buffer("pos_embed", sincos_1d(self.num_tokens, embed_dim), persistent=False)
        self.modality_embed = nn.Parameter(torch.zeros(1, 1, embed_dim)) if modality_embed else None
        if self.modality_embed is not None:
            nn.init.normal_(self.modality_embed, std=0.02)

    def patchify(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def embed(self, patches: Tensor, ids: Tensor | None = None) -> Tensor:
        """[B, N, P] patches -> [B, N, D] tokens; with `ids` [B, n], only those positions -> [B, n, D]."""
        pos = self.pos_embed.expand(patches.shape[0], -1, -1)
        if ids is not None:
            patches, pos = gather_tokens(patches, ids), gather_tokens(pos, ids)
        tokens = self.proj(patches) + pos
        return tokens if self.modality_embed is None else tokens + self.modality_embed

    def forward(self, x: Tensor) -> Tensor:
        """Raw input -> all [B, N, D] tokens with positional embedding (downstream: no masking)."""
        return self.embed(self.patchify(x))


class AudioTokenizer(_Tokenizer):
    def __init__(self, frames: int, mel_bins: int, embed_dim: int, patch: int = 16,
                 modality_embed: bool = False) -> None:
        super().__init__((frames // patch, mel_bins // patch), patch * patch, embed_dim, modality_embed)
        self.patch = patch

    def crop(self, audio: Tensor) -> Tensor:
        return audio[:, : self.grid[0] * self.patch]

    def patchify(self, audio: Tensor) -> Tensor:
        """[B, T, F] -> [B, N, p*p] patches (time-major tokens, (t, f) inside a patch)."""
        (gt, gf), p = self.grid, self.patch
        x = self.crop(audio).reshape(audio.shape[0], gt, p, gf, p)
        return x.permute(0, 1, 3, 2, 4).reshape(audio.shape[0], gt * gf, p * p)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """Inverse of `patchify`: [B, N, p*p] -> [B, T', F] (T' = cropped length)."""
        (gt, gf), p = self.grid, self.patch
        x = patches.reshape(patches.shape[0], gt, gf, p, p).permute(0, 1, 3, 2, 4)
        return x.reshape(patches.shape[0], gt * p, gf * p)


class VideoTokenizer(_Tokenizer):
    def __init__(self, num_frames: int, img_size: int, embed_dim: int, patch: int = 16, tubelet: int = 2,
                 modality_embed: bool = False) -> None:
        grid = (num_frames // tubelet, img_size // patch, img_size // patch)
        super().__init__(grid, 3 * tubelet * patch * patch, embed_dim, modality_embed)
        self.patch, self.tubelet = patch, tubelet

    def crop(self, video: Tensor) -> Tensor:
        return video[:, :, : self.grid[0] * self.tubelet]

    def patchify(self, video: Tensor) -> Tensor:
        """[B, 3, T, H, W] -> [B, N, t*h*w*c] patches, each tubelet flattened (t, h, w, c) as the authors."""
        (gt, gh, gw), p, t = self.grid, self.patch, self.tubelet
        x = video_to_unit_range(self.crop(video)).reshape(video.shape[0], 3, gt, t, gh, p, gw, p)
        return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(video.shape[0], gt * gh * gw, self.patch_dim)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """Inverse of `patchify`: [B, N, t*h*w*c] -> [B, 3, T', H, W]."""
        (gt, gh, gw), p, t = self.grid, self.patch, self.tubelet
        x = patches.reshape(patches.shape[0], gt, gh, gw, t, p, p, 3).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(patches.shape[0], 3, gt * t, gh * p, gw * p)
