"""Downstream use of a pretrained AV-MAE encoder: a finetunable classifier and a frozen-feature linear probe.

Checkpoint key format: an `AVMAE.state_dict()`, i.e. `tokenizers.{audio,video}.*`, `encoder.*`, `decoder.*`
(`_orig_mod.` / `module.` prefixes from torch.compile / DDP are stripped). The classifier reuses the
tokenizer and encoder keys verbatim and ignores `decoder.*`. Positional embeddings are fixed sinusoids, not
stored, so the classifier may use another input geometry (e.g. 32 frames) than pretraining.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from os import PathLike
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .avmae import build_tokenizers, encode_unmasked
from .config import INPUT_MODALITIES, MODALITIES, AVMAEConfig, check_choice
from .encoder import build_encoder, encoder_group_matcher, init_vit_weights, set_grad_checkpointing

ArrayLike = Tensor | np.ndarray
Batch = Mapping[str, Tensor] | tuple[Tensor | None, ...] | list[Tensor | None]
Features = Tensor | dict[str, Tensor]  # [N, D], or {modality: [N, D]} for a sequence of modalities


def select(modality: str, audio: Tensor | None, video: Tensor | None) -> dict[str, Tensor | None]:
    """The inputs one downstream modality setting uses (`av`, `audio` or `video`)."""
    check_choice("modality", modality, INPUT_MODALITIES)
    return {"audio": audio if modality != "video" else None, "video": video if modality != "audio" else None}


def pool(features: Mapping[str, Tensor]) -> Tensor:
    """Mean over each modality's tokens, then over modalities: [B, D] with equal weight per modality."""
    return torch.stack([f.mean(dim=1) for f in features.values()]).mean(dim=0)


class AVClassifier(nn.Module):
    """AV-MAE tokenisers + encoder (masking off), mean-pooled tokens, linear head (GAP, no CLS token)."""

    def __init__(self, config: AVMAEConfig, num_classes: int, modality: str = "av",
                 multilabel: bool = False) -> None:
        super().__init__()
        check_choice("modality", modality, INPUT_MODALITIES)
        self.config, self.modality, self.multilabel = config, modality, multilabel
        c = config
        self.tokenizers = build_tokenizers(c)
        self.encoder = build_encoder(c.fusion, c.embed_dim, c.depth, c.num_heads, c.mlp_ratio,
                                     c.fusion_layers)
        self.head = nn.Linear(c.embed_dim, num_classes)
        self.apply(init_vit_weights)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # MAE finetuning: start near uniform predictions

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.config.input_shapes

    def no_weight_decay(self) -> set[str]:
        """Learned tokens exempt from weight decay (1-D parameters are, by timm's rule)."""
        return {f"tokenizers.{m}.modality_embed" for m in MODALITIES} if self.config.modality_embed else set()

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer grouping: tokenizers, encoder layers by index, then the head (`coarse` is ignored)."""
        return encoder_group_matcher()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        set_grad_checkpointing(self, enable)

    def forward_features(self, audio: Tensor | None = None, video: Tensor | None = None) -> dict[str, Tensor]:
        """{modality: [B, N_m, D]} encoder tokens of each modality given."""
        return encode_unmasked(self.tokenizers, self.encoder, audio, video)

    def forward_head(self, features: Mapping[str, Tensor], pre_logits: bool = False) -> Tensor:
        """Pooled features [B, D] (`pre_logits`) or logits [B, num_classes]."""
        pooled = pool(features)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, audio: Tensor | None = None, video: Tensor | None = None) -> Tensor:
        """Logits [B, num_classes]; inputs of a modality the classifier does not use are ignored."""
        return self.forward_head(self.forward_features(**select(self.modality, audio, video)))

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy on class indices, or BCE on multi-hot targets (multi-label, AudioSet)."""
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits.float(), target.float())
        return F.cross_entropy(logits.float(), target)

    @classmethod
    def from_pretrained(cls, checkpoint: Mapping[str, Any] | str | PathLike, num_classes: int,
                        modality: str = "av", multilabel: bool = False,
                        config: AVMAEConfig | Mapping[str, Any] | None = None,
                        **overrides: Any) -> AVClassifier:
        """From an AV-MAE state_dict (then pass `config`) or a `{"config": dict, "state_dict": ...}` mapping
        or file. `overrides` change config fields, e.g. `num_frames=32` for finetuning."""
        state, fields = read_checkpoint(checkpoint, config)
        model = cls(AVMAEConfig(**{**fields, **overrides}), num_classes, modality, multilabel)
        load_encoder_state(model, state)
        return model


def read_checkpoint(checkpoint: Mapping[str, Any] | str | PathLike,
                    config: AVMAEConfig | Mapping[str, Any] | None = None) -> tuple[dict[str, Tensor], dict]:
    """(state_dict without torch.compile / DDP prefixes, config fields) of an AV-MAE checkpoint: a
    `{"config": dict, "state_dict": ...}` mapping or file, or a raw state_dict with `config` given."""
    if isinstance(checkpoint, (str, PathLike)):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint)
    config = config if config is not None else checkpoint.get("config")
    if config is None:
        raise ValueError("a raw state_dict carries no config: pass config=")
    fields = config.to_dict() if isinstance(config, AVMAEConfig) else dict(config)
    return {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state.items()}, fields


