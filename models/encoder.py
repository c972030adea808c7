"""The four encoder fusions of AV-MAE, built from timm's ViT `Block`.

Every encoder maps a dict of token sequences {modality: [B, N_m, D]} to a dict of the same shapes, so
one code path serves masked pretraining (both modalities) and single-modality downstream use.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .config import MODALITIES

LayerNorm = partial(nn.LayerNorm, eps=1e-6)
MATCH_PREV_GROUP = (99999,)  # timm's group-matcher suffix: join the group before


def init_vit_weights(module: nn.Module) -> None:
    """MAE's init: xavier-uniform linears with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def vit_block(dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> Block:
    """timm's pre-norm ViT block as MAE builds it (qkv bias, LayerNorm eps 1e-6); `drop_path` is the rate of
    timm's DropPath on both residual branches."""
    return Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=LayerNorm,
                 drop_path=drop_path)


def run_block(block: nn.Module, x: Tensor, grad_checkpointing: bool) -> Tensor:
    """block(x), recomputing its activations in backward instead of storing them when asked (and training)."""
    if grad_checkpointing and torch.is_grad_enabled():
        return checkpoint(block, x, use_reentrant=False)
    return block(x)


class Stack(nn.Module):
    """`depth` pre-norm transformer blocks followed by a final LayerNorm."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(vit_block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = LayerNorm(dim)
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = run_block(block, x, self.grad_checkpointing)
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


def encoder_group_matcher(prefix: str = "encoder") -> dict[str, Any]:
    """timm `group_matcher` of a model holding `tokenizers` and one of the encoders above under `prefix`: the
    tokenizers are the stem, then one group per layer index (both modalities' block i together), each final
    norm joining its stack's last block (timm's MATCH_PREV_GROUP). Mid fusion's joint blocks come after the
    unimodal ones; everything else (decoder, head) forms the last group."""
    stacks = rf"^{prefix}\.(?:stack|stacks\.\w+)"
    return dict(
        stem=r"^tokenizers",
        blocks=[(rf"{stacks}\.blocks\.(\d+)", None), (rf"{stacks}\.norm", MATCH_PREV_GROUP)],
        joint=[(rf"^{prefix}\.joint\.blocks\.(\d+)", None), (rf"^{prefix}\.joint\.norm", MATCH_PREV_GROUP)],
    )


def set_grad_checkpointing(module: nn.Module, enable: bool = True) -> None:
    """Turn activation checkpointing of every `Stack` in `module` on or off."""
    for stack in module.modules():
        if isinstance(stack, Stack):
            stack.grad_checkpointing = enable
