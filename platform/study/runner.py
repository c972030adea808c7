"""Runs a study: one Ray Tune `Tuner` per cell, Optuna (TPE) searching the cell's space, ASHA stopping poor
trials, and every trial a Ray Train `TorchTrainer` run. One Tuner per cell keeps Optuna's model inside the
cell (OptunaSearch cannot take `grid_search` over the cell axes); cells run one after another.

Resume: each cell's Tune experiment lives at `<storage>/<study>/<cell>` and each trial's Train run at
`<storage>/<study>/trials/<trial id>`, both deterministic, so `Tuner.restore` resumes unfinished trials from
their latest checkpoint, and the MLflow runs are found again by their tags.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray
from avmae.platform import tracking as T
from avmae.platform.callbacks import MlflowTrials
from avmae.platform.cells import BudgetStopper, StudySearch, cell_of, read_budget, spent, study_scheduler
from avmae.platform.data.indexes import IndexFormatError
from avmae.platform.data.scan import TooManyBrokenError
from avmae.platform.mlflow_queue import JOURNAL_DIR
from avmae.platform.prepare import prepare_data
from avmae.platform.progress import CellSummary, StudyProgress
from avmae.platform.ray_compat import interrupted_fit, reopen_search
from avmae.platform.resources import ResourceError, check_fits, local_nodes, ray_nodes
from avmae.platform.spec import StudySpec
from avmae.platform.trial import run_trial
from avmae.platform.uris import redact
from pydantic import ValidationError
from ray import tune

# The trial's function only waits on its Train run: it reserves a little memory, the workers reserve cores.
TRIAL_DRIVER_RESOURCES = {"cpu": 0, "memory": 128 * 1024**2}
# Environment of every Ray worker process (Train reads these in its controller and workers).
RUNTIME_ENV_VARS = {
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",  # a finished Train run is noticed sooner (default 2 s)
}
# Only on the runtime started for the job: one machine has no preemptible nodes to watch.
LOCAL_RUNTIME_ENV_VARS = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
STUDY_FILE = "study.json"  # in the study folder: the spec and tracking URI it started with
TUNE_DIR = "tune"  # in the study folder: the study's one Tune experiment


class StudyExistsError(RuntimeError):
    """A fresh run of a study that already has results (resume it, or give it another name)."""


class StudyDataError(RuntimeError):
    """The study's data cannot be used as it is (an index, missing media, too many broken clips)."""


