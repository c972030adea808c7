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
"""

from .avmae import AVMAE, AVMAEOutput
from .config import DECODERS, DIRECTIONS, FUSIONS, OBJECTIVES, AVMAEConfig
from .downstream import AVClassifier, extract_features, linear_probe, load_encoder_state
from .presets import INPUTS, SIZES, create_model, resolve_config
from .recipe import StepMetrics, TrainStep, build_optimizer, param_groups, warmup_cosine

__all__ = [
    "AVMAE", "AVMAEConfig", "AVMAEOutput", "AVClassifier", "DECODERS", "DIRECTIONS", "FUSIONS", "INPUTS",
    "OBJECTIVES", "SIZES", "StepMetrics", "TrainStep", "build_optimizer", "create_model", "extract_features",
    "linear_probe", "load_encoder_state", "param_groups", "resolve_config", "warmup_cosine",
]
