"""Resolved AV-MAE hyperparameters: one flat, JSON-serialisable dataclass, validated on construction.

Flat so the platform can log it to MLflow as params and sweep any field by name. Besides validation it
answers two questions the platform asks before training, without torch: which configurations train the
same network (`canonical`), and which parameters a training step leaves without a gradient
(`unused_parameters`, what DDP's `find_unused_parameters` is for, and `unused_parameter_prefixes`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

FUSIONS = ("early", "late", "shared", "mid")
DECODERS = ("separate", "shared", "joint")
OBJECTIVES = ("joint", "inpainting")
DIRECTIONS = ("a2v", "v2a", "both")
CONTEXTS = ("both", "source")  # what the encoder sees under inpainting; `both` is the paper's
MODALITIES = ("audio", "video")
INPUT_MODALITIES = ("av", "audio", "video")  # downstream settings: both streams, or one
POS_EMBED_RESIZES = ("interpolate", "repeat", "extend")


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
    def token_grid(self) -> dict[str, tuple[int, ...]]:
        """Token grids, time first: audio (time, freq), video (time, height, width)."""
        p, side = self.patch_size, self.img_size // self.patch_size
        return {"audio": (self.audio_frames // p, self.mel_bins // p),
                "video": (self.num_frames // self.tubelet_size, side, side)}

    @property
    def num_tokens(self) -> dict[str, int]:
        """Token counts as the authors' convs produce them (trailing time bins / odd frames dropped)."""
        return {m: math.prod(grid) for m, grid in self.token_grid.items()}

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


@dataclass
class FinetuneConfig:
    """The paper's fine-tuning recipe (paper.md §6, from the authors' released configs), validated.

    Model: an MBT classifier (`models.mbt.MBTClassifier`) of the pretrained encoder's width and depth.
    Before `fusion_layer` each modality runs its own stream; from it on, the streams exchange information
    through `num_bottlenecks` shared tokens (layer 16 of 24 for VGGSound, 18 for AudioSet). `modality`
    "audio" or "video" keeps one stream. Stochastic depth rises linearly over the layers to `drop_path`
    (timm's DropPath). Video: `num_frames` at `frame_stride` (the loader's sampling: 32 at stride 2 span
    what pretraining's 16 at stride 4 do); the pretraining positional table is resized along time
    (`pos_embed_resize`): "interpolate" (linear), "repeat" (each step held) or "extend" (a longer sinusoid).

    Weights from an AV-MAE encoder (authors' `initialise_from_*`): patch embeddings to the same modality;
    late fusion: each modality's blocks to its stream; mid fusion: its per-modality blocks, then its joint
    blocks copied into both streams; early and shared fusion: the one stack copied into both streams. The
    final LayerNorm comes from the joint (mid) or only (early, shared) stack; per-modality final norms (late
    fusion, mid fusion's unimodal stacks) are not copied, so there it starts at identity (authors' code).

    Optimisation: SGD momentum 0.9, no weight decay, layer-wise lr decay 0.75 (embeddings lowest;
    bottleneck tokens, final norm and head at the full lr, as the authors' code), global grad-norm clip 1.0,
    label smoothing 0.3, mixup alpha 0.5 with "mixmod", 50 epochs, linear warmup 2.5 epochs then cosine to
    0, lr 0.8 at batch 64 (VGGSound; AudioSet 1.6 at 128), not rescaled by batch.

    Unconfirmed by the paper's text (all [cfg] or the authors' code): "mixmod", read from the authors' MBT
    trainer as one mixing weight per modality, each modality's logits scored against targets mixed at its
    weight and the per-modality losses averaged; the temporal resize of a sinusoidal table (the authors'
    code appears to compute a longer 1-D sinusoid, i.e. "extend"); the smoothing of multi-label targets
    (here timm's, towards 0.5).
    """

    num_classes: int = 309
    modality: str = "av"
    multilabel: bool = False
    # model
    fusion_layer: int = 16
    num_bottlenecks: int = 4
    drop_path: float = 0.3
    num_frames: int = 32
    frame_stride: int = 2
    pos_embed_resize: str = "interpolate"
    # optimisation
    epochs: int = 50
    warmup_epochs: float = 2.5
    batch_size: int = 64
    lr: float = 0.8
    momentum: float = 0.9
    weight_decay: float = 0.0
    layer_decay: float = 0.75
    max_grad_norm: float | None = 1.0
    label_smoothing: float = 0.3
    mixup_alpha: float = 0.5
    mixmod: bool = True

    def __post_init__(self) -> None:
        check_choice("modality", self.modality, INPUT_MODALITIES)
        check_choice("pos_embed_resize", self.pos_embed_resize, POS_EMBED_RESIZES)
        rules = (
            ("num_classes", self.num_classes >= 1, ">= 1"),
            ("fusion_layer", self.fusion_layer >= 0, ">= 0"),
            ("num_bottlenecks", self.num_bottlenecks >= 1, ">= 1"),
            ("drop_path", 0.0 <= self.drop_path < 1.0, "in [0, 1)"),
            ("num_frames", self.num_frames >= 1, ">= 1"),
            ("frame_stride", self.frame_stride >= 1, ">= 1"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("warmup_epochs", 0.0 <= self.warmup_epochs < self.epochs, "in [0, epochs)"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", self.lr > 0.0, "> 0"),
            ("momentum", 0.0 <= self.momentum < 1.0, "in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0.0, ">= 0"),
            ("layer_decay", 0.0 < self.layer_decay <= 1.0, "in (0, 1]"),
            ("max_grad_norm", self.max_grad_norm is None or self.max_grad_norm > 0.0, "None or > 0"),
            ("label_smoothing", 0.0 <= self.label_smoothing < 1.0, "in [0, 1)"),
            ("mixup_alpha", self.mixup_alpha >= 0.0, ">= 0"),
            ("mixmod", not self.mixmod or self.mixup_alpha > 0.0, "off when mixup_alpha is 0"),
        )
        for field, ok, rule in rules:
            if not ok:
                raise ValueError(f"{field} must be {rule}, got {getattr(self, field)!r}")

    @property
    def modalities(self) -> tuple[str, ...]:
        """The streams the classifier builds and reads."""
        return MODALITIES if self.modality == "av" else (self.modality,)

    def schedule_steps(self, steps_per_epoch: int) -> tuple[int, int]:
        """(warmup steps, total steps) of the per-step schedule."""
        return round(self.warmup_epochs * steps_per_epoch), self.epochs * steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def other(modality: str) -> str:
    return "video" if modality == "audio" else "audio"
