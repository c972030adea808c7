"""The MLflow layout (tracking.py) and the driver callbacks that write it, on a real SQLite store, no Ray."""

from __future__ import annotations

import json
import math
import pickle
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray.cloudpickle
from avmae.platform.cli.flush import mlflow_group
from avmae.platform.study import steps
from avmae.platform.study.progress import CellSummary, StudyProgress, summary_table
from avmae.platform.study.runtime import free_port, ray_runtime
from avmae.platform.study.spec import REPEAT_KEY, parse_spec
from avmae.platform.tracking import entries as E
from avmae.platform.tracking import layout as T
from avmae.platform.tracking.callbacks import MlflowTrials, trial_status
from avmae.platform.tracking.provenance import split_datasets
from avmae.platform.tracking.queue import JOURNAL_DIR, open_queue
from avmae.platform.train.reports import (
    BACKLOG,
    CHECKPOINT_PATH,
    DIVERGED,
    DIVERGED_SCORE,
    HISTORY,
    HOSTNAME,
    NODE_ID,
    EpochReport,
)
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from ray import tune

SPEC = parse_spec({
    "name": "layout",
    "data": {"kind": "av-digits", "root": "/data/avd"},
    "model": {"preset": "tiny"},
    "axes": {"objective": ["joint", "inpainting"]},
    "search": {"lr": {"dist": "loguniform", "low": 1e-4, "high": 1e-1}},
    "trials_per_cell": 2,
    "train": {"epochs": 2, "batch_size": 8},
})


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> MlflowClient:
    """One store for the module (creating its tables takes seconds); each test uses its own study name."""
    return MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")


def fake_trial(trial_id: str, config: dict, last_result: dict | None = None, status: str = "TERMINATED",
               error: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config=config, last_result=last_result or {}, status=status,
                           get_error=lambda: error, error_file=None, pickled_error_file=None)


def test_study_and_trial_runs_are_found_again_by_their_tags(client: MlflowClient):
    study = T.start_study_run(client, "found", {"a": {"b": 1}})
    assert T.start_study_run(client, "found", {"a": {"b": 1}}) == study
    trial = T.start_trial_run(client, study, "x_00000", {"objective": "joint"}, {"lr": 0.1})
    assert T.start_trial_run(client, study, "x_00000", {"objective": "joint"}, {"lr": 0.1}) == trial
    run = client.get_run(trial)
    assert run.data.tags[T.PARENT_TAG] == study and run.data.tags[T.CELL_TAG] == "objective=joint"
    assert run.data.params["lr"] == "0.1"
    assert client.get_run(study).data.params["a.b"] == "1"


def test_the_study_experiment_opens_as_model_training_in_the_mlflow_ui(client: MlflowClient):
    """The MLflow UI opens an experiment at its runs table, not the GenAI view, by this tag; an experiment an
    older avmae made gets it when the study resumes."""
    T.start_study_run(client, "kind", {})
    assert client.get_experiment_by_name("kind").tags[T.EXPERIMENT_KIND_TAG] == "custom_model_development"
    client.create_experiment("older")
    T.start_study_run(client, "older", {})
    assert client.get_experiment_by_name("older").tags[T.EXPERIMENT_KIND_TAG] == T.EXPERIMENT_KIND


def test_history_is_logged_in_batches_and_non_finite_values_are_dropped(client: MlflowClient):
    run = T.start_trial_run(client, T.start_study_run(client, "history", {}), "t", {}, {})
    records = [{"step": s, T.TRAIN_LOSS: 1.0 / s, T.TRAIN_LR: 0.1} for s in range(1, 700)]
    records.append({"step": 700, T.TRAIN_LOSS: math.nan, T.TRAIN_LR: 0.1})
    T.log_history(client, run, records)  # 1400 values: two requests
    history = client.get_metric_history(run, T.TRAIN_LOSS)
    assert len(history) == 699 and {m.step for m in history} == set(range(1, 700))
    assert len(client.get_metric_history(run, T.TRAIN_LR)) == 700


