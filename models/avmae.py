"""The AV-MAE model: patchify -> mask each modality -> embed + fuse-encode the visible patches -> decode ->
masked MSE against the same patches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .config import MODALITIES, AVMAEConfig, other
from .decoder import Decoder
from .encoder import build_encoder, encoder_group_matcher, init_vit_weights, set_grad_checkpointing
from .masking import random_masking
from .objectives import inpainting_mask, masked_mse, standardise_patches
from .tokenizers import AudioTokenizer, VideoTokenizer


@dataclass
class AVMAEOutput:
    """Losses are fp32 scalars: loss = loss_weight_audio * loss_audio + loss_weight_video * loss_video, and a
    modality not reconstructed (one-direction inpainting) has loss 0.

    pred_*: [B, N, patch_dim] in the order of `model.tokenizers[m].patchify` (None if not reconstructed).
    mask_*: [B, N], 1 = position scored by the loss (joint: the randomly masked tokens; inpainting: the
    mask-token slots >= v). For a modality not reconstructed it is its random encoder mask.
    """

    loss: Tensor
    loss_audio: Tensor
    loss_video: Tensor
    pred_audio: Tensor | None
    pred_video: Tensor | None
    mask_audio: Tensor
    mask_video: Tensor


def build_tokenizers(c: AVMAEConfig) -> nn.ModuleDict:
    return nn.ModuleDict({
        "audio": AudioTokenizer(c.audio_frames, c.mel_bins, c.embed_dim, c.patch_size, c.modality_embed),
        "video": VideoTokenizer(c.num_frames, c.img_size, c.embed_dim, c.patch_size, c.tubelet_size,
                                c.modality_embed),
    })


def encode_unmasked(tokenizers: nn.ModuleDict, encoder: nn.Module, audio: Tensor | None,
                    video: Tensor | None) -> dict[str, Tensor]:
    """Encoder with masking off (downstream): {modality: [B, N_m, D]} for each modality given."""
    inputs = {m: x for m, x in (("audio", audio), ("video", video)) if x is not None}
    if not inputs:
        raise ValueError("forward_features needs audio, video or both")
    return encoder({m: tokenizers[m](x) for m, x in inputs.items()})


class AVMAE(nn.Module):
    """Audiovisual MAE. State-dict keys: `tokenizers.{audio,video}.*`, `encoder.*`, `decoder.*`."""

    def __init__(self, config: AVMAEConfig) -> None:
        super().__init__()
        # The initial weights depend on the seed alone, not on what building the other modules drew: under
        # one seed, the tokenisers and encoder of two variants that share them (another decoder, another
        # objective) start equal, so that cells compare pair by pair.
        seed_state = torch.get_rng_state()
        self.config = c = config
        self.tokenizers = build_tokenizers(c)
        self.encoder = build_encoder(c.fusion, c.embed_dim, c.depth, c.num_heads, c.mlp_ratio,
                                     c.fusion_layers)
        self.decoder = Decoder(
            c.decoder, c.embed_dim, c.decoder_embed_dim, c.decoder_depth, c.decoder_num_heads, c.num_tokens,
            {m: t.patch_dim for m, t in self.tokenizers.items()}, c.mlp_ratio,
        )
        torch.set_rng_state(seed_state)
        self.apply(init_vit_weights)
        self.decoder.zero_init_heads()

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.config.input_shapes

    @property
    def num_tokens(self) -> dict[str, int]:
        return self.config.num_tokens

    def no_weight_decay(self) -> set[str]:
        """Parameters exempt from weight decay besides the 1-D ones (biases, norm gains; timm's rule): the
        learned tokens, i.e. the decoder's mask tokens and any modality embeddings. The positional embeddings
        are fixed buffers, not parameters."""
        names = {f"decoder.mask_token.{m}" for m in MODALITIES}
        if self.config.modality_embed:
            names |= {f"tokenizers.{m}.modality_embed" for m in MODALITIES}
        return names

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer grouping (for layer-wise lr decay): tokenizers, encoder layers by index, then the
        decoder. `coarse` is ignored, as by timm's VisionTransformer."""
        return encoder_group_matcher()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each transformer block's activations in backward instead of storing them."""
        set_grad_checkpointing(self, enable)

    def forward_features(self, audio: Tensor | None = None, video: Tensor | None = None) -> dict[str, Tensor]:
        """Encoder with masking off (downstream): {modality: [B, N_m, D]} for each modality given."""
        return encode_unmasked(self.tokenizers, self.encoder, audio, video)

    def forward(self, audio: Tensor, video: Tensor,
                generator: torch.Generator | int | None = None) -> AVMAEOutput:
        """audio [B, T, mel], video [B, 3, T, H, W] uint8 or in [-1, 1]. `generator` (or an int seed) fixes
        the masks, e.g. for the reproducible pretraining validation loss."""
        c = self.config
        if isinstance(generator, int):
            generator = torch.Generator(device=audio.device).manual_seed(generator)
        patches = {m: self.tokenizers[m].patchify(x) for m, x in (("audio", audio), ("video", video))}
        masked = {m: random_masking(x.shape[0], x.shape[1], c.mask_ratio(m), x.device, generator,
                                    f"mask_ratio_{m}") for m, x in patches.items()}
        encoded = self._encode_visible(patches, {m: mk.ids_keep for m, mk in masked.items()})
        masks = {m: mk.mask for m, mk in masked.items()}
        if c.objective == "joint":
            preds = self.decoder.reconstruct(encoded, {m: mk.ids_restore for m, mk in masked.items()})
        else:
            preds = self.decoder.inpaint(encoded, c.inpainting_targets)
            for k in preds:
                n_context = encoded[other(k)].shape[1]
                masks[k] = inpainting_mask(audio.shape[0], c.num_tokens[k], n_context, audio.device)
        losses = {m: self._loss(preds[m], patches[m], masks[m]) if m in preds
                  else torch.zeros((), device=audio.device) for m in MODALITIES}
        return AVMAEOutput(
            loss=c.loss_weight_audio * losses["audio"] + c.loss_weight_video * losses["video"],
            loss_audio=losses["audio"], loss_video=losses["video"],
            pred_audio=preds.get("audio"), pred_video=preds.get("video"),
            mask_audio=masks["audio"], mask_video=masks["video"],
        )

    def _encode_visible(self, patches: dict[str, Tensor], ids_keep: dict[str, Tensor]) -> dict[str, Tensor]:
        """Embed and encode the visible patches. Inpainting with `inpainting_context: source` encodes each
        source modality on its own (one encoder pass per source), so that no context token has attended to
        its target; both masks are still drawn, keeping the random stream the same for either context."""
        c = self.config
        if c.objective == "joint" or c.inpainting_context == "both":
            return self.encoder({m: self.tokenizers[m].embed(patches[m], ids_keep[m]) for m in patches})
        return {m: self.encoder({m: self.tokenizers[m].embed(patches[m], ids_keep[m])})[m]
                for m in c.inpainting_sources}

    def _loss(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        if self.config.norm_targets:
            target = standardise_patches(target.float())
        return masked_mse(pred, target, mask)
