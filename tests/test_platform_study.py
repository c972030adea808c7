"""study.py without a Ray runtime: each cell's Optuna sampler gets its own seed, stable across runs; repeats
of a sampled point; the workers' set-up hook; archiving a study to start it afresh; the local dashboard's
port held until Ray binds it."""

from __future__ import annotations

import dataclasses
import errno
import importlib
import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from avmae.platform.study.record import Launch, StudyExistsError, archive_study, study_record
from avmae.platform.study.runner import cell_seed, study_search
from avmae.platform.study.runtime import reserved_port, runtime_env
from avmae.platform.study.spec import REPEAT_KEY, parse_spec
from avmae.platform.tracking import layout as T
from avmae.platform.train import ray_logging
from conftest import TINY_STUDY
from mlflow.tracking import MlflowClient


def first_points(spec, cell, n=3):
    """The first `n` points the cell's search suggests, as the study's searcher would ask for them."""
    search = study_search(spec).searches[T.cell_key(cell)]
    return [search.suggest(f"trial_{i}") for i in range(n)]


def test_every_cell_has_its_own_sampler_seed_and_first_points():
    spec = parse_spec(TINY_STUDY)
    cells = spec.cells()
    seeds = [cell_seed(spec.train.seed, cell) for cell in cells]
    assert len(set(seeds)) == len(cells)
    lrs = [tuple(p["lr"] for p in first_points(spec, cell)) for cell in cells]
    assert len(set(lrs)) == len(cells)  # not the same LRs in every cell
    assert len({lr for cell_lrs in lrs for lr in cell_lrs}) == 3 * len(cells)


def test_a_cells_points_are_the_same_in_every_run():
    spec = parse_spec(TINY_STUDY)
    cell = spec.cells()[1]
    assert first_points(spec, cell) == first_points(spec, cell)  # a restarted or resumed study samples alike
    other = parse_spec({**TINY_STUDY, "train": {**TINY_STUDY["train"], "seed": 1}})
    assert cell_seed(other.train.seed, cell) != cell_seed(spec.train.seed, cell)


@pytest.mark.slow
def test_the_cell_seed_does_not_depend_on_the_process():
    """Python's str hash() changes with PYTHONHASHSEED; the cell seed must not."""
    code = ("from avmae.platform.study.runner import cell_seed; "
            "print(cell_seed(0, {'objective': 'joint', 'fusion': 'mid'}))")
    seeds = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": str(h), "PATH": ""}).stdout.strip()
        for h in (1, 2)
    }
    assert seeds == {str(cell_seed(0, {"fusion": "mid", "objective": "joint"}))}


def test_workers_drop_only_the_routine_placement_group_cleanup_message():
    hook = runtime_env({})["worker_process_setup_hook"]
    module, name = hook.rsplit(".", 1)
    getattr(importlib.import_module(module), name)()  # what every Ray worker of a sweep runs first
    logger = logging.getLogger(ray_logging.CLEANER_LOGGER)
    routine, failure = (
        logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, (), None)
        for message in ("Detected that the Ray Train controller actor (ab12) is dead. Cleaning up ...",
                        "Failed to clean up placement group: boom")
    )
    assert not logger.filter(routine) and logger.filter(failure)


def test_with_repeats_each_sampled_point_runs_once_per_seed():
    spec = parse_spec({**TINY_STUDY, "repeats": 2})
    cell = spec.cells()[0]
    points = first_points(spec, cell, n=4)
    assert [p[REPEAT_KEY] for p in points] == [0, 1, 0, 1]
    assert points[0]["lr"] == points[1]["lr"] != points[2]["lr"] == points[3]["lr"]
    assert [spec.resolve_trial({**cell, **p}).seed for p in points] == [0, 1, 0, 1]


def test_restart_archives_the_mlflow_experiment_and_the_storage_then_starts_afresh(tmp_path: Path):
    spec = parse_spec(TINY_STUDY)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    launch = Launch("t", str(tmp_path / "runs" / "t"), client.tracking_uri)
    study_record(launch, spec)  # what a first run that failed leaves behind
    old = T.start_study_run(client, "t", {})
    archived = archive_study(launch, client)
    assert len(archived) == 2 and all(".archived-" in line for line in archived)
    assert client.get_experiment_by_name("t") is None
    (moved,) = [e for e in client.search_experiments() if e.name.startswith("t.archived-")]
    assert client.get_run(old).info.experiment_id == moved.experiment_id  # nothing lost
    assert not (tmp_path / "runs" / "t").exists()
    assert list((tmp_path / "runs").glob("t.archived-*/study.json"))
    study_record(launch, spec)  # a fresh run of the same name is accepted now


def test_resume_compares_what_the_study_trains_not_which_version_wrote_its_record(tmp_path: Path):
    """A record written before a field existed resumes (the field takes its default); a field whose value
    differs, the user's edit or a changed default, is refused by its dotted name with both values."""
    spec = parse_spec(TINY_STUDY)
    launch = Launch("t", str(tmp_path / "runs" / "t"), f"sqlite:///{tmp_path / 'mlflow.db'}")
    study_record(launch, spec)
    path = tmp_path / "runs" / "t" / "study.json"
    record = json.loads(path.read_text())
    resume = dataclasses.replace(launch, resume=True)
    del record["spec"]["evaluation"]["pooling"]  # as an avmae without the pooling field wrote it
    path.write_text(json.dumps(record))
    study_record(resume, spec)
    record["spec"]["evaluation"]["pooling"] = "tokens"  # the default then, not now
    path.write_text(json.dumps(record))
    with pytest.raises(StudyExistsError) as refused:
        study_record(resume, spec)
    assert "changed: evaluation.pooling: 'tokens' then, 'mean' now." in str(refused.value)
    record["spec"]["evaluation"]["pooling"] = "mean"
    record["spec"]["budget"] = {"trial_hours": 1.0}  # a budget may grow on resume
    path.write_text(json.dumps(record))
    study_record(resume, spec)
    more_seeds = spec.model_copy(update={"repeats": 3})  # seeds may be added (only the missing ones run)
    study_record(resume, more_seeds)
    assert json.loads(path.read_text())["spec"]["repeats"] == 3  # where the restored search reads them
    with pytest.raises(StudyExistsError, match="repeats: 3 then, 2 now"):  # never taken away
        study_record(resume, spec.model_copy(update={"repeats": 2}))


@pytest.mark.skipif(sys.platform != "linux", reason="the port is held only on Linux (BSD sockets refuse the "
                    "server's second bind)")
def test_a_reserved_port_is_refused_to_others_but_taken_by_a_server_that_reuses_addresses():
    with reserved_port() as port:
        with socket.socket() as other, pytest.raises(OSError) as refused:
            other.bind(("127.0.0.1", port))  # what a process looking for a free port would try
        assert refused.value.errno == errno.EADDRINUSE
        with socket.socket() as server:  # as Ray's dashboard (aiohttp) and uvicorn bind
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", port))
            server.listen()
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
