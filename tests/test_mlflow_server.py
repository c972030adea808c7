"""The MLflow server as platform/cluster/ deploys it, run for real on PostgreSQL: the shipped start script
(`mlflow-server.sh`: the basic-auth app, secrets from the environment only, artifacts proxied through the
server) against a fresh database. Skips, saying why, where no PostgreSQL is reachable."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # starts real MLflow servers

SCRIPT = REPO / "platform" / "cluster" / "mlflow-server.sh"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}  # trust auth (stack.md)
ADMIN = "admin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A database of its own, dropped at the end; its URI."""
    psycopg2 = pytest.importorskip("psycopg2", reason="MLflow's PostgreSQL store needs psycopg2-binary")
    try:
        admin = psycopg2.connect(connect_timeout=3, **PG)
    except psycopg2.OperationalError as e:
        pytest.skip(f"no PostgreSQL at {PG['host']}:{PG['port']} ({str(e).strip()})")
    admin.autocommit = True
    name = f"avmae_test_{secrets.token_hex(4)}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def server_env(backend_uri: str, artifacts: Path, port: int, password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {
        **env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # this venv's `mlflow`
        "MLFLOW_BACKEND_STORE_URI": backend_uri,
        "MLFLOW_ARTIFACTS_DESTINATION": str(artifacts),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
    }


def get(url: str, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except urllib.error.URLError as e:
        if isinstance(e.reason, ConnectionRefusedError):  # not listening yet
            return 0
        raise


def command_lines(session: int) -> list[str]:
    """The argv of every live process in a session (the server's process tree)."""
    lines = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getsid(int(proc.name)) == session:
                lines.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ProcessLookupError):
            continue
    return lines


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's whole session (uvicorn and its workers), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def server(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`mlflow-server.sh` on a free port; the database password is a marker that must stay off argv."""
    tmp = tmp_path_factory.mktemp("mlflow_server")
    port, password = free_port(), "Adm1n-" + secrets.token_hex(8)
    # A database URI carrying a (trust-ignored) password, as in production, so argv can be checked for it.
    marker = "pw" + secrets.token_hex(6)
    backend = database.replace("postgres@", f"postgres:{marker}@")
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen(
        ["sh", str(SCRIPT)], env=server_env(backend, tmp / "artifacts", port, password), cwd=tmp,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while get(f"{url}/health") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                log_text = (tmp / "server.log").read_text()[-3000:]
                pytest.fail(f"mlflow-server.sh did not serve /health:\n{log_text}")
            time.sleep(0.5)
        yield {"url": url, "password": password, "marker": marker, "session": proc.pid,
               "artifacts": tmp / "artifacts"}
    finally:
        stop(proc)
        log.close()


def test_the_server_refuses_requests_without_valid_credentials(server):
    search = f"{server['url']}/api/2.0/mlflow/experiments/search?max_results=1"
    assert get(f"{server['url']}/health") == 200  # probes need no credentials
    assert get(search) == 401
    assert get(search, (ADMIN, "wrong-password")) == 401
    assert get(search, (ADMIN, server["password"])) == 200


def test_an_authenticated_client_records_a_run_with_a_metric_and_an_artifact(server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server["password"])
    client = MlflowClient(server["url"])
    exp_id = client.create_experiment("deployed-server")
    run_id = client.create_run(exp_id).info.run_id
    client.log_metric(run_id, "val/loss", 0.25, step=1)
    client.log_text(run_id, "spec", "study/spec.yaml")
    client.set_terminated(run_id)

    assert [m.value for m in client.get_metric_history(run_id, "val/loss")] == [0.25]
    local = client.download_artifacts(run_id, "study/spec.yaml", str(tmp_path))
    assert Path(local).read_text() == "spec"
    # Proxied: the server, not the client, wrote it under its artifacts destination.
    assert [p.read_text() for p in server["artifacts"].rglob("spec.yaml")] == ["spec"]


def test_no_secret_is_on_a_command_line(server):
    lines = command_lines(server["session"])
    assert any("mlflow" in line for line in lines), lines
    for secret in (server["marker"], server["password"]):
        assert not [line for line in lines if secret in line]


def test_the_script_refuses_to_start_without_its_secrets(tmp_path):
    env = server_env("postgresql://u:p@127.0.0.1:1/x", tmp_path, free_port(), "x")
    del env["MLFLOW_AUTH_ADMIN_PASSWORD"]
    result = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in result.stderr and "no default" in result.stderr
