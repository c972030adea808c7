"""Resolved AV-MAE hyperparameters: one flat, JSON-serialisable dataclass, validated on construction.

Flat so the platform can log it to MLflow as params and sweep any field by name. Besides validation it
answers two questions the platform asks before training, without torch: which configurations train the
same network (`canonical`), and which parameters a training step leaves without a gradient
(`unused_parameters`, what DDP's `find_unused_parameters` is for, and `unused_parameter_prefixes`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

FUSIONS = ("early", "late", "shared", "mid")
DECODERS = ("separate", "shared", "joint")
OBJECTIVES = ("joint", "inpainting")
DIRECTIONS = ("a2v", "v2a", "both")
CONTEXTS = ("both", "source")  # what the encoder sees under inpainting; `both` is the paper's
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
    # `both`: encode both modalities together (paper, released code); under early/mid fusion the context
    # has attended to the target's visible tokens. `source`: encode each direction's source modality alone.
    inpainting_context: str = "both"
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
        check_choice("inpainting_context", self.inpainting_context, CONTEXTS)
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

    @property
    def inpainting_sources(self) -> tuple[str, ...]:
        """Modalities whose encoded tokens are an inpainting context (the other one of each target)."""
        return tuple(m for m in MODALITIES if other(m) in self.inpainting_targets)

    @property
    def cross_modal_context(self) -> bool:
        """Inpainting whose context tokens have attended to the target modality (early/mid fusion, `both`)."""
        return (self.objective == "inpainting" and self.inpainting_context == "both"
                and self.fusion in ("early", "mid"))

    @property
    def loss_inputs(self) -> tuple[str, ...]:
        """Modalities whose visible tokens reach the loss through the encoder."""
        if self.objective == "joint" or self.cross_modal_context:
            return MODALITIES
        return self.inpainting_sources

    def canonical(self) -> AVMAEConfig:
        """This configuration with every field that cannot change the network or its loss in a normal form
        (the field's default, or the equivalent choice): equal canonical forms build the same state-dict keys
        and, from the same seed and inputs, the same loss. The platform refuses study cells that repeat one.

        - `preset`, `input`: labels; the other fields hold what they resolve to.
        - joint objective: `inpainting_direction` and `inpainting_context` are not read.
        - `fusion_layers` is read by mid fusion only.
        - inpainting: the `joint` decoder decodes each direction alone (`Decoder.inpaint`), i.e. `shared`.
        - inpainting, `source` context: early fusion runs its one stack over one modality at a time, which
          is shared fusion (same keys, same init); and late/shared fusion never attend across modalities,
          so `source` and `both` compute the same context.
        - the mask ratio of a modality whose tokens never reach the loss (an inpainting target that is no
          source, without cross-modal context), and the loss weight of a modality not reconstructed.
        """
        d = self.default_values()
        c = replace(self, preset=d["preset"], input=d["input"])
        if c.objective == "joint":
            c = replace(c, inpainting_direction=d["inpainting_direction"],
                        inpainting_context=d["inpainting_context"])
        else:
            if c.decoder == "joint":
                c = replace(c, decoder="shared")
            if c.inpainting_context == "source" and c.fusion == "early":
                c = replace(c, fusion="shared")
            if c.fusion in ("late", "shared"):
                c = replace(c, inpainting_context=d["inpainting_context"])
        if c.fusion != "mid":
            c = replace(c, fusion_layers=d["fusion_layers"])
        for m in MODALITIES:
            if m not in c.loss_inputs:
                c = replace(c, **{f"mask_ratio_{m}": d[f"mask_ratio_{m}"]})
            if m not in c.reconstructed:
                c = replace(c, **{f"loss_weight_{m}": d[f"loss_weight_{m}"]})
        return c

    @property
    def unused_parameters(self) -> bool:
        """Whether a training step leaves parameters without a gradient: DDP's `find_unused_parameters`,
        which costs an extra graph traversal each step, so it is asked for only here. Only one-direction
        inpainting leaves any."""
        return bool(self.unused_parameter_prefixes)

    @property
    def unused_parameter_prefixes(self) -> tuple[str, ...]:
        """Module paths (`model.named_parameters()` names, or prefixes of them followed by '.') that get no
        gradient in a training step: the decoder parts of the modality not reconstructed and, without
        cross-modal context, the encoder parts of the modality not encoded."""
        if self.objective == "joint" or self.inpainting_direction == "both":
            return ()
        (target,), (source,) = self.inpainting_targets, self.inpainting_sources
        unused = [f"decoder.head.{source}", f"decoder.mask_token.{source}", f"decoder.proj.{target}"]
        if self.decoder == "separate":
            unused.append(f"decoder.stacks.{source}")
        if target not in self.loss_inputs:
            unused.append(f"tokenizers.{target}")
            if self.fusion in ("late", "mid"):
                unused.append(f"encoder.stacks.{target}")
        return tuple(unused)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def default_values(cls) -> dict[str, Any]:
        return {f.name: f.default for f in fields(cls)}


def other(modality: str) -> str:
    return "video" if modality == "audio" else "audio"
