"""`avmae status`: counts, best scores and ETA read back from a real SQLite MLflow store that the test writes
through `tracking`'s functions, as a sweep does."""

from __future__ import annotations

import re
import time
from collections import Counter

import pytest
from avmae.platform.cli.main import main
from avmae.platform.cli.status import Trials, eta_seconds, expected_trials, status
from avmae.platform.tracking import layout as T
from click.testing import CliRunner

S = T.TrialStatus
LOST_FOR_MS = 10 * 60 * 1000
CONFIG = {
    "name": "demo",
    "metric": "val/loss",
    "axes": {"fusion": ["early", "mid"]},
    "search": {"lr": {"dist": "loguniform", "low": 1e-4, "high": 1e-2}},
    "trials_per_cell": 3,
}
# (cell, trial, how it ended, its last val/loss). The diverged trial logs a huge finite placeholder, as a
# sweep did before divergence was flagged: it must not count as a score.
TRIALS = [
    ("early", "t0", S.FINISHED, 0.52),
    ("early", "t1", S.PRUNED, 0.71),
    ("early", "t2", S.DIVERGED, 1e6),
    ("mid", "t3", S.FINISHED, 0.43),
    ("mid", "t4", S.RUNNING, 0.45),
    ("mid", "t5", S.FAILED, None),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('status') / 'mlflow.db'}"
    client = MlflowClient(uri)
    study_run = T.start_study_run(client, "demo", CONFIG)
    for fusion, trial, ended, loss in TRIALS:
        run = T.start_trial_run(client, study_run, trial, {"fusion": fusion}, {"lr": 1e-3})
        if loss is not None:
            T.log_metrics(client, run, {T.VAL_LOSS: loss}, step=1)
        if ended is S.DIVERGED:
            T.log_metrics(client, run, {T.DIVERGED_AT_STEP: 7}, step=1)
        if ended is not S.RUNNING:
            T.end_trial_run(client, run, ended)
    # A second study, finished, and a third, whose sweep was killed with a trial still marked running.
    done = T.start_study_run(client, "older", {**CONFIG, "name": "older", "axes": {}, "trials_per_cell": 1})
    T.end_trial_run(client, T.start_trial_run(client, done, "t0", {}, {}), S.FINISHED)
    T.end_study_run(client, done)
    gone = T.start_study_run(client, "killed", {**CONFIG, "name": "killed"})
    T.start_trial_run(client, gone, "t0", {"fusion": "early"}, {})
    T.end_study_run(client, gone, "KILLED")
    # A fourth, whose driver was SIGKILLed 10 minutes ago: its run still says RUNNING, its beats stopped.
    lost = T.start_study_run(client, "lost", {**CONFIG, "name": "lost"})
    T.start_trial_run(client, lost, "t0", {"fusion": "early"}, {})
    client.set_tag(lost, T.HEARTBEAT_TAG, T.heartbeat_text(int(time.time() * 1000) - LOST_FOR_MS))
    return uri


def run(*args: str) -> str:
    result = CliRunner().invoke(status, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_a_study_shows_its_trials_per_cell_with_the_best_score(store):
    out = run("demo", "--tracking-uri", store)
    lines = out.splitlines()
    header = next(line.split() for line in lines if line.startswith("cell"))
    assert header == ["cell", "running", "finished", "pruned", "diverged", "failed", "interrupted", "best",
                      "val/loss"]
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.startswith("fusion=")}
    assert rows == {
        "fusion=early": ["0", "1", "1", "1", "0", "0", "0.52"],  # not the diverged trial's 1e+06
        "fusion=mid": ["1", "1", "0", "0", "1", "0", "0.43"],
    }
    assert "demo" in lines[0] and ": running, started " in lines[0]
    assert "Trials: 6 of 6 (1 running, 2 finished, 1 pruned, 1 diverged, 1 failed)" in out
    assert "Best val/loss so far: 0.43" in out
    assert "ETA: " in out


