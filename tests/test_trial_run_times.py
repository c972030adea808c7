"""A trial that runs while MLflow is down gets its run later, from the journal: the run still starts when the
trial started, not when the server came back (bench/soak.py found runs starting after they ended). A real
SQLite store, no Ray."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from avmae.platform.study.runtime import free_port
from avmae.platform.tracking import entries as E
from avmae.platform.tracking import layout as T
from avmae.platform.tracking.callbacks import MlflowTrials
from avmae.platform.tracking.queue import JOURNAL_DIR, Writer
from mlflow.tracking import MlflowClient
from test_tracking import SPEC, epoch_result, fake_trial, flush


@pytest.fixture
def client(tmp_path: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_a_trial_run_created_after_an_outage_starts_when_the_trial_started(
    client: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    study, folder = T.start_study_run(client, "late", {}), tmp_path / "late"
    callback = MlflowTrials(f"http://127.0.0.1:{free_port()}", study, SPEC, str(folder / JOURNAL_DIR),
                            flush_wait_s=0)
    trial = fake_trial("l_00000", {"objective": "joint", "lr": 0.01}, last_result=epoch_result(2))
    callback.setup()
    started_ms = int(time.time() * 1000)
    callback.on_trial_start(0, [trial], trial)  # the whole trial while MLflow is down
    callback.on_trial_complete(0, [trial], trial)
    ended_ms = int(time.time() * 1000)
    callback.on_experiment_end([trial])
    time.sleep(1.5)  # the server comes back later
    assert flush(folder, client).exit_code == 0

    experiment = client.get_run(study).info.experiment_id
    (run,) = client.search_runs([experiment], f"tags.`{T.PARENT_TAG}` = '{study}'")
    assert started_ms <= run.info.start_time <= run.info.end_time <= ended_ms  # the trial's, not the flush's


def test_a_trial_run_entry_without_a_start_time_starts_when_it_is_sent(client: MlflowClient):
    """What an older avmae left in a journal: no `time_ms`; the run starts when it is sent, as before."""
    study = T.start_study_run(client, "older", {})
    entry = E.decode({"op": "trial_run", "study_run": study, "trial": "o_1", "cell": {"objective": "joint"},
                      "params": {}})
    before = int(time.time() * 1000)
    Writer(client).apply(entry)
    experiment = client.get_run(study).info.experiment_id
    (run,) = client.search_runs([experiment], f"tags.`{T.PARENT_TAG}` = '{study}'")
    assert before <= run.info.start_time <= int(time.time() * 1000)
