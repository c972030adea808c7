"""AV-MAE models (Georgescu et al., ICCV 2023): public API.

    model = create_model("tiny", fusion="mid", decoder="shared", objective="joint")
    out = model(audio, video)  # audio [B, T, 128], video [B, 3, T, H, W] in [-1, 1]
    out.loss.backward()
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
