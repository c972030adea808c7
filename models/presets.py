"""Model sizes and the paper's input configurations, combined timm-style by `create_model`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import AVMAEConfig, FinetuneConfig, check_choice

if TYPE_CHECKING:
    from .avmae import AVMAE

SIZES: dict[str, dict[str, Any]] = {
    # CPU quickstart: a training step at batch 16 takes tens of ms on two cores.
    "tiny": dict(embed_dim=64, depth=4, num_heads=2, decoder_embed_dim=64, decoder_depth=2,
                 decoder_num_heads=2),
    "small": dict(embed_dim=384, depth=12, num_heads=6, decoder_embed_dim=256, decoder_depth=4,
                  decoder_num_heads=8),
    "base": dict(embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=384, decoder_depth=4,
                 decoder_num_heads=6),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, decoder_embed_dim=512, decoder_depth=4,
                  decoder_num_heads=8),
}

INPUTS: dict[str, dict[str, int]] = {
    # Equal token counts keep inpainting valid at every mask ratio; video tokens (1536 values) dominate cost.
    "tiny": dict(audio_frames=64, num_frames=4, img_size=64),  # 4x8 audio, 2x4x4 video tokens
    "small": dict(audio_frames=400, num_frames=8, img_size=112),  # 200 audio, 196 video tokens
    "vggsound": dict(audio_frames=800, num_frames=16, img_size=224),  # 400 audio, 1568 video tokens
    "audioset": dict(audio_frames=1000, num_frames=16, img_size=224),  # 496 audio, 1568 video tokens
}

DEFAULT_INPUT = {"tiny": "tiny", "small": "small", "base": "vggsound", "large": "vggsound"}


def create_model(preset: str = "base", *, input: str | None = None, **overrides: Any) -> AVMAE:
    """Build an AV-MAE from a size preset, an input configuration and any `AVMAEConfig` field overrides.

    e.g. `create_model("tiny", fusion="mid", objective="inpainting", mask_ratio_audio=0.7)`.
    The audio mask ratio stays 0.5 for every input; the released AudioSet config used 0.7 (override it).
    """
    from .avmae import AVMAE  # torch and timm: not needed to resolve a configuration

    return AVMAE(resolve_config(preset, input=input, **overrides))


def resolve_config(preset: str = "base", *, input: str | None = None, **overrides: Any) -> AVMAEConfig:
    check_choice("preset", preset, tuple(SIZES))
    input = DEFAULT_INPUT[preset] if input is None else input
    check_choice("input", input, tuple(INPUTS))
    allowed = [f for f in AVMAEConfig.field_names() if f not in ("preset", "input")]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(f"unknown model overrides {unknown}; allowed: {', '.join(allowed)}")
    return AVMAEConfig(preset=preset, input=input, **{**SIZES[preset], **INPUTS[input], **overrides})


FINETUNE: dict[str, dict[str, Any]] = {
    "vggsound": {},  # FinetuneConfig's defaults: 309 classes, fusion at layer 16, lr 0.8 at batch 64
    "audioset": dict(num_classes=527, multilabel=True, fusion_layer=18, batch_size=128, lr=1.6),
}


def resolve_finetune_config(dataset: str = "vggsound", **overrides: Any) -> FinetuneConfig:
    """The paper's fine-tuning recipe for `dataset`, with any `FinetuneConfig` field overridden."""
    check_choice("dataset", dataset, tuple(FINETUNE))
    return FinetuneConfig(**{**FINETUNE[dataset], **overrides})
