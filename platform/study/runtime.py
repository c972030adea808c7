"""The Ray runtime a study runs in: a local one started for the job or a cluster joined, the environment of
every Ray worker, a port held until its server binds it, and the signals that stop a study as Ctrl-C does."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray
from avmae.platform.train.ray_compat import AUTH_LOGGER, TOKEN_AUTH_NOTICE

# Environment of every Ray worker process (Train reads these in its controller and workers).
RUNTIME_ENV_VARS = {
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",  # a finished Train run is noticed sooner (default 2 s)
}


# Only on the runtime started for the job: one machine has no preemptible nodes to watch.
LOCAL_RUNTIME_ENV_VARS = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


@contextmanager
def ray_runtime(address: str | None) -> Iterator[None]:
    """Join the cluster at `address`, or start a local runtime for the job (with its dashboard: the Train
    placement-group cleaner needs the State API when Tune stops a trial mid-run)."""
    env_vars = dict(RUNTIME_ENV_VARS)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune prints nothing (verbose=0): our progress does
    if address is None:
        # Train's cleaner asks the State API of "the" local Ray; with another Ray on the machine (a second
        # sweep, a test) it must be told which one, so the dashboard gets a known port.
        logging.getLogger(AUTH_LOGGER).addFilter(drop_token_auth_notice)
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


def drop_token_auth_notice(record: logging.LogRecord) -> bool:
    """Ray's notice that a local runtime has token authentication, its default: not a warning to a user."""
    return not record.getMessage().startswith(TOKEN_AUTH_NOTICE)


def runtime_env(env_vars: dict[str, str]) -> dict[str, Any]:
    """Every Ray worker of the job: our environment variables and `ray_logging.setup_worker`."""
    hook = "avmae.platform.train.ray_logging.setup_worker"
    return {"env_vars": env_vars, "worker_process_setup_hook": hook}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def reserved_port() -> Iterator[int]:
    """A free local port for a server started inside the block, held until the block ends. On Linux it stays
    bound here (SO_REUSEADDR, never listening): the kernel gives it to no other bind(0) or connect, while the
    server, binding it with SO_REUSEADDR (Ray's dashboard, uvicorn), still can. Elsewhere it is only looked up
    (`free_port`), since BSD sockets would refuse the server's bind."""
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