@pytest.mark.parametrize(("status", "mlflow_status"), [
    (T.TrialStatus.FINISHED, "FINISHED"), (T.TrialStatus.PRUNED, "KILLED"),
    (T.TrialStatus.DIVERGED, "FINISHED"), (T.TrialStatus.FAILED, "FAILED"),
])
def test_a_trial_ends_with_its_status_tag(client: MlflowClient, status: T.TrialStatus, mlflow_status: str):
    run = T.start_trial_run(client, T.start_study_run(client, f"end-{status.value}", {}), "t", {}, {})
    T.end_trial_run(client, run, status)
    info = client.get_run(run)
    assert info.data.tags[T.STATUS_TAG] == status.value and info.info.status == mlflow_status


def test_trial_status_from_the_last_result():
    assert trial_status({T.EPOCH: 2}, epochs=2) is T.TrialStatus.FINISHED
    assert trial_status({T.EPOCH: 1}, epochs=2) is T.TrialStatus.PRUNED
    assert trial_status({T.EPOCH: 1, DIVERGED: 1}, epochs=2) is T.TrialStatus.DIVERGED


def test_trial_params_are_the_resolved_model_and_the_effective_hyperparameters():
    params = SPEC.resolve_trial({"objective": "inpainting", "lr": 0.01}).params(SPEC)
    assert params["objective"] == "inpainting" and params["lr"] == 0.01
    assert params["fusion"] == "late" and params["preset"] == "tiny" and params["mask_ratio_video"] == 0.9
    assert params["epochs"] == 2 and params["batch_size"] == 8 and params["weight_decay"] == 0.05
    assert params[T.SEED_PARAM] == 0 and params["repeat"] == 0
    repeat = SPEC.resolve_trial({"objective": "inpainting", "lr": 0.01, REPEAT_KEY: 2})
    assert (repeat.repeat, repeat.seed, repeat.params(SPEC)[T.SEED_PARAM]) == (2, 2, 2)
    assert repeat.model == SPEC.resolve_trial({"objective": "inpainting", "lr": 0.01}).model


def trials_callback(client: MlflowClient, study: str, tmp_path: Path) -> MlflowTrials:
    return MlflowTrials(client.tracking_uri, study, SPEC, str(tmp_path / "journal"))


def sent(callback: MlflowTrials) -> None:
    """Wait until MLflow has every queued write (what the end of a sweep does)."""
    assert callback.queue.close(60) == 0


def test_the_callback_mirrors_a_trial_into_a_nested_run(client: MlflowClient, tmp_path: Path):
    study = T.start_study_run(client, "mirror", {})
    callback = trials_callback(client, study, tmp_path)
    trial = fake_trial("a_00000", {"objective": "joint", "lr": 0.01})
    callback.on_trial_start(0, [trial], trial)
    history = [{"step": 2, T.TRAIN_LOSS: 0.9, T.TRAIN_GRAD_NORM: 1.0}, {"step": 4, T.TRAIN_LOSS: 0.8}]
    for epoch, hist in ((1, history[:1]), (2, history[1:])):
        result = {T.EPOCH: epoch, T.TRAIN_LOSS: 0.9, T.VAL_LOSS: 1.0 / epoch, HISTORY: hist, NODE_ID: "n1",
                  HOSTNAME: "h1", CHECKPOINT_PATH: f"/ckpt/{epoch}", DIVERGED: 0}
        if epoch == 2:
            result[T.probe_metric("av", "acc")] = 0.5
        callback.on_trial_result(0, [trial], trial, result)
        assert HISTORY not in result  # consumed: Tune's own loggers never see it
    trial.last_result = result
    sent(callback)  # the sweep that stored it has ended
    callback = pickle.loads(pickle.dumps(callback))  # how Tune stores and restores it (in a new process)
    callback.on_trial_complete(0, [trial], trial)
    sent(callback)

    run = client.get_run(T.find_trial_run(client, study, "a_00000"))
    assert run.data.tags[T.PARENT_TAG] == study and run.data.tags[T.TRIAL_TAG] == "a_00000"
    assert run.data.tags[T.STATUS_TAG] == "finished" and run.info.status == "FINISHED"
    assert run.data.tags[T.NODE_TAG] == "n1" and run.data.tags[T.HOST_TAG] == "h1"
    assert run.data.tags[T.CHECKPOINT_TAG] == "/ckpt/2"  # the lower val/loss
    assert run.data.params["objective"] == "joint" and run.data.params["lr"] == "0.01"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, T.TRAIN_LOSS)] == [
        (2, 0.9), (4, 0.8)]
    assert [m.step for m in client.get_metric_history(run.info.run_id, T.VAL_LOSS)] == [1, 2]
    assert run.data.metrics[T.probe_metric("av", "acc")] == 0.5
    assert T.TRAIN_LOSS in run.data.metrics and run.data.metrics[T.EPOCH] == 2
    assert_datasets(run)


