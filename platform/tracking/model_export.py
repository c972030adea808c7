"""Trained encoders in MLflow: a trial's checkpoint logged to its run as a model, and a study's winner in the
Model Registry, so an encoder is reachable from the MLflow UI or another machine, not only as a path in a tag.

A logged encoder is an MLflow 3 `LoggedModel` linked to the trial's run (`runs:/<run>/encoder` or
`models:/<model id>`): the pyfunc of `encoder_pyfunc.py` with an input example and a signature, the encoder's
weights (decoder and optimiser state left out), and a copy of `avmae.models` as the package `avmae_encoder`.
`mlflow.pyfunc.load_model(uri)` gives it back with torch, timm, numpy and mlflow installed, no avmae needed:

    encoder = mlflow.pyfunc.load_model(f"models:/{study}/latest")     # the study's registered winner
    features = encoder.predict({"audio": audio, "video": video})      # {"av", "audio", "video"}: [B, D]

Only MLflow's client API and the tags of `tracking` are used: it works the same against a local SQLite store
and `mlflow server --serve-artifacts` (artifacts go through the server), and the tracking URI is the client's,
never MLflow's global one.

These writes go to MLflow directly, not through the study's durable queue (`queue`): choosing the encoders
reads the trial runs back, each request needs the answer of the one before (a logged model's id, the
registered model), and `MODEL_TAG`, which makes a rerun skip an encoder already logged, must land with the
upload it marks. When MLflow fails here the study tags the failure (through the queue) and `--resume` logs
the encoders.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from avmae.platform.tracking import layout as T
from avmae.platform.train.reports import metric_mode

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

MODEL_NAME = "encoder"  # the logged model's name: `runs:/<trial run>/encoder`
MODEL_TAG = T.MODEL_TAG
MODELS_PACKAGE = "avmae_encoder"  # the name `avmae.models` ships under (no clash with an installed avmae)
CHECKPOINT_FILE = "checkpoint.pt"  # = trainer.CHECKPOINT_FILE (trainer imports torch: not imported here)
PYFUNC_FILE = Path(__file__).with_name("encoder_pyfunc.py")
PROGRESS_BARS = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"  # mlflow.environment_variables
PREDICT_HINT_NUDGE = "Add type hints to the `predict` method"
REQUIREMENTS = ("torch", "timm", "numpy", "mlflow")  # what loading the model needs, pinned to this driver's
Policy = Literal["best_per_cell", "all", "none"]
POLICIES: tuple[str, ...] = ("best_per_cell", "all", "none")
# Registered versions carry these tags (besides the study metric and its score).
CELL, SEED, CONFIG, GIT_COMMIT = "cell", "seed", "config", "git_commit"


def log_encoder(client: MlflowClient, run_id: str, checkpoint: str | Path) -> str:
    """Log the encoder of `checkpoint` (a `checkpoint.pt`, the folder holding one, or its URI on the study's
    storage, e.g. s3://...) to the trial run `run_id` as a pyfunc model; returns its `models:/<id>` URI and
    tags the run with it (`MODEL_TAG`)."""
    import mlflow
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="avmae-encoder-") as tmp:
        folder = Path(tmp)
        encoder, config = _encoder_weights(_fetch(checkpoint, folder), folder / "encoder.pt")
        experiment = client.get_run(run_id).info.experiment_id
        model = client.create_logged_model(experiment, name=MODEL_NAME, source_run_id=run_id,
                                           tags={T.FUSION_TAG: str(config["fusion"])})
        try:
            mlflow.pyfunc.save_model(
                path=folder / "model",
                python_model=str(PYFUNC_FILE),
                artifacts={"checkpoint": str(encoder)},
                code_paths=[str(_models_package(folder / "code"))],
                model_config={"models_package": MODELS_PACKAGE},
                signature=_signature(config),
                input_example=_input_example(config),
                pip_requirements=_requirements(),
                mlflow_model=Model(run_id=run_id, model_id=model.model_id, model_uuid=model.model_id,
                                   artifact_path=model.artifact_location),
            )
            client.log_model_artifacts(model.model_id, str(folder / "model"))
        except BaseException:
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
            raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    uri = f"models:/{model.model_id}"
    client.set_tag(run_id, MODEL_TAG, uri)
    return uri


@contextmanager
def quiet_mlflow() -> Iterator[None]:
    """MLflow's console chatter while encoders or records are written and read back, which tells a user
    nothing: its nudge to type `predict` (the pyfunc is untyped on purpose: MLflow would read the hints as a
    second schema beside the tensor signature), its INFO line on validating the input example, and its
    artifact progress bars."""
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level, bars, show = pyfunc_log.level, os.environ.get(PROGRESS_BARS), warnings.showwarning

    def show_but_the_nudge(message: Any, *args: Any, **kwargs: Any) -> None:
        if PREDICT_HINT_NUDGE not in str(message):
            show(message, *args, **kwargs)

    os.environ[PROGRESS_BARS] = "false"
    pyfunc_log.setLevel(logging.WARNING)
    # Not a warnings filter: MLflow resets the filters around its check (`filter_user_warnings_once`).
    warnings.showwarning = show_but_the_nudge
    try:
        yield
    finally:
        warnings.showwarning = show
        pyfunc_log.setLevel(level)
        if bars is None:
            os.environ.pop(PROGRESS_BARS, None)
        else:
            os.environ[PROGRESS_BARS] = bars


def log_study_models(client: MlflowClient, study_run_id: str, metric: str, policy: Policy) -> dict[str, str]:
    """Log the encoders a study keeps (`evaluation.log_models`): `best_per_cell`, each cell's best finished
    trial by `metric`; `all`, every trial with a checkpoint; `none`. Trials that already have one (a resumed
    study) are skipped. Returns {trial run id: model URI} of the trials that have one now."""
    if policy not in POLICIES:
        raise ValueError(f"evaluation.log_models: {policy!r} is not one of {', '.join(POLICIES)}")
    if policy == "none":
        return {}
    runs = _trial_runs(client, study_run_id)
    chosen = best_per_cell(client, runs, metric) if policy == "best_per_cell" else [
        r for r in runs if r.data.tags.get(T.CHECKPOINT_TAG)]
    return {run.info.run_id: _ensure_logged(client, run) for run in chosen}


def register_winner(client: MlflowClient, study_run_id: str, metric: str, study_name: str) -> Any:
    """Register the study's best finished trial by `metric` (its encoder logged first if it has none) as a
    version of the registered model `study_name`, tagged with its cell, seed, config and git commit. Returns
    the `ModelVersion`; None when no finished trial has a checkpoint. Idempotent: a resumed study that ends
    with the same winner gets no second version."""
    candidates = best_per_cell(client, _trial_runs(client, study_run_id), metric)
    if not candidates:
        return None
    winner = _best(client, candidates, metric)
    run_id, uri = winner.info.run_id, _ensure_logged(client, winner)
    for existing in client.search_model_versions(f"name = {T.literal(study_name)}"):
        if existing.run_id == run_id:
            return existing
    if not client.search_registered_models(f"name = {T.literal(study_name)}"):
        client.create_registered_model(study_name, description=f"best encoder of avmae study {study_name}")
    tags = {
        CELL: winner.data.tags.get(T.CELL_TAG, ""),
        SEED: winner.data.params.get(T.SEED_PARAM, ""),
        CONFIG: json.dumps(winner.data.params, sort_keys=True),  # the registry takes 100k characters
        GIT_COMMIT: client.get_run(study_run_id).data.tags.get(T.GIT_TAG, "unknown"),
        "metric": metric,
        metric: str(_score(client, winner, metric)),
    }
    return client.create_model_version(study_name, uri, run_id=run_id, tags=tags,
                                       model_id=uri.removeprefix("models:/"))


def best_per_cell(client: MlflowClient, runs: list[Run], metric: str) -> list[Run]:
    """Each cell's best finished trial with a checkpoint, by its best value of `metric` (the value its kept
    checkpoint scored: the trial's callback keeps the best epoch's checkpoint)."""
    cells: dict[str, list[Run]] = {}
    for run in runs:
        tags = run.data.tags
        if tags.get(T.STATUS_TAG) == T.TrialStatus.FINISHED.value and tags.get(T.CHECKPOINT_TAG):
            cells.setdefault(tags.get(T.CELL_TAG, ""), []).append(run)
    winners = [_best(client, cell, metric) for _, cell in sorted(cells.items())]
    return [run for run in winners if math.isfinite(_score(client, run, metric))]


def _best(client: MlflowClient, runs: list[Run], metric: str) -> Run:
    sign = -1.0 if metric_mode(metric) == "max" else 1.0
    return min(runs, key=lambda run: (_order(sign * _score(client, run, metric)), run.info.start_time or 0))


def _order(value: float) -> float:
    return value if math.isfinite(value) else math.inf  # a trial without a score never wins


def _score(client: MlflowClient, run: Run, metric: str) -> float:
    """The trial's best finite value of `metric` (NaN when it has none)."""
    values = [m.value for m in client.get_metric_history(run.info.run_id, metric) if math.isfinite(m.value)]
    if not values:
        return math.nan
    return max(values) if metric_mode(metric) == "max" else min(values)


