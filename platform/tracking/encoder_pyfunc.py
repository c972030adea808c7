"""The MLflow pyfunc of a trained AV-MAE encoder: logged by `model_export` as "models from code".

MLflow copies this file into the model and runs it when the model loads, so it imports nothing of avmae: the
model code travels with the model as a package of its own (`model_config["models_package"]`, a copy of
`avmae.models` under another name in the model's `code/` folder), which `load_context` imports by name.
Loading needs torch, timm, numpy and mlflow, not an avmae checkout.

`predict({"audio": [B, T, 128] float32, "video": [B, 3, T, H, W] uint8})` returns the frozen encoder's
mean-pooled features [B, D] per input setting: `audio` and `video` (each modality alone) and `av` (both),
exactly what the study's linear probe is trained on (`avmae.models.extract_features`). Inputs are what
avmae's loaders produce: the normalised log-mel (the dataset's audio stats) and raw uint8 frames.

The signature asks for both arrays (MLflow's tensor signatures have no optional inputs), but the `audio` and
`video` outputs each see their own input alone: with one modality, pass zeros for the other and read its
output, or call `unwrap_python_model().predict(None, {"audio": a})`, which returns only what it can.
"""

from __future__ import annotations

import importlib
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel

MODALITIES = ("audio", "video")


class AVMAEEncoder(PythonModel):
    """Pooled audio, video and audiovisual features of the encoder in the `checkpoint` artifact."""

    def load_context(self, context: Any) -> None:
        models = importlib.import_module(context.model_config["models_package"])
        checkpoint = torch.load(context.artifacts["checkpoint"], map_location="cpu", weights_only=True)
        # The classifier is the encoder (tokenisers + encoder, masking off) with a head that is never used.
        self.model = models.AVClassifier.from_pretrained(checkpoint, num_classes=1).eval()
        self.extract_features = models.extract_features
        self.batch_size = int(context.model_config.get("batch_size", 32))

    def predict(self, context, model_input, params=None):  # untyped: MLflow would read hints as a schema
        inputs = {m: model_input.get(m) for m in MODALITIES}
        given = [m for m in MODALITIES if inputs[m] is not None]
        if not given:
            raise ValueError(f"give the encoder 'audio' and/or 'video' arrays, got {sorted(model_input)}")
        settings = ["av", *MODALITIES] if len(given) == 2 else given
        audio, video = (None if x is None else torch.from_numpy(np.ascontiguousarray(x)) for x in
                        (inputs["audio"], inputs["video"]))
        features = self.extract_features(self.model, (audio, video), settings, batch_size=self.batch_size)
        return {m: f.numpy() for m, f in features.items()}


mlflow.models.set_model(AVMAEEncoder())