def load_encoder_state(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load `tokenizers.*` and `encoder.*` of an AV-MAE state_dict into `model`; every one must be there."""
    state = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state_dict.items()}
    state = {k: v for k, v in state.items() if k.startswith(("tokenizers.", "encoder."))}
    missing, _ = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k.startswith(("tokenizers.", "encoder."))]
    if missing:
        raise ValueError(f"checkpoint lacks encoder weights (another fusion or size?): {missing[:5]}")


def _batches(data: Batch | Iterable[Batch], batch_size: int) -> Iterator[Batch]:
    """Tensors (a tuple or a dict) are cut into batches; anything else is iterated as a loader."""
    if isinstance(data, Mapping) and all(isinstance(v, Tensor) for v in data.values()):
        n = len(next(iter(data.values())))
        for i in range(0, n, batch_size):
            yield {k: v[i : i + batch_size] for k, v in data.items()}
    elif isinstance(data, (tuple, list)) and all(v is None or isinstance(v, Tensor) for v in data):
        n = len(next(v for v in data if v is not None))
        for i in range(0, n, batch_size):
            yield tuple(v if v is None else v[i : i + batch_size] for v in data)
    else:
        yield from data


def _unpack(batch: Batch) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(audio, video, label) of a dict (`audio`, `video`, `label`/`labels`/`target`) or a tuple."""
    if isinstance(batch, Mapping):
        label = next((batch[k] for k in ("label", "labels", "target") if k in batch), None)
        return batch.get("audio"), batch.get("video"), label
    return batch[0], batch[1], batch[2] if len(batch) > 2 else None


def _to_device(modalities: list[str], audio: Tensor | None, video: Tensor | None,
               device: torch.device) -> tuple[Tensor | None, Tensor | None]:
    """Each input copied to the device once per batch, and only if one of `modalities` uses it."""
    used = [select(m, audio, video) for m in modalities]
    return tuple(None if all(u[k] is None for u in used) else x.to(device, non_blocking=True)
                 for k, x in (("audio", audio), ("video", video)))


def _pooled(model: nn.Module, modality: str, audio: Tensor | None, video: Tensor | None) -> Tensor:
    """One modality setting's pooled features [B, D], on the CPU: N clips' features hold no device memory."""
    inputs = {k: x for k, x in select(modality, audio, video).items() if x is not None}
    return pool(model.forward_features(**inputs)).float().cpu()


@torch.no_grad()
def extract_features(model: nn.Module, data: Batch | Iterable[Batch], modality: str | Sequence[str] = "av",
                     batch_size: int = 64, return_labels: bool = False) -> Features | tuple[Features, Tensor]:
    """Frozen mean-pooled encoder features [N, D] (eval mode, masking off) of an AVMAE or AVClassifier.

    `data`: (audio, video[, labels]) tensors, a dict of them, or a loader of such batches (not shuffled, or
    use `return_labels=True` to get the labels in the same order). A sequence of modalities gives
    {modality: [N, D]} from one pass over `data`: a loader pays its decoding once, not once per modality.
    """
    modalities = [modality] if isinstance(modality, str) else list(modality)
    for m in modalities:  # fail before a long pass over the data, not after it
        check_choice("modality", m, INPUT_MODALITIES)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    feats, labels = {m: [] for m in modalities}, []
    try:
        for batch in _batches(data, batch_size):
            audio, video, label = _unpack(batch)
            audio, video = _to_device(modalities, audio, video, device)
            for m in feats:
                feats[m].append(_pooled(model, m, audio, video))
            if return_labels:
                labels.append(torch.as_tensor(label).cpu())
    finally:
        model.train(was_training)
    features = {m: torch.cat(f) for m, f in feats.items()}
    out = features[modality] if isinstance(modality, str) else features
    return (out, torch.cat(labels)) if return_labels else out


def to_numpy(a: ArrayLike) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)


def linear_probe(train_x: ArrayLike, train_y: ArrayLike, test_x: ArrayLike, test_y: ArrayLike,
                 multilabel: bool = False, max_iter: int = 200) -> dict[str, float]:
    """Logistic regression on standardised frozen features: {"accuracy"} or, multi-label, {"mAP"} (macro
    average precision over the classes with a positive test example)."""
    # scikit-learn (and the scipy.stats it imports) costs ~2 s of start-up: only the probe pays it.
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    train_x, train_y, test_x, test_y = (to_numpy(a) for a in (train_x, train_y, test_x, test_y))
    scaler = StandardScaler().fit(train_x)
    train_x, test_x = scaler.transform(train_x), scaler.transform(test_x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", "Label .* is present in all training examples")
        if not multilabel:
            clf = LogisticRegression(max_iter=max_iter).fit(train_x, train_y)
            return {"accuracy": float(clf.score(test_x, test_y))}
        clf = OneVsRestClassifier(LogisticRegression(max_iter=max_iter)).fit(train_x, train_y)
        scores = clf.decision_function(test_x)
    has_pos = test_y.sum(axis=0) > 0
    return {"mAP": float(average_precision_score(test_y[:, has_pos], scores[:, has_pos], average="macro"))}