def assert_datasets(run) -> None:
    """The run holds each split the study reads as an MLflow dataset input, once."""
    import mlflow.data

    inputs = run.inputs.dataset_inputs
    splits = {i.tags[0].value: i.dataset for i in inputs if i.tags[0].key == T.DATASET_CONTEXT_TAG}
    assert len(inputs) == len(splits) and sorted(splits) == ["test", "train"]  # probe splits included
    expected = {d["split"]: d for d in split_datasets(SPEC)}
    for split, dataset in splits.items():
        assert dataset.name == "av-digits" and dataset.digest == expected[split]["digest"]
        assert mlflow.data.get_source(dataset).uri == "/data/avd"
    assert splits["test"].digest != splits["train"].digest


def test_diverged_and_failed_trials_say_so(client: MlflowClient, tmp_path: Path):
    study = T.start_study_run(client, "outcomes", {})
    callback = trials_callback(client, study, tmp_path)
    diverged = fake_trial("d", {"objective": "joint", "lr": 0.1})
    callback.on_trial_start(0, [diverged], diverged)
    callback.on_trial_result(0, [diverged], diverged, {
        T.EPOCH: 1, T.VAL_LOSS: 0.7, DIVERGED: 0, HISTORY: [{"step": 2, T.TRAIN_LOSS: 0.9}]})
    # What trainer.py reports when the loss leaves the floats: the sentinel score, for Tune alone.
    result = EpochReport(epoch=2, steps=3, history=[], diverged_at_step=3).to_result(T.VAL_LOSS)
    assert result[T.VAL_LOSS] == DIVERGED_SCORE
    callback.on_trial_result(0, [diverged], diverged, result)
    diverged.last_result = result
    callback.on_trial_complete(0, [diverged], diverged)
    sent(callback)
    run = client.get_run(T.find_trial_run(client, study, "d"))
    assert run.data.tags[T.STATUS_TAG] == "diverged" and run.data.metrics[T.DIVERGED_AT_STEP] == 3
    # MLflow keeps the last finite values, never the sentinel.
    assert [m.value for m in client.get_metric_history(run.info.run_id, T.TRAIN_LOSS)] == [0.9]
    assert [m.value for m in client.get_metric_history(run.info.run_id, T.VAL_LOSS)] == [0.7]
    assert run.data.tags[T.REPEAT_TAG] == "0" and run.data.params[T.SEED_PARAM] == "0"


def epoch_result(epoch: int, backlog: list | None = None) -> dict:
    """What rank 0 reports for `epoch` (2 steps each), as Tune hands it to the callback."""
    history = [{"step": 2 * epoch - 1, T.TRAIN_LOSS: 0.5}, {"step": 2 * epoch, T.TRAIN_LOSS: 0.4}]
    report = EpochReport(epoch=epoch, steps=2 * epoch, val={T.VAL_LOSS: 1.0 / epoch}, reported_at=1e9 + epoch,
                         history=history)
    return {**report.to_result(T.VAL_LOSS), **({BACKLOG: backlog} if backlog else {})}


def epoch_steps(client: MlflowClient, run_id: str) -> dict[str, list[int]]:
    return {name: sorted(m.step for m in client.get_metric_history(run_id, name))
            for name in (T.EPOCH, T.VAL_LOSS, T.TRAIN_LOSS)}