def test_without_a_study_it_lists_the_studies_in_the_store(store):
    out = CliRunner().invoke(main, ["status", "--tracking-uri", store])  # through `avmae`, as users run it
    assert out.exit_code == 0, out.output
    rows = {line.split()[0]: line for line in out.output.splitlines()[2:]}
    assert set(rows) == {"demo", "older", "killed", "lost"}
    assert rows["demo"].split()[1:3] == ["running", "6"]
    assert "1 running, 2 finished, 1 pruned, 1 diverged, 1 failed" in rows["demo"]
    assert rows["older"].split()[1:3] == ["finished", "1"] and "1 finished" in rows["older"]
    assert rows["killed"].split()[1] == "interrupted"
    assert rows["lost"].split()[1:3] == ["driver", "lost"]  # not "running"


def test_a_study_whose_driver_stopped_beating_is_shown_as_driver_lost(store):
    out = run("lost", "--tracking-uri", store)
    assert ": driver lost, started " in out.splitlines()[0] and "ETA" not in out
    assert "Driver lost: no heartbeat since " in out and re.search(r"\(10 min \d\d s ago", out)
    assert "--resume" in out and "avmae mlflow flush" in out


def test_a_heartbeat_is_stale_after_three_intervals():
    now = 1_800_000_000_000
    beat = T.heartbeat_ms({T.HEARTBEAT_TAG: T.heartbeat_text(now)})
    assert beat == now and T.DRIVER_LOST_AFTER_S == 3 * T.HEARTBEAT_INTERVAL_S
    assert not T.driver_lost("RUNNING", beat, now + int(T.DRIVER_LOST_AFTER_S * 1000))
    assert T.driver_lost("RUNNING", beat, now + int(T.DRIVER_LOST_AFTER_S * 1000) + 1)
    assert not T.driver_lost("FINISHED", beat, now + 10**9)  # an ended study is not waiting on a driver
    assert not T.driver_lost("RUNNING", None, now)  # no beat (an older avmae): its MLflow status stands
    assert T.heartbeat_ms({T.HEARTBEAT_TAG: "garbled"}) is None


def test_a_study_whose_sweep_is_gone_says_how_to_continue(store):
    out = run("killed", "--tracking-uri", store)
    assert "interrupted" in out.splitlines()[0] and "ETA" not in out
    assert "1 trial run(s) still say running" in out and "--resume" in out


def test_an_unknown_study_names_the_ones_there(store):
    result = CliRunner().invoke(status, ["nope", "--tracking-uri", store])
    assert result.exit_code == 1
    assert "no study 'nope'" in result.output and "demo, killed, lost, older" in result.output


def test_no_local_store_is_created_by_looking(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(status, [])
    assert result.exit_code == 1 and "--tracking-uri" in result.output
    assert not (tmp_path / "mlflow.db").exists()


def test_the_study_size_comes_from_its_logged_config():
    params = T.flatten({**CONFIG, "search": {"lr": {"dist": "grid", "values": [1, 2, 3]}}})
    assert expected_trials(params) == 2 * 3 * 3  # cells x trials per cell x grid points
    assert expected_trials(T.flatten(CONFIG)) == 6
    assert expected_trials({}) is None
    repeated = T.flatten({**CONFIG, "repeats": 2, "exclude": [{"fusion": "early"}]})
    assert expected_trials(repeated) == 1 * 3 * 2  # the cell left out, each configuration twice


def test_the_eta_extrapolates_the_rate_trials_ended_at():
    trials = Trials(counts=Counter(finished=2, pruned=1, running=1), first_start_ms=0)
    # 3 ended in 120 s; 6 - 3 remain -> 120 s more.
    assert eta_seconds(trials, 6, now_ms=120_000) == pytest.approx(120)
    assert eta_seconds(Trials(counts=Counter(running=2), first_start_ms=0), 6, now_ms=1) is None
