"""The miniature's fine-tuning recipe (AV-Digits, tiny preset), torch-free so a study file that names it is
read without importing torch."""

from __future__ import annotations

from typing import Any

from avmae.models.config import FinetuneConfig
from avmae.models.presets import resolve_finetune_config

# The miniature recipe (tiny preset, AV-Digits, 420 training clips), chosen by trials (docs/miniature.md);
# every other field is the paper's (FinetuneConfig): SGD momentum 0.9, layer decay 0.75, grad clip 1.0,
# mixmod. Clips are decoded at the pretraining geometry (4 frames at stride 4): positional tables unchanged.
MINIATURE_RECIPE: dict[str, Any] = dict(
    num_classes=10, fusion_layer=2, num_frames=4, frame_stride=4,  # fusion at mid fusion's first joint layer
    epochs=30, warmup_epochs=2.5, batch_size=32, lr=0.3, drop_path=0.1, label_smoothing=0.1, mixup_alpha=0.5,
)


def miniature_recipe(modality: str = "av", **overrides: Any) -> FinetuneConfig:
    """The miniature's fine-tuning recipe for one setting, with any `FinetuneConfig` field overridden."""
    fields = {**MINIATURE_RECIPE, "modality": modality, **overrides}
    return resolve_finetune_config("vggsound", **fields)
