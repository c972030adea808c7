"""The four encoder fusions of AV-MAE, built from timm's ViT `Block`.

Every encoder maps a dict of token sequences {modality: [B, N_m, D]} to a dict of the same shapes, so
one code path serves masked pretraining (both modalities) and single-modality downstream use.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from .config import MODALITIES

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def init_vit_weights(module: nn.Module) -> None:
    """MAE's init: xavier-uniform linears with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Stack(nn.Module):
    """`depth` pre-norm transformer blocks followed by a final LayerNorm."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=LayerNorm)
            for _ in range(depth)
        )
        self.norm = LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def joint(stack: nn.Module, tokens: dict[str, Tensor]) -> dict[str, Tensor]:
    """Run `stack` over the concatenation of all sequences (cross-modal attention), then split back."""
    out = stack(torch.cat(list(tokens.values()), dim=1))
    return dict(zip(tokens, out.split([t.shape[1] for t in tokens.values()], dim=1), strict=True))


class EarlyFusion(nn.Module):
    """`concat_and_encode`: one transformer over the concatenated visible tokens of both modalities."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.stack = Stack(dim, depth, num_heads, mlp_ratio)

    def forward(self, tokens: dict[str, Tensor]) -> dict[str, Tensor]:
        return joint(self.stack, tokens)


class LateFusion(nn.Module):
    """`separate_encoders`: one ViT per modality, no cross-modal attention."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.stacks = nn.ModuleDict({m: Stack(dim, depth, num_heads, mlp_ratio) for m in MODALITIES})

    def forward(self, tokens: dict[str, Tensor]) -> dict[str, Tensor]:
        return {m: self.stacks[m](x) for m, x in tokens.items()}


class SharedFusion(nn.Module):
    """`same_encoder`: one set of ViT weights applied to each modality separately."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.stack = Stack(dim, depth, num_heads, mlp_ratio)

    def forward(self, tokens: dict[str, Tensor]) -> dict[str, Tensor]:
        return {m: self.stack(x) for m, x in tokens.items()}


class MidFusion(nn.Module):
    """`separate_encoders_and_concat`: L-F layers per modality (each with its own final norm), then F joint
    layers over the concatenation (own final norm)."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0,
                 fusion_layers: int = 2) -> None:
        super().__init__()
        self.stacks = nn.ModuleDict(
            {m: Stack(dim, depth - fusion_layers, num_heads, mlp_ratio) for m in MODALITIES}
        )
        self.joint = Stack(dim, fusion_layers, num_heads, mlp_ratio)

    def forward(self, tokens: dict[str, Tensor]) -> dict[str, Tensor]:
        return joint(self.joint, {m: self.stacks[m](x) for m, x in tokens.items()})


def build_encoder(fusion: str, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0,
                  fusion_layers: int = 2) -> nn.Module:
    if fusion == "mid":
        return MidFusion(dim, depth, num_heads, mlp_ratio, fusion_layers)
    cls = {"early": EarlyFusion, "late": LateFusion, "shared": SharedFusion}[fusion]
    return cls(dim, depth, num_heads, mlp_ratio)
