"""Resolved AV-MAE hyperparameters: one flat, JSON-serialisable dataclass, validated on construction.

Flat so the platform can log it to MLflow as params and sweep any field by name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

FUSIONS = ("early", "late", "shared", "mid")
DECODERS = ("separate", "shared", "joint")
OBJECTIVES = ("joint", "inpainting")
DIRECTIONS = ("a2v", "v2a", "both")
MODALITIES = ("audio", "video")


def check_choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {field} {value!r}; allowed: {', '.join(allowed)}")


def masked_count(num_tokens: int, ratio: float, field: str) -> int:
    """int(ratio * N) masked tokens, as the authors' code; at least one masked and one visible."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"{field} must lie in (0, 1), got {ratio}")
    n_masked = int(ratio * num_tokens)
    if not 1 <= n_masked <= num_tokens - 1:
        raise ValueError(
            f"{field}={ratio} masks {n_masked} of {num_tokens} tokens; it must mask at least one "
            "and leave at least one visible"
        )
    return n_masked


@dataclass
class AVMAEConfig:
    """Every knob of the model; `presets.create_model` fills it from a preset plus overrides."""

    preset: str = "custom"
    input: str = "custom"
    # encoder (ViT)
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    fusion: str = "late"
    fusion_layers: int = 2  # F joint layers at the top of a `mid` encoder
    modality_embed: bool = False  # learned per-modality token, off in the released configs
    # decoder
    decoder: str = "shared"
    decoder_embed_dim: int = 384
    decoder_depth: int = 4
    decoder_num_heads: int = 6
    # objective
    objective: str = "joint"
    inpainting_direction: str = "both"
    mask_ratio_audio: float = 0.5
    mask_ratio_video: float = 0.9
    loss_weight_audio: float = 0.5
    loss_weight_video: float = 0.5
    norm_targets: bool = False
    # input geometry
    audio_frames: int = 800
    mel_bins: int = 128
    num_frames: int = 16
    img_size: int = 224
    patch_size: int = 16
    tubelet_size: int = 2

    def __post_init__(self) -> None:
        check_choice("fusion", self.fusion, FUSIONS)
        check_choice("decoder", self.decoder, DECODERS)
        check_choice("objective", self.objective, OBJECTIVES)
        check_choice("inpainting_direction", self.inpainting_direction, DIRECTIONS)
        for dim, heads in (("embed_dim", "num_heads"), ("decoder_embed_dim", "decoder_num_heads")):
            width, n_heads = getattr(self, dim), getattr(self, heads)
            if width % n_heads:
                raise ValueError(f"{dim}={width} is not divisible by {heads}={n_heads}")
        if self.fusion == "mid" and not 1 <= self.fusion_layers < self.depth:
            raise ValueError(
                f"mid fusion needs 1 <= fusion_layers < depth={self.depth}, got {self.fusion_layers}"
            )
        p, t = self.patch_size, self.tubelet_size
        if self.audio_frames < p or self.mel_bins % p:
            raise ValueError(f"audio_frames must be >= {p} and mel_bins a multiple of {p}")
        if self.img_size % p or self.num_frames < t:
            raise ValueError(f"img_size must be a multiple of {p} and num_frames >= {t}")
        n = self.num_tokens
        visible = {m: n[m] - masked_count(n[m], self.mask_ratio(m), f"mask_ratio_{m}") for m in MODALITIES}
        if self.objective == "inpainting":
            for target in self.inpainting_targets:
                source = other(target)
                if visible[source] >= self.num_tokens[target]:
                    raise ValueError(
                        f"inpainting {target} from {source}: mask_ratio_{source}={self.mask_ratio(source)} "
                        f"leaves {visible[source]} visible {source} tokens, which must be fewer than the "
                        f"{n[target]} {target} tokens (they fill the first decoder positions)"
                    )

    def mask_ratio(self, modality: str) -> float:
        return self.mask_ratio_audio if modality == "audio" else self.mask_ratio_video

    @property
    def num_tokens(self) -> dict[str, int]:
        """Token counts as the authors' convs produce them (trailing time bins / odd frames dropped)."""
        p = self.patch_size
        return {
            "audio": (self.audio_frames // p) * (self.mel_bins // p),
            "video": (self.num_frames // self.tubelet_size) * (self.img_size // p) ** 2,
        }

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """What `forward(audio, video)` takes, without the batch dimension."""
        return {"audio": (self.audio_frames, self.mel_bins),
                "video": (3, self.num_frames, self.img_size, self.img_size)}

    @property
    def inpainting_targets(self) -> tuple[str, ...]:
        """Modalities reconstructed under the inpainting objective."""
        return {"a2v": ("video",), "v2a": ("audio",), "both": MODALITIES}[self.inpainting_direction]

    @property
    def reconstructed(self) -> tuple[str, ...]:
        return MODALITIES if self.objective == "joint" else self.inpainting_targets

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def other(modality: str) -> str:
    return "video" if modality == "audio" else "audio"