class StudyInterrupted(RuntimeError):
    """The sweep was stopped (Ctrl-C, SIGTERM, SIGHUP) before every trial ended; `--resume` continues it."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum  # the signal that stopped it: the exit code says which (128 + signum)


@dataclass(frozen=True)
class Launch:
    """Where a study runs and records."""

    name: str
    storage: str  # the study's folder: a local absolute path or a URI (s3://, gs://, ...)
    tracking_uri: str
    address: str | None = None  # an existing Ray cluster; None starts a local runtime for the job
    resume: bool = False
    restart: bool = False  # archive what a study of this name left (MLflow and storage), then start afresh


def cell_seed(seed: int, cell: dict[str, Any]) -> int:
    """The cell's sampler seed: derived from the study seed and the cell's key, the same in every run and on
    resume (a hash of the text, not Python's per-process `hash()`), and different from cell to cell, so that
    the cells do not all sample the same points (the LR-stability view compares cells across LRs)."""
    digest = hashlib.sha256(f"{seed}/{T.cell_key(cell)}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def study_search(spec: StudySpec, record: str | None = None) -> StudySearch:
    """Every cell's search in one searcher: each cell's sampler seeded by `cell_seed`."""
    seeds = {T.cell_key(cell): cell_seed(spec.train.seed, cell) for cell in spec.cells()}
    return StudySearch(spec, seeds, record)


def tune_config(spec: StudySpec, search: StudySearch) -> tune.TuneConfig:
    """One experiment for the whole study: the cells' searches dealt round-robin, ASHA per cell (or FIFO),
    at most `max_concurrent_trials` trials of any cells at once."""
    return tune.TuneConfig(
        metric=spec.metric,
        mode=spec.mode,
        search_alg=search,
        scheduler=study_scheduler(spec),
        num_samples=len(spec.cells()) * spec.trials_in_cell,
        max_concurrent_trials=spec.resources.max_concurrent_trials,
        # A trial's process runs the next one (no new process, no re-imports: seconds per trial in which a
        # freed slot would wait). A trial ASHA stops ends its Train run first (trial.fit_reporting).
        reuse_actors=True,
    )


def warn_if_unplaceable(spec: StudySpec) -> None:
    """On a cluster the autoscaler may still add nodes: say so when today's nodes cannot hold a trial."""
    try:
        check_fits(spec, ray_nodes(), "the cluster")
    except ResourceError as err:
        print(f"warning: {err}. Trials wait for the autoscaler and fail after Train's worker-group timeout "
              "if no such node comes.", flush=True)


def start_baselines(spec: StudySpec, client: Any, study_run: str) -> ray.ObjectRef | None:
    """The reference probe rows (random-init encoder per repeat seed, raw input), measured as a Ray task with
    one trial worker's resources while the trials run; None when off, or already logged (a resumed study)."""
    ev = spec.evaluation
    if not (ev.probe and ev.baselines):
        return None
    logged = client.get_run(study_run).data.metrics
    if any(name.startswith(T.BASELINE_PREFIX) for name in logged):
        return None
    seeds = [spec.train.seed + k for k in range(spec.repeats)]
    res = spec.resources
    task = ray.remote(_baseline_scores).options(num_cpus=res.cpus_per_worker,
                                                num_gpus=min(res.gpus_per_worker, 1))
    return task.remote(spec.model_dump(mode="json"), seeds)


def _baseline_scores(spec: dict[str, Any], seeds: list[int]) -> dict[str, dict[int, dict[str, float]]]:
    from avmae.platform.probe import baseline_scores  # torch and the data pipeline: in the task alone

    return baseline_scores(StudySpec.model_validate(spec), seeds)


def log_baselines(client: Any, study_run: str, pending: ray.ObjectRef | None) -> None:
    """Wait for the reference rows and log them on the study run: `baseline/<kind>/probe/...`, step k. A
    failure is told and tagged, never the end of a study whose trials are all done."""
    if pending is None:
        return
    try:
        rows = ray.get(pending)
    except Exception as err:  # noqa: BLE001 (any error of the task: the trials' results stand)
        tell_failure(client, study_run, "baselines", "the reference probe rows failed", err)
        return
    for kind, per_seed in rows.items():
        for k, scores in per_seed.items():
            metrics = {T.baseline_metric(kind, name): value for name, value in scores.items()}
            T.log_metrics(client, study_run, metrics, step=k)


def _per_cell_experiments(storage: str) -> list[str]:
    """The Tune experiments of the earlier layout (`<storage>/<cell folder>/`, one per cell)."""
    fs, folder = pyarrow.fs.FileSystem.from_uri(storage)
    found = fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
    names = [f.base_name for f in found
             if f.type == pyarrow.fs.FileType.Directory and f.base_name not in (TUNE_DIR, "trials")]
    return [name for name in names if tune.Tuner.can_restore(f"{storage}/{name}")]


def record_provenance(client: Any, study_run: str, spec: StudySpec, resume: bool) -> None:
    """Packages, runtime, code and data of this run on the study run; a resumed study warns of what
    changed since it started (a new index file, other code, another torch)."""
    from avmae.platform import provenance

    now = provenance.record(client, study_run, spec)
    for line in provenance.changes_since(client, study_run, spec, now) if resume else []:
        print(f"warning: {line}", flush=True)


def log_encoders(client: Any, study_run: str, spec: StudySpec, study: str) -> None:
    """The trained encoders `evaluation.log_models` keeps, as MLflow models; the study's winner registered
    under the study's name. A failure is told and tagged: the study's results stand without it."""
    from avmae.platform import model_export

    policy = spec.evaluation.log_models
    try:
        model_export.log_study_models(client, study_run, spec.metric, policy)
        if policy != "none":
            model_export.register_winner(client, study_run, spec.metric, study)
    except Exception as err:  # noqa: BLE001 (any failure to log models: the trials' results stand)
        tell_failure(client, study_run, "log_models", "the trained encoders were not logged to MLflow", err)


def tell_failure(client: Any, study_run: str, step: str, what: str, err: BaseException) -> None:
    """A step after the trials failed: say so, and tag the study run (`avmae.error`) with its last line."""
    text = str(err).strip()
    reason = text.splitlines()[-1][:500] if text else type(err).__name__
    print(f"warning: {what}: {reason}", flush=True)
    client.set_tag(study_run, T.ERROR_TAG, f"{step}: {reason}")


def study_tuner(spec: StudySpec, launch: Launch, callbacks: list[tune.Callback]) -> tune.Tuner:
    """A new Tuner for the whole study, or, with `resume`, the study's Tuner restored from storage."""
    spec_dict, trials = spec.model_dump(mode="json"), f"{launch.storage}/trials"
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=spec_dict, storage=trials), TRIAL_DRIVER_RESOURCES
    )
    path = f"{launch.storage}/{TUNE_DIR}"
    if launch.resume and not tune.Tuner.can_restore(path) and _per_cell_experiments(launch.storage):
        raise StudyExistsError(
            f"{launch.storage} holds a study started by an avmae that ran one Tune experiment per cell: "
            "finish it with that version, or start it afresh with --restart (its runs are archived)")
    if launch.resume and tune.Tuner.can_restore(path):
        reopen_search(path)  # a study its budget stopped goes on with the (larger) budget it has now
        return tune.Tuner.restore(path, trainable, resume_errored=True)
    search = study_search(spec, f"{launch.storage}/{STUDY_FILE}")
    return tune.Tuner(
        trainable,
        tune_config=tune_config(spec, search),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=launch.storage,
            callbacks=callbacks,
            stop=BudgetStopper(search.record),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


@contextmanager
def ray_runtime(address: str | None) -> Iterator[None]:
    """Join the cluster at `address`, or start a local runtime for the job (with its dashboard: the Train
    placement-group cleaner needs the State API when Tune stops a trial mid-run)."""
    env_vars = dict(RUNTIME_ENV_VARS)
    if address is None:
        # Train's cleaner asks the State API of "the" local Ray; with another Ray on the machine (a second
        # sweep, a test) it must be told which one, so the dashboard gets a known port.
        with reserved_port() as port:
            env_vars.update(LOCAL_RUNTIME_ENV_VARS, RAY_API_SERVER_ADDRESS=f"http://127.0.0.1:{port}")
            ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                     object_store_memory=256 * 1024**2, runtime_env=runtime_env(env_vars),
                     logging_level=logging.WARNING)
    else:
        ray.init(address=address, runtime_env=runtime_env(env_vars), logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


def runtime_env(env_vars: dict[str, str]) -> dict[str, Any]:
    """Every Ray worker of the job: our environment variables and `ray_logging.setup_worker`."""
    return {"env_vars": env_vars, "worker_process_setup_hook": "avmae.platform.ray_logging.setup_worker"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def reserved_port() -> Iterator[int]:
    """A free local port for a server started inside the block. A port only looked up (`free_port`) is free
    again at once, and on a busy machine another process's bind(0) or connect can take it before the server
    binds it (seen: `ray.init` failing "Failed to bind to 127.0.0.1:39077 because it's already occupied").
    On Linux the port stays bound here (SO_REUSEADDR, never listening) until the block ends: the kernel gives
    it to no other bind(0) or connect, while a server that binds it with SO_REUSEADDR (Ray's dashboard and
    its port check, uvicorn) still can. Elsewhere BSD sockets would refuse that second bind, so the port is
    only looked up."""
    if sys.platform != "linux":
        yield free_port()
        return
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@contextmanager
def signals_as_ctrl_c() -> Iterator[list[int]]:
    """SIGTERM (what Slurm, Kubernetes and `timeout` send) and SIGHUP (a closed terminal) stop a study as
    Ctrl-C does: each is passed on as SIGINT, which Tune answers by saving and stopping the trials. Yields the
    signals received, so the exit code can say which one it was. Enter it after `ray.init`, whose core
    installs a SIGTERM handler of its own (it aborts the process)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def as_sigint(signum: int, frame: Any) -> None:
        received.append(signum)
        os.kill(os.getpid(), signal.SIGINT)

    previous = {sig: signal.signal(sig, as_sigint) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def archive_study(launch: Launch, client: Any) -> list[str]:
    """Move what a study of this name left aside (its MLflow experiment renamed, its storage folder moved),
    so that it starts afresh with nothing lost; returns what was archived, in words."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    archived = []
    experiment = client.get_experiment_by_name(launch.name)
    if experiment is not None:
        client.rename_experiment(experiment.experiment_id, f"{launch.name}.archived-{stamp}")
        archived.append(f"MLflow experiment {launch.name!r} -> {launch.name}.archived-{stamp}")
    fs, folder = pyarrow.fs.FileSystem.from_uri(launch.storage)
    if fs.get_file_info(folder).type != pyarrow.fs.FileType.NotFound:
        fs.move(folder, f"{folder}.archived-{stamp}")
        archived.append(f"storage {launch.storage} -> {launch.storage}.archived-{stamp}")
    return archived


def study_record(launch: Launch, spec: StudySpec, write: bool = True) -> None:
    """A fresh study must not exist yet; a resumed one must be the same spec and tracking URI. `write`: record
    a fresh one (not before its data is ready: a study whose data failed can be fixed and run again)."""
    fs, folder = pyarrow.fs.FileSystem.from_uri(launch.storage)
    path = f"{folder}/{STUDY_FILE}"
    record = {"spec": spec.model_dump(mode="json"), "tracking_uri": redact(launch.tracking_uri)}
    exists = fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound
    if not launch.resume and exists:
        raise StudyExistsError(
            f"study {launch.name!r} already ran in {launch.storage}: pass --resume to continue it, "
            "--restart to archive it and start afresh, or --name to start another"
        )
    if launch.resume and exists:
        with fs.open_input_stream(path) as f:
            old = json.loads(f.read())
        if old["tracking_uri"] != record["tracking_uri"]:
            raise StudyExistsError("--resume needs the tracking URI the study started with")
        # The budget may grow on resume (that is how a study that spent it goes on); nothing else may.
        changed = [c for c in spec_changes(recorded_spec(old["spec"]), record["spec"])
                   if not c.startswith("budget")]
        if changed:
            raise StudyExistsError(
                f"--resume needs the study file the study started with; changed: {'; '.join(changed)}. A "
                "field you did not edit changed with avmae's defaults: write its old value into the study "
                "file to resume.")
    if not write:
        return
    fs.create_dir(folder)
    with fs.open_output_stream(path) as f:  # a resumed study's budget is read from here by its searcher
        f.write(json.dumps(record, indent=2).encode())


def recorded_spec(dumped: dict[str, Any]) -> dict[str, Any]:
    """A study record's spec as this avmae version reads it: fields added since it was written get their
    defaults, so a resume compares what the study trains, not which version wrote the file."""
    try:
        return StudySpec.model_validate(dumped).model_dump(mode="json")
    except ValidationError:  # a field since removed or renamed: compare as written, and name it
        return dumped


def spec_changes(before: Any, now: Any, path: str = "") -> list[str]:
    """'evaluation.pooling: 'tokens' then, 'mean' now' for every field whose value differs (dicts by key)."""
    if isinstance(before, dict) and isinstance(now, dict):
        return [change for key in sorted({*before, *now}, key=str) for change in
                spec_changes(before.get(key), now.get(key), f"{path}.{key}" if path else str(key))]
    return [] if before == now else [f"{path}: {before!r} then, {now!r} now"]


def run_study(
    spec: StudySpec,
    spec_path: Path | None,
    launch: Launch,
    speech: str | Path | None = None,
    callbacks: tuple[tune.Callback, ...] = (),
) -> list[CellSummary]:
    """Run (or resume) every cell; returns each cell's summary. `spec` must have absolute data paths;
    `callbacks` are added to every cell's Tuner (bench/trial_overhead.py times trials with one)."""
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0 Tune prints nothing: StudyProgress does
    if launch.address is None:  # refused in seconds, before anything is recorded
        check_fits(spec, local_nodes(), "this machine")
    # The driver's callbacks find the URI here after a restore: what Tune pickles of them is redacted.
    os.environ["MLFLOW_TRACKING_URI"] = launch.tracking_uri
    client = MlflowClient(launch.tracking_uri)
    if launch.restart:
        for line in archive_study(launch, client):
            print(f"Archived {line}", flush=True)
    if not launch.resume and client.get_experiment_by_name(launch.name) is not None:
        raise StudyExistsError(
            f"MLflow at {redact(launch.tracking_uri)} already has a study {launch.name!r}: pass --resume to "
            "continue it, --restart to archive it and start afresh, or --name to start another"
        )
    study_record(launch, spec, write=False)
    try:
        prepare_data(spec, speech)
    except (IndexFormatError, TooManyBrokenError, FileNotFoundError) as err:
        raise StudyDataError(str(err)) from err
    study_record(launch, spec)
    cells = spec.cells()
    # The signals are taken over once Ray is up: the driver's Ray core installs its own SIGTERM handler.
    with ray_runtime(launch.address), signals_as_ctrl_c() as received:
        if launch.address is not None:
            warn_if_unplaceable(spec)
        study_run = T.start_study_run(client, launch.name, spec.model_dump(mode="json"), spec_path)
        record_provenance(client, study_run, spec, launch.resume)
        trials = MlflowTrials(launch.tracking_uri, study_run, spec, f"{launch.storage}/{JOURNAL_DIR}")
        baselines = start_baselines(spec, client, study_run)
        sigint = signal.getsignal(signal.SIGINT)
        keys = [T.cell_key(cell) for cell in cells]
        progress = StudyProgress(keys, spec.trials_in_cell, spec.metric, spec.train.epochs, list(spec.axes))
        try:
            grid = study_tuner(spec, launch, [trials, progress, *callbacks]).fit()
            if interrupted_fit(sigint):  # Tune saved the study's state and returned: say so, don't go on
                raise StudyInterrupted("")
            results = list(grid)
            summaries = [CellSummary.from_results(key, [r for r in results if cell_of(spec, r.config) == key],
                                                  spec.metric, spec.train.epochs, list(spec.search))
                         for key in keys]
            stopped = spent(read_budget(f"{launch.storage}/{STUDY_FILE}", spec), spec.resources,
                            sum(r.metrics.get("time_total_s", 0.0) for r in results if r.metrics) / 3600)
            if stopped and sum(sum(s.counts.values()) for s in summaries) < len(keys) * spec.trials_in_cell:
                print(f"Stopped early: {stopped}. --resume with a larger budget continues.", flush=True)
                client.set_tag(study_run, T.STOPPED_TAG, stopped)
        except (StudyInterrupted, KeyboardInterrupt):
            T.interrupt_trial_runs(client, study_run)
            T.end_study_run(client, study_run, "KILLED")
            raise StudyInterrupted(signum=received[0] if received else signal.SIGINT) from None
        except BaseException:
            T.end_study_run(client, study_run, "FAILED")
            raise
        log_baselines(client, study_run, baselines)
        log_encoders(client, study_run, spec, launch.name)
        T.end_study_run(client, study_run)
    return summaries
