"""AV-MAE models (Georgescu et al., ICCV 2023): public API.

    model = create_model("tiny", fusion="mid", decoder="shared", objective="joint")
    out = model(audio, video)  # audio [B, T, 128], video [B, 3, T, H, W] uint8 or in [-1, 1]
    out.loss.backward()        # out.loss_audio, out.loss_video, out.pred_*, out.mask_* too

Choices beyond the paper, made explicit:
- Inpainting follows the authors' placement (target k's decoder positions 0..v-1 hold the other modality's
  v visible tokens), so v must be < N_k: `AVMAEConfig` rejects mask ratios that break this (the `tiny` input
  has equal token counts, so every ratio works there).
- The `joint` decoder decodes each inpainting direction's sequence on its own (concatenating them would leak
  k's visible tokens into k's prediction).
- With one-direction inpainting the other modality's loss is a 0 tensor; `loss` stays the weighted sum.
- The audio mask ratio defaults to 0.5 for every input; the released AudioSet config used 0.7.
- `inpainting_context: source` (not the default) encodes only each direction's source modality, so that
  under early/mid fusion the context cannot have attended to the target (docs/model.md).
- `AVMAEConfig.canonical()` says which configurations train the same network, and
  `AVMAEConfig.unused_parameters` which parameters a step leaves without a gradient (for DDP).

Fine-tuning (paper §6): `MBTClassifier.from_pretrained(checkpoint, resolve_finetune_config("vggsound"))`,
then `build_finetune_optimizer` and one `finetune_step` per batch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .avmae import AVMAE, AVMAEOutput
    from .config import CONTEXTS, DECODERS, DIRECTIONS, FUSIONS, OBJECTIVES, AVMAEConfig, FinetuneConfig
    from .downstream import AVClassifier, extract_features, linear_probe, load_encoder_state
    from .finetune import (
        FinetuneMetrics,
        FinetuneOptim,
        build_finetune_optimizer,
        finetune_loss,
        finetune_step,
    )
    from .mbt import MBTClassifier
    from .presets import FINETUNE, INPUTS, SIZES, create_model, resolve_config, resolve_finetune_config
    from .recipe import StepMetrics, TrainStep, build_optimizer, decay_split, param_groups, warmup_cosine

# Names resolve on first use (PEP 562): a study file is validated against `AVMAEConfig` and the presets
# (`avmae sweep --dry-run`, the sweep's driver) without importing torch and timm, which the modules need.
_SUBMODULE = {
    **dict.fromkeys(("AVMAE", "AVMAEOutput"), "avmae"),
    **dict.fromkeys(("AVMAEConfig", "CONTEXTS", "DECODERS", "DIRECTIONS", "FUSIONS", "OBJECTIVES",
                     "FinetuneConfig"), "config"),
    **dict.fromkeys(("AVClassifier", "extract_features", "linear_probe", "load_encoder_state"), "downstream"),
    **dict.fromkeys(("FinetuneMetrics", "FinetuneOptim", "build_finetune_optimizer", "finetune_loss",
                     "finetune_step"), "finetune"),
    "MBTClassifier": "mbt",
    **dict.fromkeys(("FINETUNE", "INPUTS", "SIZES", "create_model", "resolve_config",
                     "resolve_finetune_config"), "presets"),
    **dict.fromkeys(("StepMetrics", "TrainStep", "build_optimizer", "decay_split", "param_groups",
                     "warmup_cosine"), "recipe"),
}
__all__ = [
    "AVMAE", "AVMAEConfig", "AVMAEOutput", "AVClassifier", "CONTEXTS", "DECODERS", "DIRECTIONS", "FINETUNE",
    "FUSIONS", "FinetuneConfig", "FinetuneMetrics", "FinetuneOptim", "INPUTS", "MBTClassifier", "OBJECTIVES",
    "SIZES", "StepMetrics", "TrainStep", "build_finetune_optimizer", "build_optimizer", "create_model",
    "decay_split", "extract_features", "finetune_loss", "finetune_step", "linear_probe", "load_encoder_state",
    "param_groups", "resolve_config", "resolve_finetune_config", "warmup_cosine",
]


def __getattr__(name: str) -> Any:
    """Import the submodule that defines `name`, and keep the value here for later lookups."""
    if name not in _SUBMODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_SUBMODULE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
