"""The paper's fine-tuning model: an MBT classifier (attention bottlenecks, Nagrani et al. 2021) initialised
from an AV-MAE encoder (`FinetuneConfig` says which weights go where).

Layer i holds one timm ViT block per modality, `blocks.{i}.{modality}`. Before `fusion_layer` each modality's
block sees its own tokens; from it on, it sees [its tokens, the bottleneck tokens], and the bottleneck becomes
the mean of the modalities' outputs at its positions. Then a shared final LayerNorm, mean pooling per modality
and a shared linear head give one set of logits per modality; the prediction is their mean (authors' code).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from os import PathLike
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .avmae import build_tokenizers
from .config import MODALITIES, AVMAEConfig, FinetuneConfig
from .downstream import read_checkpoint
from .encoder import LayerNorm, init_vit_weights, run_block, vit_block
from .tokenizers import sincos_1d

RunBlock = Callable[[nn.Module, Tensor], Tensor]


def resize_time(table: Tensor, grid: tuple[int, ...], time: int, mode: str) -> Tensor:
    """[1, t*S, D] positional table of a time-major (t, *S) token grid -> [1, time*S, D], each of the S
    positions' embeddings resized along time: `interpolate` linearly (align_corners=False, as timm resamples
    position embeddings), `repeat` by nearest neighbour (each step held time/t times)."""
    t, d = grid[0], table.shape[-1]
    x = table.reshape(t, -1, d).permute(1, 2, 0)  # [S, D, t]
    if mode == "interpolate":
        x = F.interpolate(x, size=time, mode="linear", align_corners=False)
    else:
        x = F.interpolate(x, size=time, mode="nearest")
    return x.permute(2, 0, 1).reshape(1, -1, d)


def finetune_pos_embed(pretrain_grid: tuple[int, ...], grid: tuple[int, ...], dim: int, mode: str) -> Tensor:
    """[1, prod(grid), dim] positional table for a fine-tuning grid that differs from pretraining's in time
    only: the pretraining sinusoid resized along time, or (`extend`) the 1-D sinusoid over the new length."""
    if grid[1:] != pretrain_grid[1:]:
        raise ValueError(f"fine-tuning grid {grid} differs from pretraining's {pretrain_grid} beyond time")
    if mode == "extend" or grid == pretrain_grid:
        return sincos_1d(math.prod(grid), dim)
    return resize_time(sincos_1d(math.prod(pretrain_grid), dim), pretrain_grid, grid[0], mode)


def bottleneck_layer(layer: nn.ModuleDict, tokens: dict[str, Tensor], bottleneck: Tensor,
                     run: RunBlock) -> tuple[dict[str, Tensor], Tensor]:
    """One fusion layer: tokens {m: [B, N_m, D]}, bottleneck [B, n, D] -> the same shapes."""
    out, shared = {}, []
    for m, x in tokens.items():
        y = run(layer[m], torch.cat([x, bottleneck], dim=1))
        out[m] = y[:, : x.shape[1]]
        shared.append(y[:, x.shape[1] :])
    return out, torch.stack(shared).mean(dim=0)


class MBTClassifier(nn.Module):
    """MBT over the pretraining encoder's width and depth. `config` is the pretraining configuration (its
    positional tables are resized to `finetune.num_frames`); `finetune` the recipe."""

    def __init__(self, config: AVMAEConfig, finetune: FinetuneConfig) -> None:
        super().__init__()
        if finetune.fusion_layer > config.depth:
            raise ValueError(f"fusion_layer={finetune.fusion_layer} exceeds the encoder depth={config.depth}")
        self.config, self.finetune = config, finetune
        modalities, dim = finetune.modalities, config.embed_dim
        geometry = replace(config, num_frames=finetune.num_frames)
        tokenizers = build_tokenizers(geometry)
        self.tokenizers = nn.ModuleDict({m: tokenizers[m] for m in modalities})
        for m, tokenizer in self.tokenizers.items():
            tokenizer.pos_embed = finetune_pos_embed(config.token_grid[m], geometry.token_grid[m], dim,
                                                     finetune.pos_embed_resize)
        rates = [finetune.drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]  # linear
        self.blocks = nn.ModuleList(
            nn.ModuleDict({m: vit_block(dim, config.num_heads, config.mlp_ratio, rate) for m in modalities})
            for rate in rates
        )
        fuses = len(modalities) > 1 and finetune.fusion_layer < config.depth
        self.bottleneck = nn.Parameter(torch.zeros(1, finetune.num_bottlenecks, dim)) if fuses else None
        self.norm = LayerNorm(dim)
        self.head = nn.Linear(dim, finetune.num_classes)
        self.grad_checkpointing = False
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAE's xavier linears and unit norms; bottleneck tokens N(0, 0.02); a zero head (authors' code)."""
        self.apply(init_vit_weights)
        if self.bottleneck is not None:
            nn.init.normal_(self.bottleneck, std=0.02)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = replace(self.config, num_frames=self.finetune.num_frames).input_shapes
        return {m: shapes[m] for m in self.tokenizers}

    def no_weight_decay(self) -> set[str]:
        """Learned tokens exempt from weight decay (1-D parameters are, by timm's rule)."""
        names = {"bottleneck"} if self.bottleneck is not None else set()
        if self.config.modality_embed:
            names |= {f"tokenizers.{m}.modality_embed" for m in self.tokenizers}
        return names

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer grouping for layer-wise lr decay, as the authors' optimizer: the tokenizers, then one
        group per layer (both modalities' blocks); bottleneck, final norm and head last, at the full lr
        (timm's ViT would put its final norm with the last block). `coarse` is ignored, as by timm's ViT."""
        return dict(stem=r"^tokenizers", blocks=[(r"^blocks\.(\d+)", None)])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them."""
        self.grad_checkpointing = enable

    def _run(self, block: nn.Module, x: Tensor) -> Tensor:
        return run_block(block, x, self.grad_checkpointing)

    def forward_features(self, audio: Tensor | None = None, video: Tensor | None = None) -> dict[str, Tensor]:
        """audio [B, T, mel], video [B, 3, T, H, W] -> {modality: [B, N_m, D]} normed tokens of the
        classifier's modalities (inputs of another modality are ignored)."""
        given = {"audio": audio, "video": video}
        missing = [m for m in self.tokenizers if given[m] is None]
        if missing:
            raise ValueError(f"the {self.finetune.modality} classifier needs {', '.join(missing)} input")
        x = {m: tokenizer(given[m]) for m, tokenizer in self.tokenizers.items()}
        batch = next(iter(x.values())).shape[0]
        bottleneck = None if self.bottleneck is None else self.bottleneck.expand(batch, -1, -1)
        for i, layer in enumerate(self.blocks):
            if bottleneck is None or i < self.finetune.fusion_layer:
                x = {m: self._run(layer[m], t) for m, t in x.items()}
            else:
                x, bottleneck = bottleneck_layer(layer, x, bottleneck, self._run)
        return {m: self.norm(t) for m, t in x.items()}

    def forward_head(self, features: Mapping[str, Tensor], pre_logits: bool = False) -> dict[str, Tensor]:
        """{modality: [B, N_m, D]} -> {modality: [B, num_classes]} logits (or [B, D] pooled, `pre_logits`)."""
        pooled = {m: f.mean(dim=1) for m, f in features.items()}
        return pooled if pre_logits else {m: self.head(p) for m, p in pooled.items()}

    def forward(self, audio: Tensor | None = None, video: Tensor | None = None,
                per_modality: bool = False) -> Tensor | dict[str, Tensor]:
        """Logits [B, num_classes], the mean over modalities; `per_modality` gives {modality: logits} (the
        training loss scores each modality's logits against its own mixed targets)."""
        logits = self.forward_head(self.forward_features(audio, video))
        return logits if per_modality else torch.stack(list(logits.values())).mean(dim=0)

    @classmethod
    def from_pretrained(cls, checkpoint: Mapping[str, Any] | str | PathLike, finetune: FinetuneConfig,
                        config: AVMAEConfig | Mapping[str, Any] | None = None) -> MBTClassifier:
        """From an AV-MAE checkpoint (`{"config", "state_dict"}` mapping or file, or a state_dict and
        `config`): patch embeddings and blocks as `pretrained_sources` says; the rest keeps its init."""
        state, fields = read_checkpoint(checkpoint, config)
        model = cls(AVMAEConfig(**fields), finetune)
        model.load_state_dict(pretrained_weights(state, model.config, finetune.modalities), strict=False)
        return model


def pretrained_sources(config: AVMAEConfig, modalities: tuple[str, ...] = MODALITIES) -> dict[str, str]:
    """{classifier prefix: AV-MAE state-dict prefix copied into it} for a pretraining `config`. Mid fusion's
    joint layers (and early/shared fusion's one stack) go into every stream; the final norm comes from the
    joint or only stack, never from a per-modality stack (authors' `initialise_from_*`)."""
    depth, unimodal = config.depth, config.depth - config.fusion_layers
    sources = {}
    for m in modalities:
        sources[f"tokenizers.{m}."] = f"tokenizers.{m}."
        for i in range(depth):
            if config.fusion == "late" or (config.fusion == "mid" and i < unimodal):
                sources[f"blocks.{i}.{m}."] = f"encoder.stacks.{m}.blocks.{i}."
            elif config.fusion == "mid":
                sources[f"blocks.{i}.{m}."] = f"encoder.joint.blocks.{i - unimodal}."
            else:
                sources[f"blocks.{i}.{m}."] = f"encoder.stack.blocks.{i}."
    norm = {"mid": "encoder.joint.norm.", "early": "encoder.stack.norm.", "shared": "encoder.stack.norm."}
    if config.fusion in norm:
        sources["norm."] = norm[config.fusion]
    return sources


def pretrained_weights(state: Mapping[str, Tensor], config: AVMAEConfig,
                       modalities: tuple[str, ...] = MODALITIES) -> dict[str, Tensor]:
    """The classifier state-dict entries an AV-MAE state_dict provides; every source must be there."""
    weights = {}
    for target, source in pretrained_sources(config, modalities).items():
        found = {target + k.removeprefix(source): v for k, v in state.items() if k.startswith(source)}
        if not found:
            raise ValueError(f"checkpoint lacks {source}* for {target}* (another fusion or size?)")
        weights.update(found)
    return weights
