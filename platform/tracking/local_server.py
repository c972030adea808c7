"""An `mlflow server` on this machine (one worker, on a port the caller holds), started and waited for by its
`/health`, stopped with its whole process group, and started again on the same port: the server the fault
tests and the soak benchmark take down in the middle of a study. A study needs none of it: it writes to
MLflow's own store, or to a server that `platform/cluster/` deploys."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


class LocalMlflowServer:
    """`mlflow server --workers 1` with its store at `backend_store_uri` (default: `folder/mlflow.db`), its
    artifacts and its log (`server.log`) in `folder`; no job runner, so it starts sooner."""

    def __init__(self, folder: Path, port: int, backend_store_uri: str | None = None) -> None:
        self.folder, self.port = folder, port
        self.backend = backend_store_uri or f"sqlite:///{folder / 'mlflow.db'}"
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180) -> float:
        """Start it and wait until it answers `/health`; the seconds that took. RuntimeError, with the end of
        its log, when it exits or does not answer within `timeout_s`."""
        began = time.monotonic()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        with (self.folder / "server.log").open("a") as log:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", self.backend,
                 "--default-artifact-root", str(self.folder / "artifacts"), "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1"],
                cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() - began > timeout_s:
                tail = (self.folder / "server.log").read_text()[-3000:]
                raise RuntimeError(f"mlflow server did not start:\n{tail}")
            time.sleep(0.5)
        return time.monotonic() - began

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """SIGKILL to the server's whole process group (uvicorn and its worker)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=60)
        self.proc = None