def _trial_runs(client: MlflowClient, study_run_id: str) -> list[Run]:
    experiment = client.get_run(study_run_id).info.experiment_id
    query = f"tags.`{T.PARENT_TAG}` = {T.literal(study_run_id)} and tags.`{T.ROLE_TAG}` = 'trial'"
    runs, token = [], None
    while True:
        page = client.search_runs([experiment], query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _ensure_logged(client: MlflowClient, run: Run) -> str:
    tags = run.data.tags
    return tags.get(MODEL_TAG) or log_encoder(client, run.info.run_id, tags[T.CHECKPOINT_TAG])


def _fetch(checkpoint: str | Path, folder: Path) -> Path:
    """A local copy of (or the local path to) the checkpoint file."""
    text = str(checkpoint)
    if "://" not in text:
        path = Path(text)
        path = path / CHECKPOINT_FILE if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path} (the trial's {T.CHECKPOINT_TAG} tag): was the "
                                    "study's storage moved or cleaned?")
        return path
    import pyarrow.fs

    fs, remote = pyarrow.fs.FileSystem.from_uri(text)
    if fs.get_file_info(remote).type == pyarrow.fs.FileType.Directory:
        remote = f"{remote.rstrip('/')}/{CHECKPOINT_FILE}"
    local = folder / CHECKPOINT_FILE
    with fs.open_input_stream(remote) as source, local.open("wb") as target:
        shutil.copyfileobj(source, target)
    return local