def test_writes_wait_in_the_journal_while_mlflow_is_down_and_a_replay_sends_them_once(
    client: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    """Nothing waits on a server that does not answer; `avmae mlflow flush` sends what is queued, and
    sending it again (a crash between MLflow's answer and the entry's removal) duplicates nothing."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    study, folder = T.start_study_run(client, "outage", {}), tmp_path / "outage"
    journal = folder / JOURNAL_DIR
    callback = MlflowTrials(f"http://127.0.0.1:{free_port()}", study, SPEC, str(journal), flush_wait_s=1)
    trial = fake_trial("o_00000", {"objective": "joint", "lr": 0.01})
    callback.setup()  # what Tune calls as the experiment starts
    began = time.monotonic()
    callback.on_trial_start(0, [trial], trial)
    for epoch in (1, 2):
        callback.on_trial_result(0, [trial], trial, epoch_result(epoch))
    trial.last_result = epoch_result(2)
    callback.on_trial_complete(0, [trial], trial)
    assert time.monotonic() - began < 1.0  # Tune's loop went on
    callback.on_experiment_end([trial])
    assert f"avmae mlflow flush {folder}" in capsys.readouterr().out
    entries = {p.name: p.read_bytes() for p in journal.glob("*.json")}
    assert len(entries) == 6  # the run, its two splits, two epochs, the end

    for _ in range(2):
        flushed = flush(folder, client)
        assert flushed.exit_code == 0 and "Sent 6 of 6" in flushed.output, flushed.output
        assert not list(journal.glob("*.json"))
        for name, body in entries.items():
            (journal / name).write_bytes(body)
    experiment = client.get_run(study).info.experiment_id
    (run,) = client.search_runs([experiment], f"tags.`{T.PARENT_TAG}` = '{study}'")  # one run, created once
    assert run.data.tags[T.STATUS_TAG] == "finished" and run.info.status == "FINISHED"
    assert epoch_steps(client, run.info.run_id) == {
        T.EPOCH: [1, 2], T.VAL_LOSS: [1, 2], T.TRAIN_LOSS: [1, 2, 3, 4]}
    assert_datasets(client.get_run(run.info.run_id))


def flush(folder: Path, client: MlflowClient):
    return CliRunner().invoke(mlflow_group, ["flush", str(folder), "--tracking-uri", client.tracking_uri])


def down_queue(journal: Path, monkeypatch: pytest.MonkeyPatch):
    """The study's queue, its MLflow a port where no server answers."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    return open_queue(str(journal), f"http://127.0.0.1:{free_port()}")


def test_the_study_level_writes_wait_in_the_journal_while_mlflow_is_down(
    client: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    """The study's end, its reference rows, a step's failure, its provenance params and an interrupted
    trial's end, all written while MLflow is down, reach it with `avmae mlflow flush`, as of when they
    happened."""
    study = T.start_study_run(client, "study-outage", {})
    trial = T.start_trial_run(client, study, "s_00000", {"objective": "joint"}, {})
    folder = tmp_path / "study-outage"
    queue = down_queue(folder / JOURNAL_DIR, monkeypatch)
    monkeypatch.setattr(steps.ray, "get", lambda rows: rows)  # the baseline task's result, here at once
    steps.log_baselines(queue, study, {"random_init": {0: {"probe/av_acc": 0.1}, 1: {"probe/av_acc": 0.2}}})
    steps.tell_failure(queue, study, "log_models", "the encoders were not logged", RuntimeError("no disk"))
    queue.put(E.StudyParams(study, {"provenance.torch": "2.14.1"}))
    stopped = E.InterruptTrials(study, time_ms=1_700_000_000_000)
    queue.put(stopped)
    queue.put(E.EndStudy(study, "KILLED", time_ms=stopped.time_ms + 5))
    assert queue.close(1) == 6
    assert client.get_run(study).info.status == "RUNNING"  # nothing reached MLflow

    flushed = flush(folder, client)
    assert flushed.exit_code == 0 and "Sent 6 of 6" in flushed.output, flushed.output
    run = client.get_run(study)
    assert (run.info.status, run.info.end_time) == ("KILLED", stopped.time_ms + 5)
    baseline = T.baseline_metric("random_init", "probe/av_acc")
    assert [(m.step, m.value) for m in client.get_metric_history(study, baseline)] == [(0, 0.1), (1, 0.2)]
    assert run.data.tags[T.ERROR_TAG] == "log_models: no disk"
    assert run.data.params["provenance.torch"] == "2.14.1"
    ended = client.get_run(trial)
    assert ended.data.tags[T.STATUS_TAG] == "interrupted" and ended.info.end_time == stopped.time_ms


def test_the_study_driver_and_the_trials_callback_share_one_queue(client: MlflowClient, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture):
    """One sender and one numbering of entries per journal folder in a process, however its URI is spelled;
    the callback lets go at the sweep's end, and the driver, the last holder, waits for MLflow."""
    study = T.start_study_run(client, "shared", {})
    journal = tmp_path / "shared" / JOURNAL_DIR
    driver = open_queue(str(journal), client.tracking_uri)
    callback = MlflowTrials(client.tracking_uri, study, SPEC, f"file://{journal}/")
    assert callback.queue is driver
    trial = fake_trial("q_00000", {"objective": "joint", "lr": 0.01})
    callback.on_trial_start(0, [trial], trial)
    callback.on_experiment_end([trial])
    driver.put(E.EndStudy(study, "FINISHED"))
    assert driver.close(60) == 0 and "warning" not in capsys.readouterr().out
    assert client.get_run(study).info.status == "FINISHED" and T.find_trial_run(client, study, "q_00000")
    again = open_queue(str(journal), client.tracking_uri)
    assert again is not driver and again.close(0) == 0  # a closed queue is not handed out


def test_entries_an_older_avmae_left_in_the_journal_are_sent(client: MlflowClient, tmp_path: Path):
    """A study interrupted under an older avmae left its entries as plain dicts: they are read as typed
    entries and sent. An entry no avmae wrote is kept aside, unsent, and said so."""
    study = T.start_study_run(client, "old-journal", {})
    journal = tmp_path / "old-journal" / JOURNAL_DIR
    journal.mkdir(parents=True)
    old = [
        {"op": "trial_run", "study_run": study, "trial": "t_0", "cell": {"objective": "joint"},
         "params": {"lr": 0.01}, "repeat": 1},
        {"op": "epochs", "study_run": study, "trial": "t_0", "records": [
            {"epoch": 1, "time_ms": 1_700_000_000_000, "metrics": {T.VAL_LOSS: 0.5, T.EPOCH: 1.0},
             "history": [{"step": 1, T.TRAIN_LOSS: 0.7}]}]},
        {"op": "tags", "study_run": study, "trial": "t_0", "tags": {T.HOST_TAG: "h1"}},
        {"op": "end", "study_run": study, "trial": "t_0", "status": "pruned",
         "tags": {T.CHECKPOINT_TAG: "/c"}, "time_ms": 1_700_000_000_500},
        {"op": "from_the_future", "study_run": study},
    ]
    for i, entry in enumerate(old):
        (journal / f"{i:012d}.json").write_text(json.dumps(entry))
    assert E.decode(old[3]) == E.End(study, "t_0", T.TrialStatus.PRUNED, {T.CHECKPOINT_TAG: "/c"},
                                     1_700_000_000_500)

    flushed = flush(journal.parent, client)
    assert flushed.exit_code == 0 and "000000000004.json is unreadable" in flushed.stderr, flushed.output
    assert [p.name for p in journal.iterdir()] == ["000000000004.json.unreadable"]
    run = client.get_run(T.find_trial_run(client, study, "t_0"))
    assert run.data.tags[T.STATUS_TAG] == "pruned" and run.info.status == "KILLED"
    assert run.data.tags[T.REPEAT_TAG] == "1" and run.data.tags[T.HOST_TAG] == "h1"
    assert run.data.tags[T.CHECKPOINT_TAG] == "/c" and run.info.end_time == 1_700_000_000_500
    assert epoch_steps(client, run.info.run_id) == {T.EPOCH: [1], T.VAL_LOSS: [1], T.TRAIN_LOSS: [1]}


def test_a_restored_trial_logs_the_epochs_its_checkpoint_holds_that_mlflow_lacks(client: MlflowClient,
                                                                                 tmp_path: Path):
    """The driver was killed after logging epoch 1; its workers went on and checkpointed epoch 2, which it
    never saw. The restored trial's first report (epoch 3) brings the records of epochs 1 and 2."""
    study = T.start_study_run(client, "backlog", {})
    callback = trials_callback(client, study, tmp_path)
    trial = fake_trial("b_00000", {"objective": "joint", "lr": 0.01})
    callback.on_trial_start(0, [trial], trial)
    callback.on_trial_result(0, [trial], trial, epoch_result(1))
    records = [EpochReport.from_result(epoch_result(e)).record() for e in (1, 2)]
    result = epoch_result(3, backlog=records)
    callback.on_trial_result(0, [trial], trial, result)
    assert BACKLOG not in result  # consumed: Tune's own loggers never see it
    sent(callback)
    run = T.find_trial_run(client, study, "b_00000")
    assert epoch_steps(client, run) == {
        T.EPOCH: [1, 2, 3], T.VAL_LOSS: [1, 2, 3], T.TRAIN_LOSS: list(range(1, 7))}


def failing_trainable(config: dict) -> None:
    """A trial that reports once and raises. (Shipped by value: Ray's workers cannot import tests/.)"""
    tune.report({T.EPOCH: 1, T.VAL_LOSS: 1.0})
    raise RuntimeError(f"CUDA out of memory at lr {config['lr']}")


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_trial_that_raises_is_failed_with_its_reason(tmp_path, client: MlflowClient):
    """A real Tune trial raising, not a mock: the tag is set from what Tune recorded of the exception when
    it calls the callbacks (its copy on the study's storage is not synced yet then)."""
    study = T.start_study_run(client, "raises", {})
    callback = trials_callback(client, study, tmp_path)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with ray_runtime(None):
        tune.Tuner(failing_trainable, param_space={"objective": "joint", "lr": 0.1},
                   run_config=tune.RunConfig(storage_path=str(tmp_path / "runs"), callbacks=[callback],
                                             verbose=0)).fit()
    (run,) = client.search_runs([client.get_run(study).info.experiment_id], f"tags.`{T.ROLE_TAG}` = 'trial'")
    assert run.data.tags[T.STATUS_TAG] == "failed" and run.info.status == "FAILED"
    assert run.data.tags[T.ERROR_TAG] == "RuntimeError: CUDA out of memory at lr 0.1"


def test_progress_shows_every_cell_by_outcome_in_one_view(capsys: pytest.CaptureFixture):
    progress = StudyProgress(["objective=joint", "objective=inpainting"], per_cell=4, metric=T.VAL_LOSS,
                             epochs=2, axes=["objective"], live=True)
    joint, inpainting = {"objective": "joint"}, {"objective": "inpainting"}
    trials = [
        fake_trial("a", joint, {T.EPOCH: 2, T.VAL_LOSS: 0.5}),
        fake_trial("b", joint, {T.EPOCH: 1, T.VAL_LOSS: 0.7}),
        fake_trial("c", inpainting, {T.EPOCH: 1, T.VAL_LOSS: 1e6, DIVERGED: 1}),
        fake_trial("d", inpainting, {T.EPOCH: 1, T.VAL_LOSS: 0.4}, status="RUNNING"),
    ]
    progress.on_trial_complete(0, trials, trials[0])
    assert progress._bars[""].n == 3 and progress._bars["objective=joint"].n == 2
    assert progress._bars["objective=inpainting"].n == 1
    progress.on_experiment_end(trials)
    err = capsys.readouterr().err
    assert "finished 1, pruned 1, best val/loss 0.5" in err
    assert "running 1, diverged 1, best val/loss 0.4" in err


def test_progress_in_a_log_file_is_one_plain_line_per_ended_trial(capsys: pytest.CaptureFixture):
    """Slurm's output file, CI, `| tee`: no cursor codes, one line per ended trial with the study's count."""
    progress = StudyProgress(["objective=joint", "objective=inpainting"], per_cell=2, metric=T.VAL_LOSS,
                             epochs=2, axes=["objective"])  # stderr is captured here: not a terminal
    joint, inpainting = {"objective": "joint"}, {"objective": "inpainting"}
    trials = [fake_trial("a", joint, {T.EPOCH: 2, T.VAL_LOSS: 0.5}, status="RUNNING"),  # as Tune calls back
              fake_trial("b", inpainting, {T.EPOCH: 1, T.VAL_LOSS: 0.7}, status="RUNNING")]
    progress.on_trial_start(0, trials, trials[1])
    progress.on_trial_result(0, trials, trials[1], trials[1].last_result)
    progress.on_trial_complete(0, trials, trials[0])
    progress.on_experiment_end(trials)
    header, *lines = capsys.readouterr().err.splitlines()
    assert header.endswith("study: 4 trials in 2 cells (objective=joint, objective=inpainting); a line per "
                           "ended trial follows")
    assert len(lines) == 1 and "\x1b" not in lines[0] and "\r" not in lines[0]
    assert "study 1/4 trials ended, ETA" in lines[0]
    assert lines[0].endswith("objective=joint: finished 1, best val/loss 0.5")


def test_the_summary_shows_the_best_configuration_per_cell_by_its_mean_over_seeds():
    """lr 0.1 has the single best trial (0.30) but the worse mean (0.40 vs 0.33): a table of best trials
    would crown the luckiest seed."""
    def finished(lr: float, loss: float, av: float, k: int) -> SimpleNamespace:
        return SimpleNamespace(error=None, config={"lr": lr, REPEAT_KEY: k},
                               metrics={T.EPOCH: 2, T.VAL_LOSS: loss, "probe/av_acc": av})

    grid = [
        finished(0.1, 0.30, 0.9, 0), finished(0.1, 0.50, 0.5, 1),
        finished(0.2, 0.32, 0.8, 0), finished(0.2, 0.34, 0.6, 1),
        SimpleNamespace(error=None, config={"lr": 9.0}, metrics={T.EPOCH: 1, T.VAL_LOSS: 1e6, DIVERGED: 1}),
        SimpleNamespace(error=RuntimeError("x"), config={"lr": 1.0}, metrics={}),
    ]
    summary = CellSummary.from_results("objective=joint", grid, T.VAL_LOSS, epochs=2, searched=["lr"])
    assert summary.best_params == {"lr": 0.2} and summary.best_seeds == 2
    assert summary.best_loss == pytest.approx(0.33)
    assert summary.best_scores == {"probe/av_acc": pytest.approx(0.7)}
    assert summary.counts == {"finished": 4, "diverged": 1, "failed": 1}
    header, _, row = summary_table([summary], T.VAL_LOSS).splitlines()
    assert header.split()[:6] == ["cell", "best", "val/loss", "lr", "seeds", "probe/av_acc"]
    assert row.split()[:5] == ["objective=joint", "0.33", "0.2", "2", "0.7"]


def test_what_tune_stores_of_the_callback_holds_no_credentials(monkeypatch: pytest.MonkeyPatch):
    secret = "postgresql+psycopg2://mlflow:s3cret@db:5432/mlflow"
    stored = pickle.dumps(MlflowTrials(secret, "run", SPEC, "/study/mlflow_journal"))
    assert b"s3cret" not in stored
    monkeypatch.setenv("MLFLOW_TRACKING_URI", secret)  # what the sweep's driver sets for itself
    assert pickle.loads(stored).tracking_uri == secret
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///other.db")
    assert "s3cret" not in pickle.loads(stored).tracking_uri  # never someone else's store
