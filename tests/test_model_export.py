"""Trained encoders in MLflow (model_export): against a local SQLite store and a real `mlflow server
--serve-artifacts` subprocess, a study's trial runs written through `tracking`, and tiny real checkpoints.
The logged encoder is loaded back in a fresh interpreter that cannot import avmae."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from avmae.models import AVClassifier, create_model, extract_features
from avmae.platform.tracking import layout as T
from avmae.platform.tracking import model_export as E
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]
STUDY = "export"
METRIC = "val/loss"
# trial -> (cell, status, val/loss per epoch, probe/av_acc at the end)
TRIALS = {
    "a1": ("early", T.TrialStatus.FINISHED, [0.9, 0.5], 0.30),
    "a2": ("early", T.TrialStatus.FINISHED, [0.7, 0.6], 0.60),
    "a3": ("early", T.TrialStatus.PRUNED, [0.1], 0.90),  # lowest loss, but stopped early
    "b1": ("mid", T.TrialStatus.DIVERGED, [0.05], 0.95),  # diverged: never a winner
    "b2": ("mid", T.TrialStatus.FINISHED, [0.8, 0.4], 0.50),  # the study's best finished trial
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError):
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`mlflow server --serve-artifacts` (one worker) on a SQLite store and a local artifacts folder."""
    tmp = tmp_path_factory.mktemp("mlflow_server")
    port, url = free_port(), None
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--serve-artifacts",
         "--artifacts-destination", str(tmp / "artifacts")],
        cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(tmp / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, tmp / "artifacts"
    finally:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


@pytest.fixture(params=["sqlite", "server"])
def client(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """A client of a local SQLite store (artifacts under tmp_path) or of the server (artifacts proxied)."""
    monkeypatch.chdir(tmp_path)  # a SQLite store puts its artifacts in ./mlruns
    if request.param == "server":
        url, artifacts = request.getfixturevalue("server")
        client = MlflowClient(url)
        client.served_artifacts = artifacts  # where the server, not the client, must write them
        return client
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def checkpoint(folder: Path, seed: int, fusion: str) -> Path:
    """A trial folder with a `checkpoint.pt` as the trainer writes it (optimiser state included)."""
    torch.manual_seed(seed)
    model = create_model("tiny", fusion=fusion)
    folder.mkdir(parents=True)
    optimizer = torch.optim.AdamW(model.parameters())
    torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict(), "epoch": 2, "step": 4,
                "optimizer": optimizer.state_dict()}, folder / E.CHECKPOINT_FILE)
    return folder


def make_study(client: MlflowClient, root: Path, study: str = STUDY) -> tuple[str, dict[str, str]]:
    """The study run and {trial: run id}, laid out as `callbacks.MlflowTrials` writes them (checkpoint tags
    included)."""
    study_run = T.start_study_run(client, study, {"name": study})
    client.set_tag(study_run, T.GIT_TAG, "0123abcd")
    runs = {}
    for seed, (trial, (fusion, status, losses, acc)) in enumerate(TRIALS.items()):
        params = {"lr": 1e-3, T.SEED_PARAM: seed}
        run = T.start_trial_run(client, study_run, trial, {"fusion": fusion}, params)
        for epoch, loss in enumerate(losses, 1):
            T.log_metrics(client, run, {METRIC: loss}, step=epoch)
        T.log_metrics(client, run, {"probe/av_acc": acc}, step=len(losses))
        client.set_tag(run, T.CHECKPOINT_TAG, str(checkpoint(root / trial, seed, fusion)))
        T.end_trial_run(client, run, status)
        runs[trial] = run
    T.end_study_run(client, study_run)
    return study_run, runs


def features(checkpoint_dir: Path, audio: np.ndarray, video: np.ndarray) -> dict[str, np.ndarray]:
    """What the checkpoint gives when loaded directly: the probe's pooled features."""
    model = AVClassifier.from_pretrained(checkpoint_dir / E.CHECKPOINT_FILE, num_classes=1)
    inputs = (torch.from_numpy(audio), torch.from_numpy(video))
    out = extract_features(model, inputs, ["av", "audio", "video"])
    return {k: v.numpy() for k, v in out.items()}


FRESH = textwrap.dedent("""
    import importlib.abc, sys

    class NoAvmae(importlib.abc.MetaPathFinder):  # the editable install's finder would serve the checkout
        def find_spec(self, name, path=None, target=None):
            if name == "avmae" or name.startswith("avmae."):
                raise ModuleNotFoundError(f"{name} is blocked: the model must load without avmae")

    sys.meta_path.insert(0, NoAvmae())
    import mlflow, numpy as np

    inputs, uri, out = sys.argv[1:]
    x = np.load(inputs)
    encoder = mlflow.pyfunc.load_model(uri)
    got = encoder.predict({"audio": x["audio"], "video": x["video"]})
    zero = encoder.predict({"audio": x["audio"], "video": np.zeros_like(x["video"])})
    code = sys.modules["avmae_encoder"].__file__
    np.savez(out, **got, audio_zero_video=zero["audio"])
    print("CODE", code)
    print("AVMAE", sorted(m for m in sys.modules if m == "avmae" or m.startswith("avmae.")))
""")


