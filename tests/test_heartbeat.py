"""The study driver's heartbeat (`tracking.heartbeat`), and a study whose driver stopped beating shown as
`driver lost` on its dashboard. A real SQLite MLflow store, no Ray: the lost driver is a backdated beat."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from avmae.dashboards.collect import collect_study
from avmae.dashboards.report import write_dashboard
from avmae.platform.tracking import layout as T
from avmae.platform.tracking.heartbeat import Heartbeat
from mlflow.tracking import MlflowClient


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('heartbeat') / 'mlflow.db'}")


def now_ms() -> int:
    return int(time.time() * 1000)


def backdate(client: MlflowClient, run_id: str, seconds: float) -> None:
    client.set_tag(run_id, T.HEARTBEAT_TAG, T.heartbeat_text(now_ms() - int(seconds * 1000)))


def lost(client: MlflowClient, run_id: str) -> bool:
    run = client.get_run(run_id)
    return T.driver_lost(run.info.status, T.heartbeat_ms(run.data.tags), now_ms())


def test_the_driver_beats_while_the_study_runs_and_stops_with_it(client: MlflowClient):
    study = T.start_study_run(client, "beating", {})
    assert not lost(client, study)  # the run's start is its first beat
    backdate(client, study, 10 * T.HEARTBEAT_INTERVAL_S)
    assert lost(client, study)
    with Heartbeat(client.tracking_uri, study, interval_s=0.05):
        deadline = time.monotonic() + 30
        while lost(client, study) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not lost(client, study)
    time.sleep(0.2)  # a beat in flight lands
    last = client.get_run(study).data.tags[T.HEARTBEAT_TAG]
    time.sleep(0.3)
    assert client.get_run(study).data.tags[T.HEARTBEAT_TAG] == last  # no beat after the block


def test_the_dashboard_says_driver_lost_instead_of_running(client: MlflowClient, tmp_path: Path):
    study = T.start_study_run(client, "gone", {"metric": T.VAL_LOSS})
    for trial, loss in (("t0", 0.5), ("t1", 0.4)):
        run = T.start_trial_run(client, study, trial, {"fusion": "mid"}, {"lr": 1e-3})
        T.log_metrics(client, run, {T.VAL_LOSS: loss, T.TRAIN_LOSS: loss, T.EPOCH: 1}, step=1)
    assert not collect_study(client, "gone").driver_lost

    backdate(client, study, T.DRIVER_LOST_AFTER_S + 60)
    data = collect_study(client, "gone")
    assert data.parent_status == "RUNNING" and data.driver_lost
    page = write_dashboard(client, data, tmp_path / "gone.html", log_to_mlflow=False).read_text()
    assert "partial: driver lost" in page and "still running" not in page
