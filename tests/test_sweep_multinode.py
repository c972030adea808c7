"""`avmae sweep --address ... --tracking-uri http://...` against a real two-node Ray cluster (two `ray start`
nodes of 1 CPU each on this machine, each with its own temp dir) and a real `mlflow server`: the two
concurrent trials must run on different nodes, and every run must be in the server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml
from avmae.platform.tracking import layout as T
from conftest import REPO, run_cli
from mlflow.tracking import MlflowClient

BIN = REPO / ".venv" / "bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_ports() -> list[str]:
    """Every port a node opens, free ones: two nodes share this machine."""
    names = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")
    return [arg for name in names for arg in (f"--{name}", str(free_port()))]


def launch(args: list[str], env: dict[str, str], log: Path, stack: ExitStack) -> subprocess.Popen:
    """A blocking server process in its own process group, stopped (the group only) when `stack` closes."""
    out = stack.enter_context(log.open("w"))
    proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    stack.callback(stop, proc)
    return proc


def wait_until(proc: subprocess.Popen, log: Path, ready: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{' '.join(proc.args[:3])} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(1)


def stop(proc: subprocess.Popen) -> None:
    """Its process group only: SIGTERM, then SIGKILL for what is left."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def alive_nodes(temp_dir: Path) -> int:
    """Raylets registered in the head's GCS, counted from the head's own log (no Ray client needed)."""
    log = temp_dir / "session_latest" / "logs" / "gcs_server.out"
    return log.read_text().count("Registering new node") if log.exists() else 0


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Ray's socket paths must stay under 107 bytes: node temp dirs directly under /tmp."""
    path = Path(tempfile.mkdtemp(prefix="avmae-ray-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_trials_spread_over_two_nodes_and_log_to_an_mlflow_server(
    tmp_path: Path, short_dir: Path, tiny_av_digits: Path
):
    port, mlflow_port, head_dir, worker_dir = free_port(), free_port(), short_dir / "h", short_dir / "w"
    address, dashboard = f"127.0.0.1:{port}", free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",  # a private test cluster: no token shared with other clusters here
        # Train's placement-group cleaner asks "the" local Ray's State API: this one, whatever else runs.
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard}",
    }
    head = [str(BIN / "ray"), "start", "--head", "--block", "--port", str(port), "--num-cpus", "1",
            "--temp-dir", str(head_dir), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(dashboard), "--ray-client-server-port", str(free_port()), *node_ports()]
    worker = [str(BIN / "ray"), "start", "--block", "--address", address, "--num-cpus", "1",
              "--temp-dir", str(worker_dir), *node_ports()]
    server = [str(BIN / "mlflow"), "server", "--workers", "1", "--host", "127.0.0.1",
              "--port", str(mlflow_port), "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
              "--artifacts-destination", str(tmp_path / "artifacts")]
    tracking = f"http://127.0.0.1:{mlflow_port}"
    spec = {
        "name": "two_nodes",
        "data": {"kind": "av-digits", "root": str(tiny_av_digits), "cache_dir": str(tiny_av_digits / "cache"),
                 "av_digits": {"clips_per_digit": 4}},
        "model": {"preset": "tiny"},
        "search": {"lr": {"dist": "grid", "values": [1e-3, 2e-3]}},
        "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8},
        "scheduler": {"name": "fifo"},
        "resources": {"workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": 2},
        "evaluation": {"probe": []},
    }
    (tmp_path / "two_nodes.yaml").write_text(yaml.safe_dump(spec))

    with ExitStack() as stack:  # the MLflow server starts alongside the head; the worker node joins the head
        logs = {name: tmp_path / f"{name}.log" for name in ("mlflow", "head", "worker")}
        mlflow_server = launch(server, env, logs["mlflow"], stack)
        head_node = launch(head, env, logs["head"], stack)
        wait_until(head_node, logs["head"], lambda: alive_nodes(head_dir) >= 1)
        worker_node = launch(worker, env, logs["worker"], stack)
        wait_until(worker_node, logs["worker"], lambda: alive_nodes(head_dir) >= 2)
        wait_until(mlflow_server, logs["mlflow"], lambda: answers(f"{tracking}/health"))
        out = run_cli(["sweep", str(tmp_path / "two_nodes.yaml"), "--address", address, "--tracking-uri",
                       tracking, "--storage", str(tmp_path / "shared")], timeout=600, env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stdout[-6000:]
        assert "View run" not in out.stdout  # MLflow's two links per ended run stay out of the progress lines

        client = MlflowClient(tracking)
        experiment = client.get_experiment_by_name("two_nodes")
        runs = client.search_runs([experiment.experiment_id], "")
        trials = [r for r in runs if r.data.tags.get(T.ROLE_TAG) == "trial"]
        assert len(runs) == 3 and len(trials) == 2
        assert all(r.data.tags[T.STATUS_TAG] == "finished" for r in trials)
        assert len({r.data.tags[T.NODE_TAG] for r in trials}) == 2  # one trial on each 1-CPU node
        assert all(client.get_metric_history(r.info.run_id, T.TRAIN_LOSS) for r in trials)
        # Through the server too: each trial's machine load, and the study's reproducibility record.
        assert all(client.get_metric_history(r.info.run_id, T.SYSTEM_PROCESS_CPU) for r in trials)
        (study,) = [r for r in runs if r.data.tags.get(T.ROLE_TAG) == "study"]
        assert study.data.params["provenance.data_clips"] and study.data.params["provenance.torch"]
        assert "provenance/provenance.json" in {
            a.path for a in client.list_artifacts(study.info.run_id, "provenance")}
