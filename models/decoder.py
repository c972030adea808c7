"""The lightweight AV-MAE decoder: `separate`, `shared` or `joint` transformer over per-modality sequences.

Per modality (authors' code): an encoder->decoder projection (xavier), a zero-initialised mask token, a
fixed sinusoidal positional embedding re-added at decoder width, and a zero-initialised output head.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import MODALITIES, other
from .encoder import Stack, joint
from .masking import unshuffle
from .tokenizers import sincos_1d


class Decoder(nn.Module):
    """`separate_decoders` / `same_decoder` (shared weights, each modality alone) / `concat_and_decode`."""

    def __init__(self, kind: str, encoder_dim: int, dim: int, depth: int, num_heads: int,
                 num_tokens: dict[str, int], patch_dims: dict[str, int], mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.kind = kind
        self.proj = nn.ModuleDict({m: nn.Linear(encoder_dim, dim) for m in MODALITIES})
        self.mask_token = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, dim)) for m in MODALITIES})
        for m in MODALITIES:
            self.register_buffer(f"pos_embed_{m}", sincos_1d(num_tokens[m], dim), persistent=False)
        if kind == "separate":
            self.stacks = nn.ModuleDict({m: Stack(dim, depth, num_heads, mlp_ratio) for m in MODALITIES})
        else:
            self.stack = Stack(dim, depth, num_heads, mlp_ratio)
        self.head = nn.ModuleDict({m: nn.Linear(dim, patch_dims[m]) for m in MODALITIES})

    def zero_init_heads(self) -> None:
        """Zero heads (authors' code): reconstructions start at 0, the mean of [-1, 1] pixels."""
        for head in self.head.values():
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def pos_embed(self, modality: str) -> Tensor:
        return getattr(self, f"pos_embed_{modality}")

    def reconstruct(self, encoded: dict[str, Tensor], ids_restore: dict[str, Tensor]) -> dict[str, Tensor]:
        """Joint reconstruction: visible tokens back at their raster positions, mask tokens elsewhere."""
        seqs = {m: unshuffle(self.proj[m](x), self.mask_token[m], ids_restore[m]) + self.pos_embed(m)
                for m, x in encoded.items()}
        return self.decode(seqs, fuse=self.kind == "joint")

    def inpaint(self, encoded: dict[str, Tensor], targets: tuple[str, ...]) -> dict[str, Tensor]:
        """Modality inpainting (authors' placement): for target k, positions 0..v-1 hold the other modality's
        v encoded visible tokens (through *their* modality's projection), positions v..N_k-1 k's mask token.

        Each target's sequence is decoded on its own, also by the `joint` decoder: concatenating the two
        directions would let k's sequence attend to k's own visible tokens (in the other direction's context).
        So under inpainting `joint` is the `shared` decoder (`AVMAEConfig.canonical` says so).
        """
        seqs = {}
        for k in targets:
            context = self.proj[other(k)](encoded[other(k)])
            pos = self.pos_embed(k)
            b, v, _ = context.shape
            fill = self.mask_token[k].to(context.dtype).expand(b, pos.shape[1] - v, -1)
            seqs[k] = torch.cat([context, fill], dim=1) + pos
        return self.decode(seqs, fuse=False)

    def decode(self, seqs: dict[str, Tensor], fuse: bool) -> dict[str, Tensor]:
        if fuse:
            out = joint(self.stack, seqs)
        elif self.kind == "separate":
            out = {m: self.stacks[m](x) for m, x in seqs.items()}
        else:
            out = {m: self.stack(x) for m, x in seqs.items()}
        return {m: self.head[m](x) for m, x in out.items()}