def test_the_study_winner_is_registered_and_loads_in_a_fresh_process_without_avmae(client, tmp_path):
    study_run, runs = make_study(client, tmp_path / "storage")

    logged = E.log_study_models(client, study_run, METRIC, "best_per_cell")
    version = E.register_winner(client, study_run, METRIC, STUDY)

    # Each cell's best *finished* trial: not the pruned a3 nor the diverged b1, though they scored lower.
    assert set(logged) == {runs["a1"], runs["b2"]}
    for run_id, uri in logged.items():
        assert client.get_run(run_id).data.tags[E.MODEL_TAG] == uri
    assert E.MODEL_TAG not in client.get_run(runs["a3"]).data.tags
    assert version.run_id == runs["b2"]
    assert version.source == logged[runs["b2"]]
    registered = client.get_model_version(STUDY, version.version)
    assert registered.tags[E.CELL] == "fusion=mid"
    assert registered.tags[E.SEED] == "4"
    assert registered.tags[E.GIT_COMMIT] == "0123abcd"
    assert json.loads(registered.tags[E.CONFIG])["lr"] == "0.001"
    assert float(registered.tags[METRIC]) == pytest.approx(0.4)
    if hasattr(client, "served_artifacts"):
        assert len(list(client.served_artifacts.rglob("MLmodel"))) == 2

    rng = np.random.default_rng(1)
    shapes = create_model("tiny").config.input_shapes
    audio = rng.standard_normal((3, *shapes["audio"]), dtype=np.float32)
    video = rng.integers(0, 256, (3, *shapes["video"]), dtype=np.uint8)
    np.savez(tmp_path / "inputs.npz", audio=audio, video=video)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": client.tracking_uri}
    result = subprocess.run(
        [sys.executable, "-I", "-c", FRESH, str(tmp_path / "inputs.npz"), f"models:/{STUDY}/latest",
         str(tmp_path / "out.npz")], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "AVMAE []" in result.stdout
    code = result.stdout.split("CODE ")[1].splitlines()[0]
    assert not code.startswith(str(Path(E.__file__).parents[1])), code  # the copy that came with the model

    got = np.load(tmp_path / "out.npz")
    want = features(tmp_path / "storage" / "b2", audio, video)
    for setting in ("av", "audio", "video"):
        np.testing.assert_allclose(got[setting], want[setting], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["audio_zero_video"], want["audio"], rtol=1e-5, atol=1e-6)


def test_policies_resume_and_the_metric_mode(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    study_run, runs = make_study(client, tmp_path / "storage")
    experiment = client.get_run(study_run).info.experiment_id

    assert E.log_study_models(client, study_run, METRIC, "none") == {}
    assert client.search_logged_models([experiment]) == []
    with pytest.raises(ValueError, match="log_models: 'best' is not one of best_per_cell, all, none"):
        E.log_study_models(client, study_run, METRIC, "best")
    # A probe score is maximised: a2 beats a1 in cell early.
    trials = E._trial_runs(client, study_run)
    best = {r.data.tags[T.TRIAL_TAG] for r in E.best_per_cell(client, trials, "probe/av_acc")}
    assert best == {"a2", "b2"}

    first = E.log_study_models(client, study_run, METRIC, "best_per_cell")
    everything = E.log_study_models(client, study_run, METRIC, "all")  # a resumed study asks again
    winner, again = (E.register_winner(client, study_run, METRIC, STUDY) for _ in range(2))

    assert set(everything) == set(runs.values())  # every trial with a checkpoint: pruned, diverged too
    assert {k: everything[k] for k in first} == first  # logged once, not twice
    assert len(client.search_logged_models([experiment])) == len(TRIALS)
    assert str(winner.version) == str(again.version) == "1"
    assert len(client.search_model_versions(f"name = '{STUDY}'")) == 1


def test_a_checkpoint_uri_and_bad_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(T.experiment_id(client, "uris")).info.run_id
    folder = checkpoint(tmp_path / "trial", 0, "early")

    uri = E.log_encoder(client, run, folder.as_uri())  # a URI on the study's storage (pyarrow reads it)

    import mlflow

    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=client.tracking_uri)
    encoder = mlflow.pyfunc.load_model(local)
    assert encoder.metadata.get_input_schema().input_names() == ["audio", "video"]
    assert set(encoder.metadata.get_output_schema().input_names()) == {"av", "audio", "video"}
    weights = torch.load(Path(encoder._model_impl.context.artifacts["checkpoint"]), weights_only=True)
    assert weights["state_dict"] and not any(k.startswith("decoder.") for k in weights["state_dict"])
    assert "optimizer" not in weights
    with pytest.raises(FileNotFoundError, match=f"no checkpoint at {tmp_path / 'gone'}"):
        E.log_encoder(client, run, tmp_path / "gone")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt is not an avmae trial checkpoint"):
        E.log_encoder(client, run, tmp_path / "other.pt")


def test_the_checkpoint_file_name_is_the_trainers():
    from avmae.platform.train.trainer import CHECKPOINT_FILE

    assert E.CHECKPOINT_FILE == CHECKPOINT_FILE


def test_mlflows_predict_hint_nudge_is_kept_off_the_console_and_other_warnings_are_not():
    """MLflow resets the warning filters around its check (`filter_user_warnings_once`): only the nudge
    goes, in a process of its own (pytest records warnings instead of printing them)."""
    code = textwrap.dedent("""
        import warnings
        from mlflow.utils.annotations import filter_user_warnings_once
        from avmae.platform.tracking.model_export import quiet_mlflow

        @filter_user_warnings_once
        def check():
            warnings.warn("\\x1b[33mAdd type hints to the `predict` method to enable data validation")

        with quiet_mlflow():
            check()
            warnings.warn("a warning of our own")
        check()
    """)
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert err.count("Add type hints") == 1 and "a warning of our own" in err  # the nudge only outside