def _encoder_weights(checkpoint: Path, out: Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint's config and encoder weights alone (tokenisers and encoder: no decoder, no optimiser
    state, no torch.compile or DDP prefixes), written to `out`."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "config" not in state or "state_dict" not in state:
        raise ValueError(f"{checkpoint} is not an avmae trial checkpoint (a dict of 'config', 'state_dict')")
    weights = {k.removeprefix("_orig_mod.").removeprefix("module."): v
               for k, v in state["state_dict"].items()}
    weights = {k: v for k, v in weights.items() if k.startswith(("tokenizers.", "encoder."))}
    torch.save({"config": state["config"], "state_dict": weights}, out)
    return out, dict(state["config"])


def _models_package(folder: Path) -> Path:
    """A copy of `avmae.models` as the package MODELS_PACKAGE (its modules import each other relatively)."""
    import avmae.models

    source, target = Path(avmae.models.__file__).parent, folder / MODELS_PACKAGE
    target.mkdir(parents=True)
    for module in source.glob("*.py"):
        shutil.copy2(module, target / module.name)
    return target


def _shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    from avmae.models import AVMAEConfig

    return AVMAEConfig(**config).input_shapes


def _signature(config: dict[str, Any]) -> Any:
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    shapes, dim = _shapes(config), int(config["embed_dim"])
    inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, *shapes["audio"]), "audio"),
                     TensorSpec(np.dtype(np.uint8), (-1, *shapes["video"]), "video")])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, dim), name) for name in ("av", "audio", "video")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _input_example(config: dict[str, Any]) -> dict[str, Any]:
    """One clip of the model's input geometry (seeded noise: an example, not data)."""
    import numpy as np

    shapes, rng = _shapes(config), np.random.default_rng(0)
    return {"audio": rng.standard_normal((1, *shapes["audio"]), dtype=np.float32),
            "video": rng.integers(0, 256, (1, *shapes["video"]), dtype=np.uint8)}


def _requirements() -> list[str]:
    """Pinned to the versions that logged the model, without local build tags (torch's `+cu130`)."""
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(name)
    return pins

