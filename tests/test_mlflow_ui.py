"""The MLflow UI shows a study's experiment as model training: its runs table, with each trial's splits in the
Dataset column. A real `mlflow server` (one worker) fed through `tracking.layout`, and headless Chromium;
no Ray. Skipped, saying why, where Chromium or playwright is missing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from avmae.platform.tracking import layout as T

pytestmark = pytest.mark.browser
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOT = Path("/tmp/mlflow_ui.png")
STUDY = "ui-study"
TRIALS = {"t0": {"objective": "joint"}, "t1": {"objective": "inpainting"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on a fresh SQLite store, its artifacts in its own folder; its URL."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright (dev extra) is not installed")
    folder = tmp_path_factory.mktemp("mlflow-ui")
    url = f"http://127.0.0.1:{free_port()}"
    store = f"sqlite:///{folder / 'mlflow.db'}"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--workers", "1",
               "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]]
    with (folder / "server.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (folder / "server.log").read_text()[-2000:]
                    pytest.fail(f"mlflow server did not answer: {log}")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def write_study(url: str) -> str:
    """A finished two-trial study as a sweep lays it out; its experiment id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    study = T.start_study_run(client, STUDY, {"metric": T.VAL_LOSS})
    for i, (trial, cell) in enumerate(TRIALS.items()):
        run = T.start_trial_run(client, study, trial, cell, {"lr": 0.01})
        T.log_metrics(client, run, {T.VAL_LOSS: 0.5 + i, T.EPOCH: 1}, step=1)
        for split in ("train", "test"):
            T.log_dataset(client, run, "av-digits", f"{i}{split}digest", "/data/avd", split, {"clips": 4})
        T.end_trial_run(client, run, T.TrialStatus.FINISHED)
    T.end_study_run(client, study)
    return client.get_run(study).info.experiment_id


def test_the_mlflow_ui_shows_the_runs_table_with_each_trials_datasets(server: str):
    from playwright.sync_api import sync_playwright

    experiment = write_study(server)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.goto(T.runs_page(server, experiment), wait_until="load")
            page.get_by_role("columnheader", name="Dataset").first.wait_for(timeout=60_000)
            # The trials are nested under the study run: open it.
            page.get_by_role("row").filter(has_text=STUDY).get_by_role("button").first.click()
            for trial, cell in TRIALS.items():
                page.get_by_role("row").filter(has_text=f"{T.cell_key(cell)}#{trial}").first.wait_for()
            datasets = page.get_by_role("gridcell").get_by_text("av-digits (")
            datasets.first.wait_for()
            page.screenshot(path=str(SCREENSHOT))
            shown = " ".join(datasets.all_inner_texts())
        finally:
            browser.close()
    assert "av-digits (0traindigest)" in shown and "av-digits (1traindigest)" in shown
